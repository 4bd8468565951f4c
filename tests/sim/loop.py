"""Simulated time: an asyncio event loop whose clock only moves when nothing is
ready to run, straight to the next timer (FoundationDB's and TigerBeetle's trick:
the code under test keeps its real `asyncio.sleep`, `asyncio.wait(timeout=...)`
and timers, and a day of them passes in milliseconds, in the same order every run).

The wall clock the operator reads (`datetime.now(UTC)` in the daemons) is patched
to this loop's clock by `patched_clock`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
"""Simulated time 0."""


TICK = 1e-6
"""Simulated time one round of the loop takes (the resolution of datetime)."""


class Deadlock(RuntimeError):
    """Nothing is ready and no timer is set: the simulation would wait for ever."""


class _Clock:
    """Stands in for the loop's I/O selector: a poll with a timeout is a jump of the
    clock to the next timer; there is no I/O to wait for."""

    def __init__(self, loop: VirtualLoop) -> None:
        self.loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            raise Deadlock("no task is ready and no timer is set")
        # Each round of the loop takes a microsecond, as running code does: a daemon
        # that sleeps until a deadline equal to now (a "> due" test one side, ">= due"
        # the other) passes again once the clock moved, not for ever at one instant.
        self.loop.now += max(timeout, TICK)
        return []

    def close(self) -> None:
        pass


class SimTask(asyncio.Task):  # type: ignore[type-arg]
    """A task whose hash is its serial number, not its address: asyncio.wait hands
    back sets of tasks, and their order must not change from one run to the next."""

    serial = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        SimTask.serial += 1
        self._serial = SimTask.serial  # before the base registers it (by hash)
        super().__init__(*args, **kwargs)

    def __hash__(self) -> int:
        return self._serial


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> SimTask:
    return SimTask(coro, loop=loop, **kwargs)


class VirtualLoop(asyncio.BaseEventLoop):
    """A single-threaded event loop on simulated time (seconds since EPOCH)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self._selector = _Clock(self)
        SimTask.serial = 0
        self.set_task_factory(_task_factory)  # type: ignore[arg-type]

    def time(self) -> float:
        return self.now

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.now)


def sim_now() -> datetime:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualLoop), "the simulation runs on its own loop"
    return loop.wall()


class SimDatetime(datetime):
    """`datetime` whose now() is the simulation's clock (what the daemons read)."""

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return sim_now()


@contextlib.contextmanager
def patched_clock() -> Iterator[None]:
    """The operator modules that read the wall clock read the simulated one."""
    from pitstop.cluster import kube
    from pitstop.pool import daemon as pool_daemon
    from pitstop.repair import act_hooks
    from pitstop.repair import daemon as repair_daemon

    # kube: a pod condition's lastTransitionTime (the serving gate's deadlines count from it)
    modules = (repair_daemon, pool_daemon, act_hooks, kube)
    saved = [m.datetime for m in modules]  # type: ignore[attr-defined]
    for m in modules:
        m.datetime = SimDatetime  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m, old in zip(modules, saved, strict=True):
            m.datetime = old  # type: ignore[attr-defined]
