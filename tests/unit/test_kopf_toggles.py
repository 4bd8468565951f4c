"""pitstop.kopf_toggles: kopf's start-up gate wakes its waiters when its state flips,
and only then, so indexing N objects costs O(N) checks of the set, not O(N²)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import pytest
from kopf._cogs.aiokits import aiotoggles
from kopf._core.reactor import orchestration

from pitstop import kopf_toggles
from pitstop.kopf_toggles import FlipToggleSet


def counting(
    cls: type[aiotoggles.ToggleSet], fn: Callable[[Iterable[bool]], bool]
) -> tuple[aiotoggles.ToggleSet, list[int]]:
    """A toggle set of `cls` that counts how often its state is computed."""
    calls = [0]

    class Counted(cls):  # type: ignore[misc, valid-type]
        def is_on(self) -> bool:
            calls[0] += 1
            return bool(super().is_on())

    return Counted(fn), calls


async def index_objects(ts: aiotoggles.ToggleSet, n: int) -> None:
    """kopf's start-up: a blocker, a toggle per object made as the listing arrives;
    each object's worker drops its own toggle once indexed and waits for all."""
    blocker = await ts.make_toggle(name="listing")

    async def worker(t: aiotoggles.Toggle) -> None:
        await asyncio.sleep(0)
        await ts.drop_toggle(t)
        await ts.wait_for(True)

    workers = []
    for i in range(n):
        toggle = await ts.make_toggle(name=f"object {i}")
        workers.append(asyncio.ensure_future(worker(toggle)))
        if i % 10 == 0:
            await asyncio.sleep(0)  # workers run while the listing goes on
    await asyncio.sleep(0)
    assert ts.is_off()
    await ts.drop_toggle(blocker)
    await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
    assert ts.is_on()


@pytest.mark.parametrize("cls", [aiotoggles.ToggleSet, FlipToggleSet])
def test_every_worker_is_released_once_all_are_indexed(cls: type[aiotoggles.ToggleSet]) -> None:
    asyncio.run(index_objects(cls(all), 200))


def test_indexing_checks_the_set_linearly_not_quadratically() -> None:
    n = 1000
    ours, ours_calls = counting(FlipToggleSet, all)
    asyncio.run(index_objects(ours, n))
    theirs, their_calls = counting(aiotoggles.ToggleSet, all)
    asyncio.run(index_objects(theirs, n))
    assert ours_calls[0] <= 8 * n, ours_calls[0]  # a few per object
    assert their_calls[0] > 30 * n, their_calls[0]  # what the fix is for


def test_waiters_wake_on_each_flip_both_ways() -> None:
    async def scenario() -> None:
        ts = FlipToggleSet(all)
        assert ts.is_on()  # all() of nothing
        off = asyncio.ensure_future(ts.wait_for(False))
        await asyncio.sleep(0)
        toggle = await ts.make_toggle(name="a")  # on -> off
        await asyncio.wait_for(off, timeout=1)
        on = asyncio.ensure_future(ts.wait_for(True))
        await asyncio.sleep(0)
        other = await ts.make_toggle(name="b")  # off -> off: nobody is woken
        assert not on.done()
        await ts.drop_toggles([other])
        await asyncio.sleep(0)
        assert not on.done()
        await toggle.turn_to(True)  # a toggle's own change still wakes the set's waiters
        await asyncio.wait_for(on, timeout=1)
        await ts.drop_toggle(toggle)
        assert ts.is_on()

    asyncio.run(scenario())


def test_any_sets_flip_as_kopf_s_do() -> None:
    """kopf's pause set is ToggleSet(any): on while any toggle is on."""

    async def scenario() -> None:
        ts = FlipToggleSet(any)
        paused = asyncio.ensure_future(ts.wait_for(True))
        await asyncio.sleep(0)
        toggle = await ts.make_toggle(True, name="peer")
        await asyncio.wait_for(paused, timeout=1)
        resumed = asyncio.ensure_future(ts.wait_for(False))
        await asyncio.sleep(0)
        await ts.drop_toggle(toggle)
        await asyncio.wait_for(resumed, timeout=1)

    asyncio.run(scenario())


def test_install_puts_it_where_kopf_makes_its_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiotoggles, "ToggleSet", aiotoggles.ToggleSet)  # restored after
    assert kopf_toggles.install()
    # kopf's orchestration makes operator_indexed with aiotoggles.ToggleSet(all).
    assert orchestration.aiotoggles.ToggleSet is FlipToggleSet


def test_install_stands_down_on_a_kopf_without_those_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Reshaped:
        def __init__(self, fn: Callable[[Iterable[bool]], bool]) -> None:
            self.fn = fn

    monkeypatch.setattr(aiotoggles, "ToggleSet", aiotoggles.ToggleSet)
    before = aiotoggles.ToggleSet
    monkeypatch.setattr(kopf_toggles, "_ORIGINAL", Reshaped)
    assert not kopf_toggles.install()
    assert aiotoggles.ToggleSet is before
