"""Busy processes beside the cluster (`--load N`): pure CPU spinners at normal
priority, so a drain can be measured on a machine as loaded as the shared one
often is, in the same run as on a quieter one."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from bench.cluster import log, stop_process

SPIN = """
import os, sys
parent = int(sys.argv[1])  # the benchmark's pid, given: it may be gone before this line
while os.getppid() == parent:  # orphaned (the benchmark killed outright): stop
    for _ in range(1_000_000):
        pass
"""


@contextlib.contextmanager
def spinners(n: int) -> Iterator[list[int]]:
    """`n` spinners for the duration of the block; stopped on the way out, also on
    Ctrl-C, SIGTERM (raised as KeyboardInterrupt by bench.main) or an exception.
    Yields their pids."""
    procs: list[subprocess.Popen[Any]] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", SPIN, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # a terminal's Ctrl-C is ours to handle
                )
            )
        if n:
            log(f"    {n} CPU spinner{'s' * (n != 1)} running (pids {[p.pid for p in procs]})")
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            stop_process(p, 2)
        if procs:
            log(f"    {len(procs)} CPU spinners stopped")
