"""The start-up's peak given back: glibc's `malloc_trim` once kopf's start-up gate
has opened, and now and then after.

Until every watched object is indexed once, kopf holds each object's first event
and its worker's state (pitstop.kopf_startup): the process's peak, hundreds of MB
on a large cluster. Once the gate opens, the workers act and end, and that memory is
freed; but glibc keeps freed memory in its heap for the next allocation, so without
a trim the process stays near its peak RSS for good. `malloc_trim(0)` hands the
heap's free pages back to the kernel.

A trim walks the heap: ~0.2 s of CPU on a 500 MB one, more when there is much to
give back. It runs in a thread (ctypes releases the GIL, the event loop goes on),
at growing intervals after the gate opens (the workers end a few seconds after
their last event, later on a larger cluster), then every TRIM_INTERVAL seconds for
later frees (a relist after an expired watch, a burst of repairs). Where the C
library is not glibc (musl, macOS) nothing is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import platform
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

FIRST_TRIM = 10.0
"""Seconds from the gate's opening to the first trim; each next waits twice as long."""
TRIM_INTERVAL = 300.0
"""Seconds between trims once the start-up is long over."""


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library is another."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


MALLOC_TRIM = _malloc_trim()


def trim() -> bool:
    """Gives the heap's free pages back to the kernel; False where it cannot (not
    glibc) or nothing was given back."""
    return MALLOC_TRIM is not None and bool(MALLOC_TRIM(0))


class Trimmer:
    """Trims (in a thread) at FIRST_TRIM, 2 x, 4 x ... seconds after `opened()`, up
    to every TRIM_INTERVAL seconds; one schedule per process, started by the first
    call (kopf's gate opens again only for a resource kind added later)."""

    def __init__(
        self,
        trimmer: Callable[[], bool] = trim,
        first: float = FIRST_TRIM,
        interval: float = TRIM_INTERVAL,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.trimmer, self.first, self.interval, self.sleep = trimmer, first, interval, sleep
        self.task: asyncio.Task[None] | None = None
        self.trims = 0

    def opened(self) -> None:
        """kopf's start-up gate opened (called on the event loop)."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="heap-trim")

    async def _run(self) -> None:
        wait = self.first
        while True:
            await self.sleep(wait)
            started = time.perf_counter()
            try:
                released = await asyncio.to_thread(self.trimmer)
            except Exception as e:  # a trim is an optimisation: never a reason to stop
                logger.warning(f"malloc_trim failed: {e!r}")
                released = False
            self.trims += 1
            logger.debug(
                f"malloc_trim: {'memory given back' if released else 'nothing given back'}"
                f" in {time.perf_counter() - started:.2f} s"
            )
            wait = min(wait * 2, self.interval)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
