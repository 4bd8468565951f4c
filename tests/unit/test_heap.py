"""pitstop.heap: the heap is trimmed after kopf's start-up gate opens, at growing
intervals, in a thread, and a failing trim never ends the schedule."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import threading

import pytest

from pitstop import heap


def test_trims_follow_the_opening_at_growing_intervals_up_to_the_interval() -> None:
    """The schedule, with the waits recorded instead of slept: 10, 20, 40 ... up to
    the interval, each trim in a thread, nothing before the gate opens, one schedule
    whatever the number of openings."""
    waits: list[float] = []
    threads: set[int] = set()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > 7:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    def trimmer() -> bool:
        threads.add(threading.get_ident())
        return True

    async def main() -> heap.Trimmer:
        t = heap.Trimmer(trimmer, first=10, interval=100, sleep=sleep)
        await asyncio.sleep(0.01)
        assert waits == []  # nothing before the gate opens
        t.opened()
        t.opened()
        assert t.task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await t.task
        return t

    t = asyncio.run(main())
    assert waits == [10, 20, 40, 80, 100, 100, 100, 100]
    assert t.trims == 7
    assert threads and threading.get_ident() not in threads  # off the event loop's thread


def test_a_failing_trim_is_logged_and_the_schedule_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = [0]

    def broken() -> bool:
        calls[0] += 1
        raise OSError("no heap here")

    async def main() -> None:
        t = heap.Trimmer(broken, first=0.01, interval=0.01)
        t.opened()
        await asyncio.sleep(0.1)
        await t.stop()

    asyncio.run(main())
    assert calls[0] >= 2
    assert "malloc_trim failed" in caplog.text


def test_trim_is_glibc_s_or_nothing() -> None:
    glibc = platform.libc_ver()[0] == "glibc"
    assert (heap.MALLOC_TRIM is not None) == glibc
    if glibc:
        junk = [bytes(1 << 16) for _ in range(2000)]  # 128 MB of the heap, then freed
        del junk
        assert heap.trim() is True  # something was given back
    else:
        assert heap.trim() is False
