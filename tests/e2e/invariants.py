"""Invariants 1-6 of DESIGN.md, checked continuously from outside the operator, from
gap-aware watches (tests/e2e/listwatch.py) on one namespace's pods and EndpointSlices,
one pool's nodes, and every NodeRepair of the pool.

One stream, judged at once:
- inv. 1: a pod turns terminating (evicted) while its in-flight annotation is above 0;
- inv. 2: a gated pod's endpoint goes from ready straight to terminating or away
  (evicted while routed: it never left the ready endpoints first);
- inv. 3: a locked node that is not both cordoned and tainted (left the repair's hold);
- inv. 5: two active repairs of one node, or more active repairs in the pool than
  `max_active`; fewer available nodes than `min_available` while every node is Ready;
- inv. 6: a pod's drain signal rewritten with another time (done twice).

Across streams, ordered by resourceVersion (one etcd: its revision orders every write),
judged as soon as the other stream has caught up with that resourceVersion:
- inv. 3: every pod touched (drain signal, gate closed, evicted) on a node that was
  cordoned, tainted and locked at that moment; every lock released only after its
  repair had Verified=True, or was deleted, or Failed/Aborted.

At the end (`final`): inv. 4, every node free of cordon, taint and lock, and every
repair Succeeded (those not force-deleted); inv. 9, no surviving pod keeps a mark of
pitstop's (drain signal, closed serving gate) on a node no repair holds
(`marks_left`, also for e2e tests to call after a repair ends or is deleted).

A transition that happened while a watch was down is only seen through the re-list's
diff; where that hides the moment that matters (a pod evicted, an endpoint dropped, a
lock taken or released, a repair's phase changed) it is counted as `uncovered`, which
fails the run just like a break: a checker never passes for what it could not see."""

from __future__ import annotations

import bisect
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from tests.e2e.listwatch import ListWatch, rv_of

DRAINING = "pitstop.dev/draining"
INFLIGHT = "pitstop.dev/inflight-tasks"
LOCK = "pitstop.dev/repair"
TAINT = "pitstop.dev/maintenance"
GATE = "pitstop.dev/serving"
FINAL = ("Succeeded", "Failed", "Aborted")


@dataclass(frozen=True)
class NodeState:
    rv: int
    unschedulable: bool
    tainted: bool
    lock: str | None
    ready: bool

    @property
    def held(self) -> bool:
        return self.unschedulable and self.tainted and self.lock is not None


def node_state(obj: dict[str, Any]) -> NodeState:
    spec, meta = obj.get("spec") or {}, obj.get("metadata") or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    return NodeState(
        rv=rv_of(obj),
        unschedulable=bool(spec.get("unschedulable")),
        tainted=any(t.get("key") == TAINT for t in spec.get("taints") or []),
        lock=(meta.get("annotations") or {}).get(LOCK) or None,
        ready=any(c["type"] == "Ready" and c["status"] == "True" for c in conditions),
    )


def phase_of(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def is_active(phase: str | None) -> bool:
    """Past Pending and not finished (DESIGN.md)."""
    return phase not in (None, "Pending", *FINAL)


def verified(obj: dict[str, Any]) -> bool:
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Verified" and c["status"] == "True" for c in conds)


def leftover_marks(pods: Iterable[Mapping[str, Any]], held: Set[str]) -> list[str]:
    """Invariant 9: the pods (as the API gives them) that are not terminating and keep
    the drain signal or a closed serving gate although no repair holds their node
    (`held`: the nodes a repair holds). Every repair that ended or was deleted must
    have unmarked what it marked."""
    problems = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        if meta.get("deletionTimestamp") or node in held:
            continue
        marks = []
        if DRAINING in (meta.get("annotations") or {}):
            marks.append("drain signal")
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == GATE and c.get("status") == "False" for c in conditions):
            marks.append("closed serving gate")
        if marks:
            problems.append(
                f"inv9: {meta.get('namespace')}/{meta.get('name')} on {node} keeps its"
                f" {' and '.join(marks)}, and no repair holds the node"
            )
    return problems


def marks_left(core: client.CoreV1Api, namespace: str) -> list[str]:
    """`leftover_marks` of the namespace's pods now; a node holds a repair while its
    lock names one (an active repair, or a Failed one that keeps it cordoned)."""
    held = {
        n.metadata.name for n in core.list_node().items if (n.metadata.annotations or {}).get(LOCK)
    }
    pods = core.list_namespaced_pod(namespace).items
    return leftover_marks([core.api_client.sanitize_for_serialization(p) for p in pods], held)


