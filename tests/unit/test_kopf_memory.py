"""pitstop.kopf_memory: kopf's memory of an object is forgotten after its event only
where its kind has no handler that reads it back and it holds nothing a fresh one
would not; kopf's own event processing, run for real, still sees what it kept."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits import aiotoggles
from kopf._core.actions import lifecycles
from kopf._core.engines import indexing
from kopf._core.reactor import inventory, processing, queueing

from pitstop import kopf_memory

PODS = kopf._cogs.structs.references.Resource(
    group="", version="v1", plural="pods", kind="Pod", namespaced=True
)


def pod_event(uid: str, type: str | None = None, rv: str = "1") -> dict[str, Any]:
    return {
        "type": type,
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "namespace": "ns",
                "name": f"pod-{uid}",
                "uid": uid,
                "resourceVersion": rv,
            },
            "spec": {"nodeName": "n1"},
        },
    }


class Run:
    """kopf's per-event processing (process_resource_event, wrapped as install() does)
    with its own registry, indexers and memories."""

    def __init__(self, register: Callable[[kopf.OperatorRegistry], None]) -> None:
        self.registry = kopf.OperatorRegistry()
        register(self.registry)
        self.indexers = indexing.OperatorIndexers()
        self.indexers.ensure(self.registry._indexing.get_all_handlers())
        self.memories = inventory.ResourceMemories()
        self.memobase = kopf.Memo(shared="operator-wide")
        self.settings = kopf.OperatorSettings()
        self.process = kopf_memory.forgetting(processing.process_resource_event)

    def events(self, *events: dict[str, Any]) -> None:
        async def run() -> None:
            for event in events:
                await self.one(event)

        asyncio.run(run())

    async def one(
        self, event: dict[str, Any], process: Callable[..., Any] | None = None, **gate: Any
    ) -> None:
        """One event through `process` (this run's by default); `gate`: kopf's
        resource_indexed and operator_indexed."""
        await (process or self.process)(
            lifecycle=lifecycles.all_at_once,
            indexers=self.indexers,
            registry=self.registry,
            settings=self.settings,
            memories=self.memories,
            memobase=self.memobase,
            resource=PODS,
            raw_event=event,
            event_queue=asyncio.Queue(),
            **gate,
        )

    def remembered(self) -> list[Any]:
        return list(self.memories.iter_all_memories())


def index_and_event(seen: list[Any]) -> Callable[[kopf.OperatorRegistry], None]:
    def register(registry: kopf.OperatorRegistry) -> None:
        @kopf.index("pods", id="by_node", registry=registry)
        def by_node(body: kopf.Body, **_: Any) -> dict[str, str]:
            return {body["spec"]["nodeName"]: body["metadata"]["name"]}

        @kopf.on.event("pods", registry=registry)
        def on_pod(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
            seen.append((body["metadata"]["resourceVersion"], memo.get("shared")))

    return register


def test_pods_with_index_and_event_handlers_leave_no_memory_and_lose_nothing() -> None:
    seen: list[Any] = []
    run = Run(index_and_event(seen))
    run.events(pod_event("a"), pod_event("b"), pod_event("a", "MODIFIED", rv="2"))
    assert run.remembered() == []
    # The handlers saw every event with the operator's memo, and the index is whole.
    assert seen == [("1", "operator-wide"), ("1", "operator-wide"), ("2", "operator-wide")]
    assert sorted(run.indexers.indices["by_node"]["n1"]) == ["pod-a", "pod-b"]


def test_what_a_handler_puts_in_an_object_s_memo_is_there_on_its_next_event() -> None:
    counts: list[int] = []

    def register(registry: kopf.OperatorRegistry) -> None:
        @kopf.on.event("pods", registry=registry)
        def count(memo: kopf.Memo, **_: Any) -> None:
            memo["events"] = memo.get("events", 0) + 1
            counts.append(memo["events"])

    run = Run(register)
    run.events(pod_event("a"), pod_event("a", "MODIFIED", rv="2"), pod_event("a", "MODIFIED"))
    assert counts == [1, 2, 3]
    assert len(run.remembered()) == 1


def test_a_failed_index_keeps_the_state_kopf_retries_it_from() -> None:
    def register(registry: kopf.OperatorRegistry) -> None:
        @kopf.index("pods", registry=registry, errors=kopf.ErrorsMode.TEMPORARY, backoff=0)
        def failing(**_: Any) -> None:
            raise kopf.TemporaryError("not yet", delay=0)

    run = Run(register)
    run.events(pod_event("a"))
    (memory,) = run.remembered()
    assert memory.indexing_memory.indexing_state is not None


def test_kinds_with_change_handlers_keep_every_memory() -> None:
    def register(registry: kopf.OperatorRegistry) -> None:
        index_and_event([])(registry)

        @kopf.on.field("pods", field="spec.nodeName", registry=registry)
        def moved(**_: Any) -> None:
            pass

    run = Run(register)
    assert not kopf_memory.stateless(run.registry, PODS)
    run.events(pod_event("a"), pod_event("b"))
    assert len(run.remembered()) == 2


def test_a_deleted_object_is_forgotten_as_kopf_does() -> None:
    run = Run(index_and_event([]))
    run.events(pod_event("a"), pod_event("a", "DELETED"))
    assert run.remembered() == [] and "n1" not in run.indexers.indices["by_node"]


def fresh() -> inventory.ResourceMemory:
    async def made() -> inventory.ResourceMemory:  # its daemon clock reads the loop's
        return await inventory.ResourceMemories().recall({"metadata": {"uid": "u"}}, memobase=base)

    return asyncio.run(made())


base = kopf.Memo(shared="operator-wide")


@pytest.mark.parametrize(
    "change",
    [
        lambda m: setattr(m, "remaining_patch", kopf._cogs.structs.patches.Patch({"a": 1})),
        lambda m: setattr(m.indexing_memory, "indexing_state", object()),
        lambda m: setattr(m.error_throttler, "source_of_delays", iter([1.0])),
        lambda m: setattr(m.error_throttler, "last_used_delay", 1.0),
        lambda m: setattr(m.error_throttler, "active_until", 5.0),
        lambda m: setattr(m.daemons_memory, "live_fresh_body", object()),
        lambda m: m.daemons_memory.running_daemons.update(d=object()),
        lambda m: m.daemons_memory.forever_stopped.add("d"),
        lambda m: m.memo.update(mine=1),
        lambda m: m.memo.update(shared="replaced"),
        lambda m: m.memo.pop("shared"),
    ],
)
def test_anything_a_fresh_memory_lacks_makes_it_not_pristine(change: Any) -> None:
    memory = fresh()
    assert kopf_memory.pristine(memory, base)
    change(memory)
    assert not kopf_memory.pristine(memory, base)


class Gate:
    """kopf's start-up gate as its orchestration makes it: an `all` ToggleSet shut by a
    blocker until the test opens it, and a toggle per object its watcher saw first."""

    def __init__(
        self, run: Run, at_gate: bool = True, process: Callable[..., Any] | None = None
    ) -> None:
        self.run = run
        self.process = process or kopf_memory.forgetting(
            processing.process_resource_event, at_gate=at_gate
        )

    async def start(self, *events: dict[str, Any]) -> None:
        self.set = aiotoggles.ToggleSet(all)
        self.blocker = await self.set.make_toggle(name="blocker")
        self.workers = []
        for event in events:
            toggle = await self.set.make_toggle(name=event["object"]["metadata"]["uid"])
            self.workers.append(asyncio.ensure_future(self.first(event, toggle)))
        await asyncio.wait_for(self.indexed(), timeout=5)

    async def indexed(self) -> None:
        """Until every object's toggle is dropped (each worker indexed its event)."""
        async with self.set._condition:  # kopf's set notifies on every drop
            await self.set._condition.wait_for(lambda: len(list(self.set)) == 1)

    async def first(self, event: dict[str, Any], toggle: Any) -> None:
        await self.run.one(event, self.process, resource_indexed=toggle, operator_indexed=self.set)

    async def open(self) -> None:
        await self.set.drop_toggle(self.blocker)
        await asyncio.wait_for(asyncio.gather(*self.workers), timeout=5)


def test_at_the_gate_an_object_is_indexed_holding_no_memory_of_kopf_until_it_opens() -> None:
    seen: list[Any] = []
    run = Run(index_and_event(seen))
    gate = Gate(run)

    async def go() -> None:
        await gate.start(pod_event("a"), pod_event("b"))
        # Indexed, and each object's toggle dropped: only the blocker keeps it shut.
        assert sorted(run.indexers.indices["by_node"]["n1"]) == ["pod-a", "pod-b"]
        assert [t.name for t in gate.set] == ["blocker"]
        assert not any(w.done() for w in gate.workers)
        assert seen == []  # no handler before the gate opens
        assert run.remembered() == []  # and nothing of kopf's processing held
        await gate.open()

    asyncio.run(go())
    assert seen == [("1", "operator-wide"), ("1", "operator-wide")]
    assert sorted(run.indexers.indices["by_node"]["n1"]) == ["pod-a", "pod-b"]
    assert run.remembered() == []


def test_kopf_s_own_gate_holds_each_object_s_memory_and_so_do_stateful_kinds() -> None:
    """What index_at_gate takes away: kopf waits at the gate inside its processing,
    with the object's memory made (the assertion above fails this way without it)."""

    def with_a_change_handler(registry: kopf.OperatorRegistry) -> None:
        index_and_event([])(registry)

        @kopf.on.field("pods", field="spec.nodeName", registry=registry)
        def moved(**_: Any) -> None:
            pass

    for run, at_gate in ((Run(index_and_event([])), False), (Run(with_a_change_handler), True)):
        gate = Gate(run, at_gate=at_gate)

        async def go() -> None:
            await gate.start(pod_event("a"), pod_event("b"))  # noqa: B023
            assert len(run.remembered()) == 2  # noqa: B023
            await gate.open()  # noqa: B023

        asyncio.run(go())
        assert sorted(run.indexers.indices["by_node"]["n1"]) == ["pod-a", "pod-b"]


def test_an_index_failed_at_the_gate_is_indexed_again_once_it_opens() -> None:
    calls: list[str] = []

    def register(registry: kopf.OperatorRegistry) -> None:
        @kopf.index("pods", id="by_node", registry=registry)
        def by_node(body: kopf.Body, **_: Any) -> dict[str, str]:
            calls.append(body["metadata"]["name"])
            if len(calls) == 1:
                raise RuntimeError("not yet")
            return {body["spec"]["nodeName"]: body["metadata"]["name"]}

    run = Run(register)
    gate = Gate(run)

    async def go() -> None:
        await gate.start(pod_event("a"))
        assert "n1" not in run.indexers.indices["by_node"]
        await gate.open()

    asyncio.run(go())
    assert calls == ["pod-a", "pod-a"]
    assert list(run.indexers.indices["by_node"]["n1"]) == ["pod-a"]
    assert run.remembered() == []


def test_when_indexing_at_the_gate_cannot_run_kopf_does_it_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Any] = []
    run = Run(index_and_event(seen))
    gate = Gate(run)

    index_resource, calls = indexing.index_resource, []

    async def broken_once(**kwargs: Any) -> None:
        calls.append(kwargs["raw_event"])
        if len(calls) == 1:  # the call at the gate (the same module as kopf's)
            raise OSError("no such thing")
        await index_resource(**kwargs)

    monkeypatch.setattr(indexing, "index_resource", broken_once)

    async def go() -> None:
        await gate.start(pod_event("a"))
        # kopf's own processing indexed it, and dropped its toggle.
        assert sorted(run.indexers.indices["by_node"]["n1"]) == ["pod-a"]
        assert [t.name for t in gate.set] == ["blocker"]
        assert len(run.remembered()) == 1  # waiting inside kopf's processing
        await gate.open()

    asyncio.run(go())
    assert seen == [("1", "operator-wide")]
    assert run.remembered() == []


