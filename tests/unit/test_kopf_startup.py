"""pitstop.kopf_startup: kopf's start-up gate wakes its waiters when its state flips,
and only then, so indexing N objects costs O(N) checks of the set, not O(N²); and
watch events are slimmed before kopf keeps them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import watching
from kopf._core.reactor import orchestration, queueing

from pitstop import kopf_startup
from pitstop.kopf_startup import FlipToggleSet


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


def pod_event(kind: str | None = "MODIFIED") -> dict[str, Any]:
    return {
        "type": kind,
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "uid": "u", "managedFields": [{"manager": "kubelet"}]},
            "spec": {"nodeName": "n1", "volumes": [{"name": "v"}]},
        },
    }


def only_names(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": obj["metadata"]["name"]}}


@pytest.mark.parametrize("kind", [None, "ADDED", "MODIFIED", "DELETED"])
def test_a_slimmer_replaces_the_object_of_its_kind(kind: str | None) -> None:
    """None: kopf's events of the initial listing, the ones held at its gate."""
    assert kopf_startup.slim_event(pod_event(kind), only_names) == {
        "type": kind,
        "object": {"metadata": {"name": "p"}},
    }


@pytest.mark.parametrize("kind", [None, "ADDED", "MODIFIED", "DELETED"])
def test_other_kinds_lose_only_their_managed_fields(kind: str) -> None:
    event = pod_event(kind)
    slim = kopf_startup.slim_event(event, None)
    assert "managedFields" not in slim["object"]["metadata"]
    assert slim["object"]["spec"] == {"nodeName": "n1", "volumes": [{"name": "v"}]}


def test_what_is_no_object_event_passes_as_it_is() -> None:
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    assert kopf_startup.slim_event(bookmark, only_names) is bookmark
    assert kopf_startup.slim_event(watching.Bookmark.LISTED, only_names) is (
        watching.Bookmark.LISTED
    )
    broken = {"type": "ADDED", "object": None}
    assert kopf_startup.slim_event(broken, only_names) is broken


def test_the_watch_slims_each_event_by_its_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    async def source(*, resource: Any, **_: Any) -> AsyncIterator[Any]:
        yield watching.Bookmark.LISTED
        yield pod_event()

    monkeypatch.setattr(kopf_startup, "_ORIGINAL_WATCH", source)
    watch = kopf_startup.slimming_watch({"/v1/pods": only_names})

    async def collect(resource: Any) -> list[Any]:
        return [e async for e in watch(resource=resource, settings=None, namespace=None)]

    pods = SimpleNamespace(group="", version="v1", plural="pods")
    nodes = SimpleNamespace(group="", version="v1", plural="nodes")
    assert asyncio.run(collect(pods)) == [
        watching.Bookmark.LISTED,
        {"type": "MODIFIED", "object": {"metadata": {"name": "p"}}},
    ]
    other = asyncio.run(collect(nodes))[1]["object"]
    assert "managedFields" not in other["metadata"] and "volumes" in other["spec"]


@pytest.fixture
def kopf_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() changes kopf's modules: put them back after the test."""
    monkeypatch.setattr(aiotoggles, "ToggleSet", aiotoggles.ToggleSet)
    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)


@pytest.mark.usefixtures("kopf_restored")
def test_install_puts_both_where_kopf_looks_them_up() -> None:
    assert kopf_startup.install({}) == (True, True)
    # kopf's orchestration makes operator_indexed with aiotoggles.ToggleSet(all), and
    # its queueing watches with watching.infinite_watch, both looked up at call time.
    assert orchestration.aiotoggles.ToggleSet is FlipToggleSet
    assert queueing.watching.infinite_watch is not kopf_startup._ORIGINAL_WATCH


@pytest.mark.usefixtures("kopf_restored")
def test_install_stands_down_on_a_kopf_of_another_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    class Reshaped:
        def __init__(self, fn: Callable[[Iterable[bool]], bool]) -> None:
            self.fn = fn

    def infinite_watch(**_: Any) -> list[Any]:
        return []

    before = (aiotoggles.ToggleSet, watching.infinite_watch)
    monkeypatch.setattr(kopf_startup, "_ORIGINAL", Reshaped)
    monkeypatch.setattr(kopf_startup, "_ORIGINAL_WATCH", infinite_watch)
    assert kopf_startup.install({}) == (False, False)
    assert (aiotoggles.ToggleSet, watching.infinite_watch) == before
