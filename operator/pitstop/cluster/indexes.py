"""What pitstop keeps in memory from its watches (kopf indexes), and how a watch
event wakes the repair of the node it concerns.

Indexes instead of LIST calls: pods by node, EndpointSlice readiness by pod, nodes
by name, NodeRepairs by node, PodDisruptionBudgets by namespace. Bodies are slimmed
to what the decisions read, so 20,000 pods stay small. kopf fills every index from
its initial listing before any handler runs, so a restarted operator decides from a
complete picture."""

from __future__ import annotations

import asyncio
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import kopf

from pitstop import constants, resources, selectors
from pitstop.cluster import nodes

C = constants
KEPT_POD_ANNOTATIONS = (
    C.ANNOTATION_DRAINING,
    C.ANNOTATION_INFLIGHT,
    "kubernetes.io/config.mirror",
)
KEPT_POD_CONDITIONS = frozenset({C.CONDITION_SERVING, "Ready"})


def _shared(value: Any) -> Any:
    """One copy of a string that many pods repeat (namespace, label keys and values,
    node name, phase): each watch event parses its own, and 100,000 pods hold them."""
    return sys.intern(value) if isinstance(value, str) else value


F = TypeVar("F", bound=Callable[..., Any])


def on_the_loop(register: Callable[[Callable[..., Any]], Any]) -> Callable[[F], F]:
    """Registers a plain function with a kopf decorator (`kopf.index(...)`,
    `kopf.on.event(...)`) as a coroutine, so kopf calls it on the event loop. kopf
    runs a plain function in its thread pool: a hop per watch event, behind the GIL
    while the loop is busy, and an asyncio.Event set from that thread is set from
    the wrong one (asyncio is not thread-safe: the loop is not woken, the waiter
    runs whenever it next wakes). The plain function stays the module's (tests and
    the simulation call it); kopf's id for the handler, and an index's name, are its
    qualified name as before."""

    def decorate(fn: F) -> F:
        async def on_loop(**kwargs: Any) -> Any:
            return fn(**kwargs)

        # Not functools.wraps: kopf follows __wrapped__ to decide sync or async.
        on_loop.__name__, on_loop.__qualname__ = fn.__name__, fn.__qualname__
        on_loop.__module__, on_loop.__doc__ = fn.__module__, fn.__doc__
        register(on_loop)
        return fn

    return decorate


_EMPTY_CONTAINER: dict[str, Any] = {"ports": [], "env": []}
"""Shared by every slimmed container with nothing kept (the common case); index
values are read, never changed in place."""
_OWNER_KINDS: dict[Any, dict[str, Any]] = {}


def _owner(kind: Any) -> dict[str, Any]:
    """A shared {"kind": kind} per owner kind (ReplicaSet, DaemonSet, ...)."""
    ref = _OWNER_KINDS.get(kind)
    if ref is None:
        ref = _OWNER_KINDS.setdefault(kind, {"kind": _shared(kind)})
    return ref


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    annotations = meta.get("annotations") or {}
    return {
        "metadata": {
            "namespace": _shared(meta.get("namespace")),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            # Which version this is: a repair's own patch answer stands in for the
            # index's view until the index moves past it (RepairState.answered).
            "resourceVersion": meta.get("resourceVersion"),
            "labels": {_shared(k): _shared(v) for k, v in (meta.get("labels") or {}).items()},
            "annotations": {k: annotations[k] for k in KEPT_POD_ANNOTATIONS if k in annotations},
            "ownerReferences": [_owner(r.get("kind")) for r in meta.get("ownerReferences") or []],
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": {
            "nodeName": _shared(spec.get("nodeName")),
            "readinessGates": spec.get("readinessGates"),
            # What task sources read: named ports, the timeouts in the environment
            # (of-watchdog's, a profile's taskDeadline), the grace.
            "containers": [_slim_container(c) for c in spec.get("containers") or []],
            "terminationGracePeriodSeconds": spec.get("terminationGracePeriodSeconds"),
            # What the room check (pitstop.pool.room) weighs and filters by.
            "requests": _requests(spec),
            "nodeSelector": _shared_map(spec.get("nodeSelector")),
            "affinity": _node_affinity(spec.get("affinity")),
            "tolerations": _tolerations(spec.get("tolerations")),
        },
        "status": {
            "phase": _shared(status.get("phase")),
            "podIP": status.get("podIP"),
            # Ready: only a ready pod consumes a disruption of its PDB when evicted.
            "conditions": [
                c for c in status.get("conditions") or [] if c.get("type") in KEPT_POD_CONDITIONS
            ],
        },
    }