@pytest.fixture
def kopf_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() changes kopf's modules: put them back after the test."""
    monkeypatch.setattr(processing, "process_resource_event", processing.process_resource_event)
    monkeypatch.setattr(queueing, "asyncio", queueing.asyncio)


@pytest.mark.usefixtures("kopf_restored")
def test_install_puts_both_where_kopf_looks_them_up() -> None:
    assert kopf_memory.install() == (True, True)
    assert processing.process_resource_event is not kopf_memory._ORIGINAL
    assert queueing.asyncio.Queue is kopf_memory.Backlog
    assert queueing.asyncio.Event is kopf_memory.Pressure
    # The rest of asyncio is asyncio's, for the rest of kopf's queueing.
    assert queueing.asyncio.Condition is asyncio.Condition
    assert queueing.asyncio.CancelledError is asyncio.CancelledError


@pytest.mark.usefixtures("kopf_restored")
def test_install_stands_down_on_a_kopf_of_another_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class Moved:
        memo: Any = None

    monkeypatch.setattr(kopf_memory.inventory, "ResourceMemory", Moved)
    monkeypatch.setattr(queueing, "asyncio", object())
    assert kopf_memory.install() == (False, False)
    assert processing.process_resource_event is kopf_memory._ORIGINAL


@pytest.mark.usefixtures("kopf_restored")
def test_on_a_kopf_whose_indexing_differs_the_gate_is_left_to_kopf(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def index_resource(*, raw_event: Any, **_: Any) -> None:  # another signature
        indexed.append(raw_event["object"]["metadata"]["name"])

    indexed: list[str] = []
    monkeypatch.setattr(indexing, "index_resource", index_resource)
    assert kopf_memory.install() == (True, True)
    assert "kopf's indexing is not as pitstop expects it" in caplog.text
    run = Run(index_and_event([]))
    gate = Gate(run, process=processing.process_resource_event)  # as installed

    async def go() -> None:
        await gate.start(pod_event("a"))
        assert indexed == ["pod-a"]  # by kopf's processing alone, waiting inside it
        assert len(run.remembered()) == 1
        await gate.open()

    asyncio.run(go())
    assert run.remembered() == []


def test_the_backlog_is_first_in_first_out_and_wakes_its_reader() -> None:
    async def run() -> list[Any]:
        backlog = kopf_memory.Backlog()
        got = asyncio.ensure_future(backlog.get())
        await asyncio.sleep(0)
        assert not got.done() and backlog.empty()
        await backlog.put(1)
        await backlog.put(2)
        return [await asyncio.wait_for(got, 1), await backlog.get(), backlog.empty()]

    assert asyncio.run(run()) == [1, 2, True]


def test_a_get_timed_out_loses_no_event_and_a_woken_cancelled_get_passes_it_on() -> None:
    async def run() -> list[Any]:
        backlog = kopf_memory.Backlog()
        with pytest.raises(TimeoutError):  # kopf's worker: wait_for(get(), idle_timeout)
            await asyncio.wait_for(backlog.get(), timeout=0.01)
        first = asyncio.ensure_future(backlog.get())
        second = asyncio.ensure_future(backlog.get())
        await asyncio.sleep(0)
        backlog.put_nowait("event")  # wakes the first ...
        first.cancel()  # ... which is cancelled before it runs
        return [await asyncio.wait_for(second, 1), backlog.empty(), first.cancelled()]

    assert asyncio.run(run()) == ["event", True, True]


def test_the_pressure_is_asyncio_s_event() -> None:
    async def run() -> list[Any]:
        pressure = kopf_memory.Pressure()
        waiters = [asyncio.ensure_future(pressure.wait()) for _ in range(2)]
        timed_out = asyncio.ensure_future(asyncio.wait_for(pressure.wait(), 0.01))
        await asyncio.sleep(0.05)
        states = [pressure.is_set(), timed_out.done(), len(pressure._waiters)]
        pressure.set()
        woken = await asyncio.wait_for(asyncio.gather(*waiters), 1)
        pressure.clear()
        return [*states, woken, pressure.is_set(), len(pressure._waiters)]

    assert asyncio.run(run()) == [False, True, 2, [True, True], False, 0]


def test_kopf_s_worker_processes_every_event_from_the_backlog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf's own watcher and worker (queueing.watcher) with the Backlog: every event
    of two objects reaches the processor, in order, and the workers end when idle."""
    monkeypatch.setattr(queueing, "asyncio", kopf_memory._ASYNCIO)
    settings = kopf.OperatorSettings()
    settings.queueing.idle_timeout = 0.05
    seen: list[tuple[str, str]] = []

    async def processor(raw_event: Any, **_: Any) -> None:
        seen.append((raw_event["object"]["metadata"]["uid"], raw_event["rv"]))

    events = [
        {"type": t, "rv": rv, "object": {"metadata": {"uid": uid, "name": uid}}}
        for t, rv, uid in [(None, "1", "a"), (None, "1", "b"), ("MODIFIED", "2", "a")]
    ]

    async def stream(**_: Any) -> Any:
        for e in events:
            yield e
        await asyncio.sleep(0.5)  # kopf's watch stays open; the workers go idle

    monkeypatch.setattr(queueing.watching, "infinite_watch", stream)

    async def run() -> None:
        await queueing.watcher(
            namespace=None,
            settings=settings,
            resource=PODS,
            processor=processor,  # type: ignore[arg-type]
        )

    asyncio.run(run())
    assert sorted(seen) == [("a", "1"), ("a", "2"), ("b", "1")]
