"""What every benchmark's entry point does: parse the options, run on a cluster
of its own, write the figures as JSON and print the table."""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Callable
from typing import Any

from bench.cluster import BenchError, log

QUICK_ENV = "BENCH_QUICK"
"""Set to 1 for the smoke run, as `--quick` does."""


def entry(
    parser: argparse.ArgumentParser,
    quick: Callable[[argparse.Namespace], None],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    argv: list[str] | None,
) -> int:
    args = parser.parse_args(argv)
    if args.quick or os.environ.get(QUICK_ENV) == "1":
        quick(args)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        results = run(args)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    log(f"results written to {args.output}")
    return 0
