"""pitstop.kopf_startup: kopf's start-up gate wakes its waiters when its state flips,
and only then, so indexing N objects costs O(N) checks of the set, not O(N²); and
watch events are slimmed before kopf keeps them."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import watching
from kopf._cogs.structs import references
from kopf._core.engines import peering
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
    monkeypatch.setattr(FlipToggleSet, "on_open", None)


@pytest.mark.usefixtures("kopf_restored")
def test_install_puts_both_where_kopf_looks_them_up() -> None:
    assert kopf_startup.install({}) == (True, True)
    # kopf's queueing watches with watching.infinite_watch, looked up at call time.
    assert queueing.watching.infinite_watch is not kopf_startup._ORIGINAL_WATCH


@pytest.mark.usefixtures("kopf_restored")
def test_kopf_s_own_orchestration_builds_the_flip_only_gate() -> None:
    """The effect, not the attribute: kopf's orchestrator, run for real after
    install(), made its operator-wide start-up gate (Ensemble.operator_indexed) of
    pitstop's class, and that gate wakes its waiters on flips only."""
    assert kopf_startup.install({}) == (True, True)

    async def gate_built_by_kopf() -> Any:
        insights = references.Insights()
        task = asyncio.create_task(
            orchestration.orchestrator(
                processor=None,  # type: ignore[arg-type]  # no resource: never called
                settings=kopf.OperatorSettings(),
                identity=peering.Identity("unit"),
                insights=insights,
                operator_paused=aiotoggles.ToggleSet(any),
            )
        )
        for _ in range(100):  # until it waits for the first revision of the insights
            await asyncio.sleep(0)
        frame = task.get_coro().cr_frame  # type: ignore[union-attr]
        assert frame is not None, "kopf's orchestrator ended"
        gate = frame.f_locals["ensemble"].operator_indexed
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return gate

    gate = asyncio.run(gate_built_by_kopf())
    assert type(gate) is FlipToggleSet

    async def wakes_on_flips_only() -> None:
        woken = asyncio.ensure_future(gate.wait_for(True))
        first = await gate.make_toggle(name="a")  # on -> off
        await asyncio.sleep(0)
        await gate.drop_toggles([await gate.make_toggle(name="b")])  # off -> off
        await asyncio.sleep(0)
        assert not woken.done()
        await gate.drop_toggle(first)  # off -> on
        await asyncio.wait_for(woken, timeout=1)

    asyncio.run(wakes_on_flips_only())


def test_a_moved_kopf_module_stands_pitstop_down_not_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A kopf release that moved its private modules: pitstop.kopf_startup still
    imports (pitstop run imports it before kopf starts), and install() leaves kopf
    as it is with a warning."""
    for name in ("kopf._cogs.aiokits.aiotoggles", "kopf._cogs.clients.watching"):
        package, _, module = name.rpartition(".")
        monkeypatch.delattr(sys.modules[package], module)  # gone from its package
        monkeypatch.setitem(sys.modules, name, None)  # and importing it raises ImportError
    spec = importlib.util.spec_from_file_location("moved_kopf_startup", kopf_startup.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    before = (aiotoggles.ToggleSet, watching.infinite_watch)
    with caplog.at_level(logging.WARNING):
        assert copy.install({}) == (False, False)
    assert (aiotoggles.ToggleSet, watching.infinite_watch) == before
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all("not where or as pitstop expects it" in w for w in warned)


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


@pytest.mark.usefixtures("kopf_restored")
def test_the_start_up_gate_says_when_it_opens_and_only_then() -> None:
    """install()'s on_open is called when the `all` set (kopf's start-up gate) flips
    on, once per opening: not when it closes, not for toggles made or dropped
    without a flip, and never for an `any` set (kopf's pause)."""
    opened: list[int] = []
    kopf_startup.install({}, on_open=lambda: opened.append(1))

    async def main() -> None:
        gate = FlipToggleSet(all)
        listing = await gate.make_toggle(name="listing")  # closes: no call
        objects = [await gate.make_toggle(name=f"object {i}") for i in range(3)]
        await gate.drop_toggles(objects)  # still closed by the listing
        assert opened == []
        await gate.drop_toggle(listing)
        assert opened == [1]
        await gate.drop_toggle(await gate.make_toggle(name="a kind added later"))
        assert opened == [1, 1]
        paused = FlipToggleSet(any)
        await paused.drop_toggle(await paused.make_toggle(True, name="peering"))
        assert opened == [1, 1]

    asyncio.run(main())


@pytest.mark.usefixtures("kopf_restored")
def test_kopf_s_own_gate_opening_reaches_on_open() -> None:
    """Through kopf's own orchestration: its start-up gate, made by kopf after
    install(), calls on_open when the last toggle of a listing is dropped."""
    opened: list[int] = []
    assert kopf_startup.install({}, on_open=lambda: opened.append(1)) == (True, True)

    async def main() -> None:
        gate = aiotoggles.ToggleSet(all)  # as kopf's orchestrator makes it
        await gate.drop_toggle(await gate.make_toggle(name="pods listed"))

    asyncio.run(main())
    assert opened == [1]
