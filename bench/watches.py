"""What the benchmark's own watches saw: nodes, pods and NodeRepairs, each event
stamped on arrival with one monotonic clock. Streams are read as raw JSON lines
(no model deserialisation); nothing polls."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from bench.cluster import BenchError, Cluster, log, now

GROUP, VERSION, PLURAL = "pitstop.dev", "v1alpha1", "noderepairs"
INFLIGHT = "pitstop.dev/inflight-tasks"

T = TypeVar("T")


@dataclass
class NodeSeen:
    unschedulable: bool = False
    ready: bool = False
    gone: bool = False
    flips: list[tuple[float, bool]] = field(default_factory=list)
    """(time, unschedulable) at every change of spec.unschedulable."""


@dataclass
class PodSeen:
    name: str
    node: str | None
    labels: dict[str, str]
    running: bool = False
    inflight: str | None = None
    inflight_seen: list[tuple[float, str | None]] = field(default_factory=list)
    deleting_at: float | None = None
    gone_at: float | None = None

    @property
    def live(self) -> bool:
        return self.gone_at is None

    @property
    def serving(self) -> bool:
        """Running, Ready and not terminating."""
        return self.live and self.running and self.deleting_at is None


@dataclass
class RepairSeen:
    node: str
    phase: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    """First time each phase was seen."""
    message: str = ""
    gone_at: float | None = None
    finalizer_at: float | None = None
    """First time seen with a finalizer (kopf's, which lets a deletion give the node back)."""
    history: list[str] = field(default_factory=list)
    """Every watch event: type, phase, finalizers, deletion mark (for anomalies)."""


@dataclass
class BudgetSeen:
    allowed: int | None = None
    """status.disruptionsAllowed, once the disruption controller has written it."""
    changes: list[tuple[float, int]] = field(default_factory=list)
    """(time, disruptionsAllowed) at every change."""


class World:
    """The cluster as this process's watches saw it, with arrival times."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.nodes: dict[str, NodeSeen] = {}
        self.pods: dict[str, PodSeen] = {}
        self.repairs: dict[str, RepairSeen] = {}
        self.budgets: dict[str, BudgetSeen] = {}
        self.check: Callable[[], None] = lambda: None
        """Called while waiting: raises when something we depend on died."""

    def on_node(self, t: float, kind: str, obj: dict[str, Any]) -> None:
        seen = self.nodes.setdefault(obj["metadata"]["name"], NodeSeen())
        if kind == "DELETED":
            seen.gone = True
            return
        seen.gone = False
        unschedulable = bool((obj.get("spec") or {}).get("unschedulable"))
        if unschedulable != seen.unschedulable:
            seen.flips.append((t, unschedulable))
            seen.unschedulable = unschedulable
        conditions = (obj.get("status") or {}).get("conditions") or []
        seen.ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def on_pod(self, t: float, kind: str, obj: dict[str, Any]) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        seen = self.pods.get(meta["uid"])
        if seen is None:
            seen = self.pods[meta["uid"]] = PodSeen(meta["name"], None, {})
        seen.node = (obj.get("spec") or {}).get("nodeName")
        seen.labels = meta.get("labels") or {}
        seen.running = status.get("phase") == "Running" and any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
        )
        inflight = (meta.get("annotations") or {}).get(INFLIGHT)
        if inflight != seen.inflight:
            seen.inflight = inflight
            seen.inflight_seen.append((t, inflight))
        if meta.get("deletionTimestamp") and seen.deleting_at is None:
            seen.deleting_at = t
        if kind == "DELETED":
            seen.gone_at = t
            if seen.deleting_at is None:
                seen.deleting_at = t

    def on_budget(self, t: float, kind: str, obj: dict[str, Any]) -> None:
        seen = self.budgets.setdefault(obj["metadata"]["name"], BudgetSeen())
        allowed = (obj.get("status") or {}).get("disruptionsAllowed")
        if kind != "DELETED" and allowed is not None and allowed != seen.allowed:
            seen.allowed = allowed
            seen.changes.append((t, allowed))

    def on_repair(self, t: float, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        seen = self.repairs.setdefault(name, RepairSeen(node=obj["spec"]["nodeName"]))
        status = obj.get("status") or {}
        phase = status.get("phase")
        if phase:
            seen.phase = phase
            seen.phases.setdefault(phase, t)
        seen.message = status.get("message") or ""
        meta = obj["metadata"]
        if meta.get("finalizers") and seen.finalizer_at is None:
            seen.finalizer_at = t
        seen.history.append(
            f"{t:.3f} {kind} phase={phase} finalizers={meta.get('finalizers')}"
            f" deleting={bool(meta.get('deletionTimestamp'))}"
        )
        if kind == "DELETED":
            seen.gone_at = t

    # --- queries (call with the lock held, e.g. inside wait()) ---

    def pods_on(self, node: str) -> list[PodSeen]:
        return [p for p in self.pods.values() if p.node == node and p.live]

    def serving_on(self, node: str) -> list[PodSeen]:
        return [p for p in self.pods_on(node) if p.serving]

    def count_serving(self, labels: dict[str, str]) -> int:
        return sum(
            1
            for p in self.pods.values()
            if p.serving and all(p.labels.get(k) == v for k, v in labels.items())
        )

    def first_flip(self, node: str, to: bool, after: float) -> float | None:
        for t, value in self.nodes[node].flips:
            if value == to and t >= after:
                return t
        return None

    def active_repair_on(self, node: str) -> bool:
        return any(r.node == node and r.gone_at is None for r in self.repairs.values())

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """Blocks until probe() (run under the lock at every watch event) is truthy."""
        deadline = now() + timeout
        while True:
            with self.cond:
                result = self.cond.wait_for(probe, timeout=min(1.0, max(0.0, deadline - now())))
            if result:
                return result
            self.check()
            if now() >= deadline:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


class Watcher(threading.Thread):
    """One list+watch stream, read as raw JSON lines; each event is stamped on
    arrival and handed to `handle` under the World's lock."""

    def __init__(
        self,
        name: str,
        lister: Callable[..., Any],
        handle: Callable[[float, str, dict[str, Any]], None],
        world: World,
    ) -> None:
        super().__init__(name=f"watch-{name}", daemon=True)
        self.lister = lister
        self.handle = handle
        self.world = world
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self.response: Any = None

    def run(self) -> None:
        version: str | None = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    listing = json.loads(self.lister(_preload_content=False).data)
                    version = listing["metadata"]["resourceVersion"]
                    t = now()
                    with self.world.cond:
                        for item in listing["items"]:
                            self.handle(t, "ADDED", item)
                        self.world.cond.notify_all()
                    self.synced.set()
                self.response = self.lister(
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=240,
                    _preload_content=False,
                    _request_timeout=(5, 300),
                )
                for line in iter_resp_lines(self.response):
                    if not line:
                        continue
                    t = now()
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            version = None  # too old: list again
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if kind == "BOOKMARK":
                        continue
                    with self.world.cond:
                        self.handle(t, kind, obj)
                        self.world.cond.notify_all()
            except Exception as e:
                if self.stopping.is_set():
                    return
                log(f"{self.name}: {type(e).__name__}: {e}; reconnecting")
                time.sleep(0.5)

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(Exception):
            self.response.shutdown()
        with contextlib.suppress(Exception):
            self.response.close()


def start_watches(cluster: Cluster, world: World, namespace: str) -> None:
    """Nodes, the namespace's pods and PDBs, and NodeRepairs, each on a connection of its own;
    returns once every stream has listed. The streams stop with the cluster's stack."""
    core_nodes = client.CoreV1Api(cluster.new_api())
    core_pods = client.CoreV1Api(cluster.new_api())
    custom = client.CustomObjectsApi(cluster.new_api())
    policy = client.PolicyV1Api(cluster.new_api())
    watchers = [
        Watcher("nodes", core_nodes.list_node, world.on_node, world),
        Watcher(
            "pods", lambda **kw: core_pods.list_namespaced_pod(namespace, **kw), world.on_pod, world
        ),
        Watcher(
            "pdbs",
            lambda **kw: policy.list_namespaced_pod_disruption_budget(namespace, **kw),
            world.on_budget,
            world,
        ),
        Watcher(
            "repairs",
            lambda **kw: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw),
            world.on_repair,
            world,
        ),
    ]
    for watcher in watchers:
        watcher.start()
        cluster.stack.callback(watcher.stop)
    for watcher in watchers:
        if not watcher.synced.wait(30):
            raise BenchError(f"{watcher.name} did not sync")
