"""What kopf keeps per object, made smaller: its memory of an object forgotten where
nothing needs it, and a lighter backlog of its events.

kopf keeps a `ResourceMemory` for every object it has seen until the object is
deleted: a copy of the operator's memo, an error throttler, the indexing's retry
state, the daemons' state, a patch left to apply. Only daemons, timers, change
handlers and admission webhooks read it back across events; pods, nodes,
EndpointSlices and PodDisruptionBudgets have index and event handlers alone (as
pitstop.handlers.DIFFED_API_GROUPS says), so for 20,000 pods it is ~1 kB each of
state that equals a fresh one, kept for nothing (bench/README.md, the cost curve).

After each event of a kind without such handlers, the object's memory is forgotten
if it is still what kopf would make afresh (`pristine`): no throttling after an
error, no failed index to retry, no patch left, no daemon, the memo as the
operator's. Anything else stays, so the next event finds it as kopf left it; the
next event of a forgotten object gets a fresh memory, as kopf would make it.

Each object's stream of watch events in kopf's queueing (its worker's backlog)
is an `asyncio.Queue`: four deques, ~3.3 kB, made for every object kopf sees and
held until its worker ends, so for every object at once while kopf's start-up
gate holds them all (pitstop.kopf_startup). Its one reader uses `put`, `get` and
`empty`; `Backlog` is those on a list, ~0.2 kB; its "more events" Event keeps its
waiters in a list (`Pressure`), ~0.1 kB of 0.86. The start-up's peak is what stays
in CPython's arenas (bench/README.md), so this is memory for good, not only at
start-up.

While kopf's start-up gate is shut (pitstop.kopf_startup), each object's worker
indexes its first event and then waits for the gate inside kopf's processing of that
event, holding what the processing made for it (its memory, body and patch wrappers,
three loggers, its error throttle, the frames holding them), for every object at
once. For a stateless kind the first event is indexed ahead (`index_at_gate`) and
waits for the gate holding the event alone; kopf processes it whole once the gate
is open: ~5.5 kB less a pod at the gate (`python -m bench.gate_memory`).

This reaches into kopf's private modules (pyproject.toml pins kopf's minor, as for
pitstop.kopf_startup); if they moved or changed shape it stands down with a
warning and kopf keeps every memory as before.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import importlib
import inspect
import logging
import types
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from typing import Any

logger = logging.getLogger(__name__)

try:
    processing: Any = importlib.import_module("kopf._core.reactor.processing")
    inventory: Any = importlib.import_module("kopf._core.reactor.inventory")
    queueing: Any = importlib.import_module("kopf._core.reactor.queueing")
    indexing: Any = importlib.import_module("kopf._core.engines.indexing")
    loggers: Any = importlib.import_module("kopf._core.actions.loggers")
    bodies: Any = importlib.import_module("kopf._cogs.structs.bodies")
    _IMPORT_ERROR = ""
except ImportError as e:
    processing = inventory = queueing = indexing = loggers = bodies = None
    _IMPORT_ERROR = str(e)
_ORIGINAL: Any = getattr(processing, "process_resource_event", None)

REGISTRIES = ("_changing", "_spawning", "_webhooks")
"""kopf's registries whose handlers read an object's memory back on a later event
(change handlers: the retry and `initial` state; daemons and timers; webhooks: the
memo). Index and event handlers get a memory, but nothing they leave in it is read
again unless it is not pristine."""


def stateless(registry: Any, resource: Any) -> bool:
    """No handler of `resource` reads an object's memory back on a later event."""
    return not any(getattr(registry, r).has_handlers(resource=resource) for r in REGISTRIES)


def _same_memo(memo: Mapping[Any, Any], memobase: Mapping[Any, Any]) -> bool:
    """The object's memo is still the copy of the operator's kopf made: a handler that
    put something in it (or replaced a value) keeps its memory."""
    return len(memo) == len(memobase) and all(
        k in memobase and memobase[k] is v for k, v in memo.items()
    )