_NOTHING: dict[str, Any] = {}
"""Shared by every slimmed pod without requests, node selector or required node
affinity (index values are read, never changed in place)."""
_TOLERATIONS: dict[tuple[tuple[Any, ...], ...], list[dict[str, Any]]] = {}
"""One list per distinct set of tolerations: nearly every pod carries the same two
(the API server's default not-ready and unreachable ones)."""


def _requests(spec: Mapping[str, Any]) -> dict[str, int]:
    if "requests" in spec:  # slimmed already (a watched pod)
        return dict(spec["requests"] or {}) or _NOTHING
    return resources.pod_requests(spec) or _NOTHING


def _shared_map(found: Mapping[str, Any] | None) -> dict[str, Any]:
    return {_shared(k): _shared(v) for k, v in found.items()} if found else _NOTHING


def _node_affinity(affinity: Mapping[str, Any] | None) -> dict[str, Any]:
    """Only what a pod requires of its node (preferences do not decide a fit)."""
    required = ((affinity or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return _NOTHING
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


def _tolerations(found: list[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    fields = ("key", "operator", "value", "effect")
    kept = tuple(tuple(t.get(f) for f in fields) for t in found or [])
    shared = _TOLERATIONS.get(kept)
    if shared is None:
        made = [{f: _shared(v) for f, v in zip(fields, t, strict=True) if v} for t in kept]
        shared = _TOLERATIONS.setdefault(kept, made)
    return shared


KOPF_POD_METADATA = ("creationTimestamp", "finalizers", "generation")
"""What kopf itself may read of a pod's metadata beyond slim_pod's (identity, resuming
its watch, a finalizer it would have to remove)."""


def watched_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """A pod as kopf keeps it from the watch (pitstop.kopf_startup): what the pod index
    and the serving gate read, which is slim_pod, and what kopf reads itself. Most of a
    pod (managedFields, images, volumes, container statuses) is dropped on arrival, so
    20,000 events held at kopf's start-up gate stay small; slim_pod of it is slim_pod
    of the whole pod."""
    slim = slim_pod(body)
    meta = body.get("metadata", {})
    slim["metadata"].update({k: meta[k] for k in KOPF_POD_METADATA if k in meta})
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), **slim}


WATCH_SLIMMERS = {"/v1/pods": watched_pod}
"""Per watched resource ("group/version/plural"), what kopf keeps of its events."""


KEPT_ENV = frozenset({"write_timeout", "healthcheck_interval", "exec_timeout"})
"""Container environment kept whatever its value (of-watchdog's SIGTERM timeouts: an
unparsable one still says the container is a watchdog)."""
_DURATION_LIKE = re.compile(r"[0-9][0-9a-z.µ]{0,31}")
"""Besides those, a literal value that looks like a number or a duration ("60",
"1m30s"), whatever its name: an InstanceProfile's taskDeadline may name any variable,
and a profile made after a pod was indexed must still find it; other values (URLs,
names, tokens) are dropped, so the index stays small."""


def _slim_container(c: Mapping[str, Any]) -> dict[str, Any]:
    ports = [
        {"name": p.get("name"), "containerPort": p.get("containerPort")}
        for p in c.get("ports") or []
        if p.get("name")
    ]
    env = [
        {"name": _shared(name), "value": _shared(value)}
        for e in c.get("env") or []
        if isinstance(name := e.get("name"), str)
        and isinstance(value := e.get("value"), str)
        and (name in KEPT_ENV or _DURATION_LIKE.fullmatch(value))
    ]
    if not ports and not env:
        return _EMPTY_CONTAINER
    return {"name": _shared(c.get("name")), "ports": ports, "env": env}


def slim_node(body: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    annotations = meta.get("annotations") or {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "labels": dict(meta.get("labels") or {}),
            # None when the node has no annotations at all: a patch must then create the map.
            "annotations": {k: annotations[k] for k in nodes.LOCK_ANNOTATIONS if k in annotations}
            if meta.get("annotations") is not None
            else None,
        },
        "spec": {"unschedulable": spec.get("unschedulable"), "taints": spec.get("taints")},
        "status": {
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "lastTransitionTime")}
                for c in status.get("conditions") or []
            ],
            # What the room check (pitstop.pool.room) counts on.
            "allocatable": {
                k: v
                for k, v in (status.get("allocatable") or {}).items()
                if k in resources.RESOURCES
            },
        },
    }