@dataclass
class Monitor:
    """Start with `start()`, read `breaks` and `uncovered` at any time, `stop()`, then
    `final()`. `max_active`/`min_available` are the pool's limits (the policy's)."""

    api: client.ApiClient
    namespace: str
    pool_selector: str
    nodes: set[str]
    max_active: int
    min_available: int
    service: str | None = None
    breaks: list[str] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)
    checks: Counter[str] = field(default_factory=Counter)
    evictions: int = 0
    watches: list[ListWatch] = field(default_factory=list)
    # what the streams showed, per object
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    slices: dict[str, dict[str, str]] = field(default_factory=dict)
    """slice → pod → ready | unready | terminating"""
    gated: set[str] = field(default_factory=set)
    """pods that declare the serving gate"""
    node_history: dict[str, list[NodeState]] = field(default_factory=lambda: defaultdict(list))
    repairs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ended_rv: dict[str, int] = field(default_factory=dict)
    """repair → resourceVersion at which it was seen Verified, deleting, gone, or final"""
    ended_unseen: set[str] = field(default_factory=set)
    """repairs whose end only a re-list showed: `ended_rv` is then an upper bound"""
    deleted: set[str] = field(default_factory=set)
    _touches: list[tuple[int, str, str, str]] = field(default_factory=list)
    """(rv, pod, node, what), waiting for the node stream to catch up"""
    _releases: list[tuple[int, str, str]] = field(default_factory=list)
    """(rv, node, repair), waiting for the repair stream to catch up"""
    blind: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    """node → resourceVersion ranges in which its lock or cordon changed unseen"""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Monitor:
        core = client.CoreV1Api(self.api)
        custom = client.CustomObjectsApi(self.api)
        discovery = client.DiscoveryV1Api(self.api)
        self.watches = [
            ListWatch(
                "nodes",
                core.list_node,
                self._on_node,
                kwargs={"label_selector": self.pool_selector},
            ),
            ListWatch(
                "noderepairs",
                custom.list_cluster_custom_object,
                self._on_repair,
                args=("pitstop.dev", "v1alpha1", "noderepairs"),
            ),
            ListWatch("pods", core.list_namespaced_pod, self._on_pod, args=(self.namespace,)),
        ]
        if self.service:
            self.watches.append(
                ListWatch(
                    "endpointslices",
                    discovery.list_namespaced_endpoint_slice,
                    self._on_slice,
                    args=(self.namespace,),
                    kwargs={"label_selector": f"kubernetes.io/service-name={self.service}"},
                )
            )
        for w in self.watches:
            w.start()
        for w in self.watches:
            if not w.listed.wait(60):
                raise AssertionError(f"the {w.name} watch never listed: {w.errors[-3:]}")
        return self

    def stop(self) -> None:
        for w in self.watches:
            w.stop()

    def stream(self, name: str) -> ListWatch:
        return next(w for w in self.watches if w.name == name)

    # --- nodes ---

    def _on_node(
        self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None, resynced: bool
    ) -> None:
        name = obj["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                return
            state = node_state(obj)
            history = self.node_history[name]
            before = history[-1] if history else None
            history.append(state)
            if (
                resynced
                and before is not None
                and (before.lock, before.held) != (state.lock, state.held)
            ):
                # when exactly is unknown: judgements that fall in between are uncovered
                self.blind[name].append((before.rv, state.rv))
            self.checks["inv3 node held while locked"] += 1
            if state.lock is not None and not state.held:
                self.breaks.append(
                    f"inv3/4: {name} locked by {state.lock} but not cordoned+tainted: {state}"
                )
            if before is not None and before.lock is not None and state.lock != before.lock:
                self._releases.append((state.rv, name, before.lock))
            self._check_available()
            self._judge()

    def _check_available(self) -> None:
        latest = [h[-1] for h in self.node_history.values() if h]
        if len(latest) < len(self.nodes) or not all(s.ready for s in latest):
            return  # a node not Ready (an outage) takes availability away, not a repair
        self.checks["inv5 minAvailable"] += 1
        available = sum(1 for s in latest if not s.unschedulable)
        if available < self.min_available:
            self.breaks.append(
                f"inv5: {available} available nodes < minAvailable {self.min_available}"
            )

    # --- NodeRepairs ---

    def _on_repair(
        self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None, resynced: bool
    ) -> None:
        name, node = obj["metadata"]["name"], (obj.get("spec") or {}).get("nodeName")
        if node not in self.nodes:
            return
        rv = rv_of(obj)
        with self._lock:
            was = phase_of(old or {})
            if resynced and not is_active(was) and was not in FINAL and phase_of(obj) in FINAL:
                # active and finished while blind: the pool's count then is unknown
                self.uncovered.append(
                    f"repair {name}: {kind} while blind ({phase_of(old or {})} -> {phase_of(obj)})"
                )
            if kind == "DELETED":
                self.repairs.pop(name, None)
                self.deleted.add(name)
            else:
                self.repairs[name] = obj
            deleting = obj["metadata"].get("deletionTimestamp") or phase_of(obj) in FINAL
            if name not in self.ended_rv and (kind == "DELETED" or verified(obj) or deleting):
                # Seen only through a re-list, it ended somewhere in the gap: at the
                # latest at the object's rv, or, once gone, at no rv we know.
                gone_unseen = resynced and kind == "DELETED"
                self.ended_rv[name] = sys.maxsize if gone_unseen else rv
                if resynced:
                    self.ended_unseen.add(name)
            active = [
                (n, r["spec"]["nodeName"])
                for n, r in self.repairs.items()
                if is_active(phase_of(r))
            ]
            self.checks["inv5 one active repair per node"] += 1
            per_node = Counter(n for _, n in active)
            for n, count in per_node.items():
                if count > 1:
                    self.breaks.append(
                        f"inv5: {count} active repairs on {n}: "
                        f"{sorted(a for a, m in active if m == n)}"
                    )
            self.checks["inv5 maxConcurrentRepairs"] += 1
            if len(active) > self.max_active:
                self.breaks.append(
                    f"inv5: {len(active)} active repairs > {self.max_active}: "
                    f"{sorted(a for a, _ in active)}"
                )
            self._judge()

    # --- pods and endpoints ---

    def _on_pod(
        self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None, resynced: bool
    ) -> None:
        meta, name = obj["metadata"], obj["metadata"]["name"]
        notes = meta.get("annotations") or {}
        before = self.pods.get(name)
        view = {
            "node": (obj.get("spec") or {}).get("nodeName"),
            "inflight": notes.get(INFLIGHT, "0"),
            "draining": notes.get(DRAINING),
            "terminating": meta.get("deletionTimestamp") is not None or kind == "DELETED",
            "gate": next(
                (
                    c["status"]
                    for c in (obj.get("status") or {}).get("conditions") or []
                    if c["type"] == GATE
                ),
                None,
            ),
            "rv": rv_of(obj),
        }
        gates = (obj.get("spec") or {}).get("readinessGates") or []
        with self._lock:
            if any(g.get("conditionType") == GATE for g in gates):
                self.gated.add(name)
            if kind == "DELETED":
                self.pods.pop(name, None)
            else:
                self.pods[name] = view
            if before is None:
                return
            node = view["node"] or before["node"]
            if view["terminating"] and not before["terminating"]:
                self.evictions += 1
                self.checks["inv1 no task in flight at eviction"] += 1
                if resynced and (before["inflight"] != "0" or before["draining"] is None):
                    # blind: its count may have changed before the eviction we did not see
                    self.uncovered.append(f"pod {name}: evicted while blind ({before})")
                elif before["inflight"] != "0":
                    self.breaks.append(f"inv1: {name} evicted with {before['inflight']} in flight")
                self._touch(view["rv"], name, node, "evicted")
            if view["draining"] and not before["draining"]:
                self._touch(view["rv"], name, node, "drain signal")
            if view["gate"] == "False" and before["gate"] != "False":
                self._touch(view["rv"], name, node, "gate closed")
            self.checks["inv6 drain signal set once"] += 1
            if before["draining"] and view["draining"] and before["draining"] != view["draining"]:
                self.breaks.append(
                    f"inv6: {name} drain signal rewritten "
                    f"{before['draining']} -> {view['draining']}"
                )
            self._judge()

    def _touch(self, rv: int, pod: str, node: str | None, what: str) -> None:
        if node is not None:
            self._touches.append((rv, pod, node, what))

    def _on_slice(
        self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None, resynced: bool
    ) -> None:
        name = obj["metadata"]["name"]
        now: dict[str, str] = {}
        for ep in (obj.get("endpoints") or []) if kind != "DELETED" else []:
            ref = ep.get("targetRef") or {}
            if ref.get("kind") != "Pod":
                continue
            c = ep.get("conditions") or {}
            if c.get("ready") is not False:  # nil counts as ready (the API's docs)
                now[ref["name"]] = "ready"
            else:
                now[ref["name"]] = "terminating" if c.get("terminating") else "unready"
        with self._lock:
            was = self.slices.get(name, {})
            self.slices[name] = now
            for pod, before in was.items():
                after = now.get(pod) or next(
                    (m[pod] for s, m in self.slices.items() if s != name and pod in m), "gone"
                )
                if before != "ready" or after in ("ready", "unready") or pod not in self.gated:
                    continue
                self.checks["inv2 deregistered before eviction"] += 1
                if resynced:
                    self.uncovered.append(f"endpoint of {pod}: ready -> {after} while blind")
                else:
                    self.breaks.append(f"inv2: gated {pod} went from ready to {after} (routed)")

    # --- across streams, by resourceVersion ---

    def _node_at(self, node: str, rv: int) -> NodeState | None:
        history = self.node_history.get(node) or []
        i = bisect.bisect_left([s.rv for s in history], rv)
        return history[i - 1] if i else None

    def _in_blind(self, node: str, rv: int) -> bool:
        return any(a < rv <= b for a, b in self.blind.get(node, ()))

    def _judge(self) -> None:
        nodes_rv = self.stream("nodes").rv if self.watches else 0
        repairs_rv = self.stream("noderepairs").rv if self.watches else 0
        waiting = []
        for rv, pod, node, what in self._touches:
            if rv > nodes_rv:
                waiting.append((rv, pod, node, what))
                continue
            self.checks["inv3 cordon before any instance touched"] += 1
            state = self._node_at(node, rv)
            if self._in_blind(node, rv):
                self.uncovered.append(
                    f"{pod} ({what}, rv {rv}) on {node} while its watch was blind"
                )
            elif state is None or not state.held:
                self.breaks.append(
                    f"inv3: {pod} ({what}, rv {rv}) on {node} not held by a repair: {state}"
                )
        self._touches = waiting
        pending = []
        for rv, node, repair in self._releases:
            if rv > repairs_rv:
                pending.append((rv, node, repair))
                continue
            self.checks["inv3 uncordon only after Verified"] += 1
            ended = self.ended_rv.get(repair)
            if ended is not None and self._in_blind(node, ended):
                self.uncovered.append(f"{node} released by {repair} while its watch was blind")
            elif ended is not None and ended > rv and repair in self.ended_unseen:
                by = "" if ended == sys.maxsize else f" by rv {ended}"
                self.uncovered.append(
                    f"{node} released by {repair} at rv {rv}, which ended unseen{by}"
                )
            elif ended is None or ended > rv:
                self.breaks.append(
                    f"inv3: {node} released by {repair} at rv {rv} "
                    f"before Verified or deletion ({ended})"
                )
        self._releases = pending

    # --- the end ---

    def final(self, core: client.CoreV1Api, force_deleted: set[str]) -> list[str]:
        """Invariant 4 and the outcome, read directly (the watches are stopped)."""
        problems = []
        with self._lock:
            self._judge()
            if self._touches or self._releases:
                problems.append(f"unjudged: {self._touches[:3]} {self._releases[:3]}")
        for n in core.list_node(label_selector=self.pool_selector).items:
            self.checks["inv4 node given back"] += 1
            notes = n.metadata.annotations or {}
            taints = [t.key for t in n.spec.taints or [] if t.key == TAINT]
            if n.spec.unschedulable or taints or notes.get(LOCK):
                problems.append(
                    f"inv4: {n.metadata.name} left cordoned/tainted/locked ({notes.get(LOCK)})"
                )
        self.checks["inv9 no pod left marked"] += 1
        problems.extend(marks_left(core, self.namespace))
        custom = client.CustomObjectsApi(self.api)
        for r in custom.list_cluster_custom_object("pitstop.dev", "v1alpha1", "noderepairs")[
            "items"
        ]:
            if r["spec"]["nodeName"] in self.nodes and r["metadata"]["name"] not in force_deleted:
                self.checks["repair Succeeded"] += 1
                if phase_of(r) != "Succeeded":
                    problems.append(
                        f"{r['metadata']['name']} ended {phase_of(r)}: "
                        f"{(r.get('status') or {}).get('message')}"
                    )
        for w in self.watches:
            if w.handler_errors:
                problems.append(f"the {w.name} checker failed: {w.handler_errors[:3]}")
        return problems