def pristine(memory: Any, memobase: Mapping[Any, Any]) -> bool:
    """Nothing in `memory` that a fresh one (kopf's `recall` of an unknown object)
    would not have, but the flags only change handlers read (`noticed_by_listing`,
    `fully_handled_once`) and the daemons' idle clock."""
    throttler, daemons = memory.error_throttler, memory.daemons_memory
    return (
        memory.remaining_patch is None
        and memory.indexing_memory.indexing_state is None
        and throttler.source_of_delays is None
        and throttler.last_used_delay is None
        and throttler.active_until is None
        and daemons.live_fresh_body is None
        and not daemons.running_daemons
        and not daemons.forever_stopped
        and _same_memo(memory.memo, memobase)
    )


def forget_if_pristine(memories: Any, raw_body: Mapping[str, Any], memobase: Any) -> bool:
    """Forgets the object's memory if it is pristine; True if it did."""
    key = memories._build_key(raw_body)
    memory = memories._items.get(key)
    if memory is None or not pristine(memory, memobase):
        return False
    del memories._items[key]
    return True


def forgetting(
    original: Callable[..., Awaitable[Any]], *, at_gate: bool = True
) -> Callable[..., Awaitable[Any]]:
    """kopf's process_resource_event, then the object's memory forgotten if its kind
    is stateless and the memory pristine. One object's events are processed one at a
    time (kopf's worker per object), so no other event of it is in flight here.

    At kopf's start-up gate, an object of a stateless kind is indexed first
    (`index_at_gate`) and waits for the gate holding its event alone; kopf's own
    processing of that event (its memory, body, patch, loggers, error throttle)
    starts only once the gate is open, so none of it is held for every object at
    once at the start-up's peak. `at_gate=False` leaves the gate to kopf."""

    @cache
    def kind_is_stateless(registry: Any, resource: Any) -> bool:
        # Handlers are all registered before kopf starts its watches.
        return stateless(registry, resource)

    async def process_resource_event(**kwargs: Any) -> Any:
        gate: Any = kwargs.get("operator_indexed")
        toggle = kwargs.get("resource_indexed")
        stateless_kind = kind_is_stateless(kwargs["registry"], kwargs["resource"])
        shut = at_gate and toggle is not None and gate is not None and not gate.is_on()
        if shut and stateless_kind and await index_at_gate(**kwargs):
            await gate.drop_toggle(toggle)
            await gate.wait_for(True)
            # kopf indexes the event again (the same entry) and runs its handlers.
            kwargs = {**kwargs, "resource_indexed": None}
        result = await original(**kwargs)
        raw_event = kwargs["raw_event"]
        if raw_event.get("type") != "DELETED" and stateless_kind:
            forget_if_pristine(kwargs["memories"], raw_event["object"], kwargs["memobase"])
        return result

    return process_resource_event


async def index_at_gate(
    *,
    raw_event: Mapping[str, Any],
    registry: Any,
    indexers: Any,
    settings: Any,
    resource: Any,
    memobase: Any,
    **_: Any,
) -> bool:
    """Indexes an object's event as kopf's processing does first (errors logged and
    ignored: kopf's `index_resource`), with a memory made for this call alone: a
    failed index is retried when kopf processes the event after the gate. False if
    the indexing could not run at all; kopf's own processing then does it all, its
    error throttle included."""
    body = bodies.Body(raw_event["object"])
    try:
        await indexing.index_resource(
            indexers=indexers,
            registry=registry,
            settings=settings,
            resource=resource,
            raw_event=raw_event,
            memory=indexing.IndexingMemory(),
            logger=loggers.TerseObjectLogger(body=body, settings=settings),
            memo=copy.copy(memobase),  # as kopf's recall makes an object's memo
            body=body,
        )
    except Exception as e:
        logger.warning(f"Indexing {resource} at the start-up gate failed; kopf retries it: {e!r}")
        return False
    return True