def slim_pdb(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the drain reads of a PodDisruptionBudget: whom it covers and what it
    allows now (the API server's own figures, kept by the disruption controller and
    by every accepted eviction)."""
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    return {
        "metadata": {
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "generation": meta.get("generation"),
        },
        "spec": {"selector": spec.get("selector")},
        "status": {
            "observedGeneration": status.get("observedGeneration"),
            "disruptionsAllowed": status.get("disruptionsAllowed", 0),
            "currentHealthy": status.get("currentHealthy", 0),
            "desiredHealthy": status.get("desiredHealthy", 0),
            "expectedPods": status.get("expectedPods", 0),
            "disruptedPods": sorted(status.get("disruptedPods") or {}),
        },
    }


class Wakers:
    """asyncio Events per node: a repair waits on its node's, watch handlers set it.
    Kept in insertion order (a dict, not a set of addresses), so who is woken first
    never depends on memory layout (the simulation replays a seed exactly)."""

    def __init__(self) -> None:
        self._events: dict[str, dict[asyncio.Event, None]] = defaultdict(dict)

    def register(self, node: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events[node][event] = None
        return event

    def unregister(self, node: str, event: asyncio.Event) -> None:
        self._events[node].pop(event, None)
        if not self._events[node]:
            del self._events[node]

    def nodes(self) -> list[str]:
        """The nodes someone waits on (the nodes of the running repairs)."""
        return list(self._events)

    def wake(self, node: str | None) -> None:
        if node is None:
            return
        for event in self._events.get(node, ()):
            event.set()


class Waiters:
    """asyncio Events of everyone waiting for one kind of change (room in a pool,
    the inputs of the policies, the profiles), in insertion order as Wakers."""

    def __init__(self) -> None:
        self._events: dict[asyncio.Event, None] = {}

    def register(self, event: asyncio.Event | None = None) -> asyncio.Event:
        event = event or asyncio.Event()
        self._events[event] = None
        return event

    def unregister(self, event: asyncio.Event) -> None:
        self._events.pop(event, None)

    def wake(self) -> None:
        for event in self._events:
            event.set()


@dataclass
class Wakeups:
    """Who waits for what the watches see, and the nodes this run holds: one per
    operator run, in kopf's memo (`wakeups(memo)`; pitstop.registry makes it), so
    two runs in one process, or two tests, never wake each other's waiters."""

    nodes: Wakers = field(default_factory=Wakers)
    """Per node: its repair's daemon. The watch handlers wake it."""
    capacity: Waiters = field(default_factory=Waiters)
    """NodeRepairs waiting for room in their pool."""
    policies: Waiters = field(default_factory=Waiters)
    """Policy daemons."""
    profiles: Waiters = field(default_factory=Waiters)
    """The InstanceProfile status writer, woken by profile events."""
    under_repair: set[str] = field(default_factory=set)
    """Nodes this run holds for a repair, known before the node's watch event
    arrives (so the serving-gate keeper never reopens a gate we are closing)."""


MEMO_WAKEUPS = "wakeups"
"""Key of the run's Wakeups in kopf's operator memo (and so in every object's)."""


def wakeups(memo: Mapping[str, Any]) -> Wakeups:
    """This operator run's Wakeups, from any handler's memo."""
    return cast(Wakeups, memo[MEMO_WAKEUPS])


@on_the_loop(kopf.index("pods"))
def pods_by_node(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    node = body.get("spec", {}).get("nodeName")
    return {node: slim_pod(body)} if node else None


def slice_readiness(
    body: Mapping[str, Any], into: dict[str, bool] | None = None
) -> dict[str, bool]:
    """namespace/pod → ready, for every endpoint of an EndpointSlice that targets a
    pod (a pod behind several Services appears once per slice; it is routed if any
    says ready; a missing condition counts as ready, as consumers read it). `into`
    gathers several slices."""
    ns = body.get("metadata", {}).get("namespace")
    found: dict[str, bool] = {} if into is None else into
    for ep in body.get("endpoints") or []:
        ref = ep.get("targetRef") or {}
        if ref.get("kind") == "Pod":
            key = f"{ref.get('namespace') or ns}/{ref.get('name')}"
            ready = (ep.get("conditions") or {}).get("ready")
            found[key] = found.get(key, False) or ready is not False
    return found


@on_the_loop(kopf.index("discovery.k8s.io", "v1", "endpointslices"))
def endpoints_by_pod(body: kopf.Body, **_: Any) -> dict[str, bool]:
    """namespace/pod → ready, as the watch last showed each slice (it may lag: the
    repair confirms a deregistration with a fresh read, Observe.confirm_deregistered)."""
    return slice_readiness(body)


@on_the_loop(kopf.index("nodes"))
def nodes_by_name(body: kopf.Body, name: str, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: slim_node(body)}


@on_the_loop(kopf.index(C.GROUP, C.VERSION, C.NODEREPAIR_PLURAL))
def repairs_by_node(
    body: kopf.Body, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, dict[str, Any]] | None:
    node = spec.get("nodeName")
    if not node:
        return None
    return {
        node: {
            "name": name,
            "phase": status.get("phase"),
            "deleting": body.get("metadata", {}).get("deletionTimestamp") is not None,
            "created": body.get("metadata", {}).get("creationTimestamp"),
            "policy": (body.get("metadata", {}).get("labels") or {}).get(C.LABEL_POLICY),
            "dryRun": bool(spec.get("dryRun")),
            "onFailure": spec.get("onFailure"),  # a Failed holder may still give back
            "reason": spec.get("reason"),  # for a policy's notifications
            "message": status.get("message"),
        }
    }


@on_the_loop(kopf.index("policy", "v1", "poddisruptionbudgets"))
def pdbs_by_namespace(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[str | None, dict[str, Any]]:
    return {namespace: slim_pdb(body)}


@on_the_loop(kopf.on.event("policy", "v1", "poddisruptionbudgets"))
def wake_on_pdb(
    body: kopf.Body, memo: kopf.Memo, pods_by_node: kopf.Index[str, Any], **_: Any
) -> None:
    """A budget changed (an eviction took a disruption, a replacement gave one back):
    wake the repairs (dry runs too, for their plan) whose nodes hold pods it covers."""
    waiting = wakeups(memo).nodes
    for node in waiting.nodes():
        if any(selectors.pdb_covers(body, p) for p in pods_by_node.get(node, ())):
            waiting.wake(node)


@on_the_loop(kopf.on.event("discovery.k8s.io", "v1", "endpointslices"))
def wake_on_endpoints(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    waiting = wakeups(memo).nodes
    for ep in body.get("endpoints") or []:
        waiting.wake(ep.get("nodeName"))


@on_the_loop(kopf.on.event("nodes"))
def wake_on_node(name: str, memo: kopf.Memo, **_: Any) -> None:
    w = wakeups(memo)
    w.nodes.wake(name)
    w.policies.wake()  # pools are made of nodes
    w.capacity.wake()  # availability may have changed


def wake_on_room(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A pod gone or finished frees room on its node: the repairs waiting for room
    (and so for any capacity) check again. A pod that arrives only takes room, and
    its own node's repair is woken by the serving-gate keeper (instances.serving
    on_pod). Called for every pod event by pitstop.handlers.on_pod_event."""
    if not body.get("spec", {}).get("nodeName"):
        return
    phase = body.get("status", {}).get("phase")
    if type == "DELETED" or phase in ("Succeeded", "Failed"):
        wakeups(memo).capacity.wake()


@on_the_loop(kopf.on.event(C.GROUP, C.VERSION, C.NODEREPAIR_PLURAL))
def wake_on_repair(spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> None:
    # A repair that finishes or goes away frees the node, and room in its pool.
    w = wakeups(memo)
    w.nodes.wake(spec.get("nodeName"))
    w.policies.wake()
    w.capacity.wake()


@on_the_loop(kopf.on.event(C.GROUP, C.VERSION, C.REPAIRPOLICY_PLURAL))
def wake_on_policy(memo: kopf.Memo, **_: Any) -> None:
    w = wakeups(memo)
    w.policies.wake()
    w.capacity.wake()


async def nap(waker: asyncio.Event, stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Sleeps until `waker` is set, the daemon is stopped, or `seconds` pass."""
    woken = asyncio.ensure_future(waker.wait())
    halted = asyncio.ensure_future(_stopped(stopped))
    try:
        await asyncio.wait({woken, halted}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        halted.cancel()


async def _stopped(stopped: kopf.DaemonStopped) -> None:
    await stopped.wait()


def one(store: kopf.Store[Any] | None) -> Any:
    """The single value an index keeps under a unique key (e.g. a node by name)."""
    for value in store or ():
        return value
    return None
