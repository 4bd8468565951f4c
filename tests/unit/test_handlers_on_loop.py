"""kopf runs a plain function handler in its thread pool; pitstop's index and
watch-event handlers run on the event loop instead (indexes.on_the_loop): no
thread hop per watch event, and the asyncio Events they set are set on the
loop's own thread (asyncio is not thread-safe)."""

from __future__ import annotations

import asyncio
import logging
import threading

import kopf
import pytest
from kopf._core.actions.invocation import invoke, is_async_fn

from pitstop import handlers
from pitstop.cluster import indexes


def registered(kind: str) -> dict[str, object]:
    """The handlers of pitstop's modules in kopf's default registry, by id."""
    reg = getattr(kopf.get_default_registry(), kind)
    return {
        str(h.id): h.fn
        for h in reg.get_all_handlers()
        if getattr(h.fn, "__module__", "").startswith("pitstop.")
    }


@pytest.mark.parametrize("kind", ["_indexing", "_watching"])
def test_every_index_and_watch_handler_runs_on_the_loop(kind: str) -> None:
    assert handlers.WATCH_HANDLERS  # the handlers module registered them
    found = registered(kind)
    assert found, f"no pitstop handlers in {kind}"
    in_threads = sorted(name for name, fn in found.items() if not is_async_fn(fn))  # type: ignore[arg-type]
    assert in_threads == []


def test_a_node_event_wakes_its_repair_from_the_loops_own_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As kopf calls it: the waker is set on the loop's thread, and its waiter runs."""
    set_on: list[int] = []

    class Recording(asyncio.Event):
        def set(self) -> None:
            set_on.append(threading.get_ident())
            super().set()

    async def scenario() -> None:
        wake = indexes.Wakeups()
        monkeypatch.setattr(indexes.asyncio, "Event", Recording)
        waker = wake.nodes.register("n1")
        monkeypatch.undo()
        fn = registered("_watching")["wake_on_node"]
        await invoke(fn, kwargs={"name": "n1", "memo": {indexes.MEMO_WAKEUPS: wake}})  # type: ignore[arg-type]
        await asyncio.wait_for(waker.wait(), 1)

    asyncio.run(scenario())
    assert set_on == [threading.get_ident()]


def test_every_watch_handler_is_kept_quiet() -> None:
    # wake_on_room (room check) was left out: its "succeeded" line was logged on every
    # pod event, 4,170 lines in one e2e run, thousands a minute at scale.
    assert set(registered("_watching")) - handlers.WATCH_HANDLERS == set()


def test_a_pod_event_goes_through_one_kopf_handler_that_runs_each_concepts() -> None:
    """kopf's work per handler and event was most of the busy loop in a drain: pods get
    one event handler, which runs the room check's, the profiles' and the serving
    gate's in turn."""
    reg = kopf.get_default_registry()
    pods = [str(h.id) for h in reg._watching.get_all_handlers() if h.selector.any_name == "pods"]
    assert pods == ["on_pod_event"]

    from pitstop.instances.sources.daemon import Indexed
    from pitstop.instances.sources.profiles import Profile, parse_profile
    from pitstop.registry import Registry

    profile = parse_profile(
        {
            "metadata": {"name": "of", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "fn"}},
                "kind": "sync",
                "tasks": {"annotation": {}},
                "drainSignal": {"none": {}},
            },
        }
    )
    assert isinstance(profile, Profile)
    finished = {
        "metadata": {"name": "p1", "namespace": "fn", "labels": {"app": "fn"}},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Succeeded"},
    }

    async def scenario() -> tuple[bool, bool, bool]:
        memo: dict[str, object] = {}
        Registry.fresh().install(memo)
        wake = indexes.wakeups(memo)
        node, room, profiles = (
            wake.nodes.register("n1"),
            wake.capacity.register(),
            wake.profiles.register(),
        )
        fn = registered("_watching")["on_pod_event"]
        await invoke(  # type: ignore[arg-type]
            fn,
            kwargs={
                "body": finished,
                "type": "MODIFIED",
                "memo": memo,
                "nodes_by_name": {},
                "pods_by_node": {"n1": [finished]},
                "profiles_by_name": {"of": [Indexed(profile)]},
                "logger": logging.getLogger("t"),
            },
        )
        return node.is_set(), room.is_set(), profiles.is_set()

    assert asyncio.run(scenario()) == (True, True, True), "(its node's repair, room, profiles)"


def test_a_failing_pod_handler_leaves_the_others_running(monkeypatch: pytest.MonkeyPatch) -> None:
    from pitstop.registry import Registry

    def broken(**_: object) -> None:
        raise RuntimeError("broken")

    monkeypatch.setattr(indexes, "wake_on_room", broken)
    pod = {"metadata": {"name": "p1", "namespace": "fn"}, "spec": {"nodeName": "n1"}}

    async def scenario() -> bool:
        memo: dict[str, object] = {}
        Registry.fresh().install(memo)
        node = indexes.wakeups(memo).nodes.register("n1")
        await handlers.on_pod_event(  # type: ignore[call-arg]
            body=pod,
            type="ADDED",
            memo=memo,
            nodes_by_name={},
            pods_by_node={},
            profiles_by_name={},
            logger=logging.getLogger("t"),
        )
        return node.is_set()

    assert asyncio.run(scenario()), "the serving gate keeper's part still ran"


def test_only_the_kinds_with_change_or_daemon_handlers_get_a_diff_base() -> None:
    """kopf builds a diff base (a deep copy of the body) for every watch event, and
    needs it only for change and daemon handlers."""
    reg = kopf.get_default_registry()
    groups = {
        h.selector.group for r in (reg._changing, reg._spawning) for h in r.get_all_handlers()
    }
    assert groups and groups <= handlers.DIFFED_API_GROUPS
    storage = handlers.OwnKindsDiffBase(
        prefix="pitstop.dev", key="last-handled-configuration", v1=False
    )
    pod = kopf.Body(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}}
    )
    assert storage.build(body=pod) == {} and storage.fetch(body=pod) == {}
    stored = '{"spec":{"nodeName":"n0"}}'
    repair = kopf.Body(
        {
            "apiVersion": "pitstop.dev/v1alpha1",
            "kind": "NodeRepair",
            "metadata": {
                "name": "r",
                "annotations": {"pitstop.dev/last-handled-configuration": stored},
            },
            "spec": {"nodeName": "n1"},
        }
    )
    assert storage.build(body=repair)["spec"] == {"nodeName": "n1"}
    assert storage.fetch(body=repair) == {"spec": {"nodeName": "n0"}}