class Backlog:
    """What kopf's queueing uses of an `asyncio.Queue` for an object's watch events
    (`put`, `get`, `empty`), as asyncio's: first in first out, a getter woken by a
    put, a cancelled get loses no event and passes its wake-up on."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getters: list[asyncio.Future[None]] = []

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake_one()

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake_one()  # woken, then cancelled: the next getter takes it
                raise
        return self.get_nowait()

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


class Pressure(asyncio.Event):
    """asyncio's Event (kopf's per-object "more events queued" flag), its waiters in
    a list (56 B) instead of a deque (760 B): the Event's own code appends, removes
    and iterates them, which a list does alike."""

    def __init__(self) -> None:  # not asyncio's: it would make the deque first
        self._waiters: Any = []
        self._value = False


class _Asyncio(types.ModuleType):
    """asyncio as kopf's queueing sees it: all of it, but its Queue is a Backlog and
    its Event a Pressure."""

    Queue = Backlog
    Event = Pressure

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def install() -> tuple[bool, bool]:
    """Wraps kopf's process_resource_event where kopf looks it up when it starts its
    orchestrator, and gives kopf's queueing the Backlog; returns which took."""
    memories = _fits()
    if memories:
        at_gate = _gate_fits()
        if not at_gate:
            logger.warning(
                "kopf's indexing is not as pitstop expects it: at the start-up gate each "
                "object's processing is held whole, as kopf does (more memory at start-up)."
            )
        processing.process_resource_event = forgetting(_ORIGINAL, at_gate=at_gate)
    else:
        why = f" ({_IMPORT_ERROR})" if _IMPORT_ERROR else ""
        logger.warning(
            f"kopf's per-object memory is not where or as pitstop expects it{why}: "
            "it is kept for every object, as kopf does."
        )
    backlog = queueing is not None and getattr(queueing, "asyncio", None) in (asyncio, _ASYNCIO)
    if backlog:
        queueing.asyncio = _ASYNCIO
    else:
        logger.warning(
            "kopf's queueing is not as pitstop expects it: each object's backlog is an "
            "asyncio.Queue, as kopf has it."
        )
    return memories, backlog


_ASYNCIO = _Asyncio("asyncio")


FIELDS = {
    "ResourceMemory": {
        "memo",
        "error_throttler",
        "indexing_memory",
        "daemons_memory",
        "remaining_patch",
    },
    "Throttler": {"source_of_delays", "last_used_delay", "active_until"},
    "IndexingMemory": {"indexing_state"},
    "DaemonsMemory": {"live_fresh_body", "running_daemons", "forever_stopped"},
}
"""What `pristine` reads, by kopf's class."""


def _fits() -> bool:
    """kopf has the shapes this module relies on."""
    if _ORIGINAL is None or inventory is None:
        return False
    memories = getattr(inventory, "ResourceMemories", None)
    if memories is None or not hasattr(memories, "_build_key"):
        return False
    if not isinstance(getattr(memories(), "_items", None), dict):
        return False
    memory = getattr(inventory, "ResourceMemory", None)
    if memory is None or not dataclasses.is_dataclass(memory):
        return False
    classes: dict[str, Any] = {"ResourceMemory": memory}
    classes.update((f.type.__name__, f.type) for f in _fields(memory) if isinstance(f.type, type))
    return all(
        name in classes and needed <= {f.name for f in _fields(classes[name])}
        for name, needed in FIELDS.items()
    )


INDEX_RESOURCE_ARGS = frozenset(
    {"indexers", "registry", "settings", "resource", "raw_event"}
    | {"memory", "logger", "memo", "body"}
)
"""What index_at_gate passes to kopf's index_resource."""


def _gate_fits() -> bool:
    """kopf has what index_at_gate calls, as it calls it."""
    index_resource = getattr(indexing, "index_resource", None)
    if index_resource is None or not inspect.iscoroutinefunction(index_resource):
        return False
    if set(inspect.signature(index_resource).parameters) != INDEX_RESOURCE_ARGS:
        return False
    return all(
        hasattr(module, name)
        for module, name in (
            (indexing, "IndexingMemory"),
            (loggers, "TerseObjectLogger"),
            (bodies, "Body"),
        )
    )


def _fields(cls: Any) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
