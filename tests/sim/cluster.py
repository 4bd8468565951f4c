"""The model cluster: what the API server stores and what the controllers and
kubelets around it do, reduced to what a drain meets.

- nodes of one pool, their Ready and KernelDeadlock conditions;
- apps (ReplicaSets): pods that are scheduled only onto schedulable, untainted
  nodes, start after a delay, turn Ready when their containers are up and their
  readiness gates True, and terminate after their grace period when evicted;
- a runtime in every pod: tasks start only while it carries no drain signal (and,
  for a sync pod, only while it is a ready endpoint: requests come by routing), and
  it keeps the in-flight annotation equal to its count;
- EndpointSlices that follow pod readiness only when the endpoints controller gets
  round to it (random lag), and for some Services never (they publish not-ready
  addresses: routing ignores readiness);
- PodDisruptionBudgets whose status the disruption controller recomputes late, so
  a budget refills only once replacements are Ready and it has looked again.

Time is the simulation's clock (seconds, float). Every change bumps the object's
resourceVersion and is handed to the listeners (the operator's watch streams)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pitstop import constants as C
from tests.sim.loop import EPOCH

NS = "fn"
POOL_LABELS = {"pool": "a"}
TAINT_KEY = C.TAINT_MAINTENANCE


def clone(x: Any) -> Any:
    """A deep copy of JSON-like data (copy.deepcopy is slow, and needs no memo here)."""
    if type(x) is dict:
        return {k: clone(v) for k, v in x.items()}
    if type(x) is list:
        return [clone(v) for v in x]
    return x


def stamp(t: float) -> str:
    return (EPOCH + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class App:
    name: str
    replicas: int
    sync: bool
    gated: bool
    labelled: bool
    """Carries the pitstop.dev/instance-type label (else its kind is inferred)."""
    routes_unready: bool
    """Its Service publishes not-ready addresses: a closed gate never leaves routing."""
    pdb: dict[str, Any] | None
    """The PDB spec (minAvailable or maxUnavailable), if it has one."""
    grace: int
    task_rate: float


@dataclass
class Pod:
    name: str
    app: App
    uid: str
    created: float
    node: str | None = None
    start_at: float | None = None
    """When its containers are up (bound and started)."""
    deleting_at: float | None = None
    gone_at: float | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    serving: str | None = None
    serving_reason: str = ""
    serving_message: str = ""
    serving_since: str | None = None
    """The serving condition's lastTransitionTime, as its writer sent it."""
    ready: bool = False
    ready_ltt: float = 0.0
    gate_closed_at: float | None = None
    unmarked_at: float | None = None
    """When a give-back last took its drain signal off."""
    tasks: int = 0
    rv: int = 0

    @property
    def key(self) -> str:
        return f"{NS}/{self.name}"

    def running(self, now: float) -> bool:
        return self.node is not None and self.start_at is not None and now >= self.start_at

    def body(self) -> dict[str, Any]:
        labels = {"app": self.app.name}
        if self.app.labelled:
            labels[C.LABEL_INSTANCE_TYPE] = C.INSTANCE_SYNC if self.app.sync else C.INSTANCE_ASYNC
        meta: dict[str, Any] = {
            "namespace": NS,
            "name": self.name,
            "uid": self.uid,
            "resourceVersion": str(self.rv),
            "labels": labels,
            "annotations": dict(self.annotations),
            "ownerReferences": [{"kind": "ReplicaSet", "name": self.app.name}],
            "creationTimestamp": stamp(self.created),
        }
        if self.deleting_at is not None:
            meta["deletionTimestamp"] = stamp(self.deleting_at)
        conds: list[dict[str, Any]] = [
            {
                "type": "Ready",
                "status": "True" if self.ready else "False",
                "lastTransitionTime": stamp(self.ready_ltt),
            }
        ]
        if self.serving is not None:
            cond = {"type": C.CONDITION_SERVING, "status": self.serving}
            cond.update(reason=self.serving_reason, message=self.serving_message)
            if self.serving_since is not None:
                cond["lastTransitionTime"] = self.serving_since
            conds.append(cond)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "nodeName": self.node,
                "readinessGates": [{"conditionType": C.CONDITION_SERVING}]
                if self.app.gated
                else None,
                "containers": [{"name": "fn"}],
                "terminationGracePeriodSeconds": self.app.grace,
            },
            "status": {
                "phase": "Running" if self.start_at is not None else "Pending",
                "conditions": conds,
            },
        }


Listener = Callable[[str, str, dict[str, Any] | None], None]
"""(resource, key, body or None when deleted)"""

RESOURCES = ("nodes", "pods", "endpointslices", "pdbs", "noderepairs", "repairpolicies")


class Cluster:
    """The API server's store plus the controllers that change it on their own."""

    def __init__(self, rng: random.Random, nodes: int, apps: int) -> None:
        self.clock: Callable[[], float] = lambda: 0.0
        self.log: Callable[[str], None] = lambda line: None
        self.rv = 0
        self.uid = 0
        self.listeners: list[Listener] = []
        self.nodes: dict[str, dict[str, Any]] = {}
        self.apps: dict[str, App] = {}
        self.pods: dict[str, Pod] = {}
        self.slices: dict[str, dict[str, bool]] = {}
        """Per sync app: pod name → ready, as the endpoints controller last published."""
        self.slice_rv: dict[str, int] = {}
        self.pdbs: dict[str, dict[str, Any]] = {}
        self.repairs: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.serial = 0
        for n in range(nodes):
            self._add_node(f"node-{n}", annotated=rng.random() < 0.7)
        for a in range(apps):
            self._add_app(rng, f"app{a}")
        # Start settled: every pod placed, Ready, routed; budgets computed.
        for pod in list(self.pods.values()):
            self._bind(rng, pod)
            pod.start_at = 0.0
            if pod.app.gated:
                pod.serving, pod.serving_reason = "True", "NodeInService"
                pod.serving_since = stamp(0)
            self._refresh_ready(pod)
        for app in self.apps.values():
            if app.sync:
                self._sync_slice(app)
            if app.pdb is not None:
                self._sync_pdb(app)

    # --- plumbing ---

    @property
    def now(self) -> float:
        return self.clock()

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def next_uid(self) -> str:
        self.uid += 1
        return f"uid-{self.uid}"

    def emit(self, resource: str, key: str) -> None:
        if not self.listeners:
            return
        body = self.body(resource, key)
        for listen in self.listeners:
            # A pod's body is made afresh; the others are the store's own.
            listen(resource, key, body if resource == "pods" else clone(body))

    def body(self, resource: str, key: str) -> dict[str, Any] | None:
        """The object as the API server would serve it now (None: it does not exist)."""
        if resource == "nodes":
            return self.nodes.get(key)
        if resource == "pods":
            pod = self.pods.get(key.split("/", 1)[1])
            return pod.body() if pod is not None else None
        if resource == "endpointslices":
            app = self.apps[key.split("/", 1)[1]]
            return self._slice_body(app)
        if resource == "pdbs":
            return self.pdbs.get(key.split("/", 1)[1])
        if resource == "noderepairs":
            return self.repairs.get(key)
        return self.policies.get(key)

    def keys(self, resource: str) -> list[str]:
        if resource == "nodes":
            return list(self.nodes)
        if resource == "pods":
            return [p.key for p in self.pods.values()]
        if resource == "endpointslices":
            return [f"{NS}/{a}" for a in self.slices]
        if resource == "pdbs":
            return [f"{NS}/{n}" for n in self.pdbs]
        if resource == "noderepairs":
            return list(self.repairs)
        return list(self.policies)

    def touch_pod(self, pod: Pod) -> None:
        pod.rv = self.next_rv()
        self.emit("pods", pod.key)

    def touch_node(self, name: str) -> None:
        self.nodes[name]["metadata"]["resourceVersion"] = str(self.next_rv())
        self.emit("nodes", name)

    def touch_repair(self, name: str) -> None:
        self.repairs[name]["metadata"]["resourceVersion"] = str(self.next_rv())
        self.emit("noderepairs", name)

    # --- nodes ---

    def _add_node(self, name: str, annotated: bool) -> None:
        meta: dict[str, Any] = {
            "name": name,
            "uid": self.next_uid(),
            "resourceVersion": str(self.next_rv()),
            "labels": {**POOL_LABELS, "kubernetes.io/hostname": name},
        }
        if annotated:
            meta["annotations"] = {"node.alpha.kubernetes.io/ttl": "0"}
        self.nodes[name] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": meta,
            "spec": {},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": stamp(0)},
                    {"type": "KernelDeadlock", "status": "False", "lastTransitionTime": stamp(0)},
                ],
                # kwok's default: the room check (pitstop.pool.room) finds room on
                # every schedulable node, as the simulated scheduler does.
                "allocatable": {"cpu": "1k", "memory": "1Ti", "pods": "1M"},
            },
        }

    def set_condition(self, node: str, type_: str, status: str) -> None:
        for c in self.nodes[node]["status"]["conditions"]:
            if c["type"] == type_ and c["status"] != status:
                c["status"], c["lastTransitionTime"] = status, stamp(self.now)
                self.log(f"node {node}: {type_}={status}")
                self.touch_node(node)

    def condition(self, node: str, type_: str) -> str | None:
        for c in self.nodes[node]["status"]["conditions"]:
            if c["type"] == type_:
                return str(c["status"])
        return None

    def lock(self, node: str) -> str | None:
        return (self.nodes[node]["metadata"].get("annotations") or {}).get(C.ANNOTATION_REPAIR)

    def tainted(self, node: str) -> bool:
        return any(t.get("key") == TAINT_KEY for t in self.nodes[node]["spec"].get("taints") or [])

    def cordoned(self, node: str) -> bool:
        return bool(self.nodes[node]["spec"].get("unschedulable")) and self.tainted(node)

    def schedulable(self, node: str) -> bool:
        spec = self.nodes[node]["spec"]
        return (
            not spec.get("unschedulable")
            and not spec.get("taints")
            and self.condition(node, "Ready") == "True"
        )

    def available(self, node: str) -> bool:
        """DESIGN's pool arithmetic: Ready and schedulable."""
        return self.condition(node, "Ready") == "True" and not self.nodes[node]["spec"].get(
            "unschedulable"
        )

    # --- apps, pods, the runtime ---

    def _add_app(self, rng: random.Random, name: str) -> None:
        sync = rng.random() < 0.6
        replicas = rng.randint(2, 5)
        pdb = None
        if rng.random() < 0.7:
            if rng.random() < 0.5:
                pdb = {"maxUnavailable": 1}
            else:
                pdb = {"minAvailable": rng.randint(1, replicas - 1)}
        app = App(
            name=name,
            replicas=replicas,
            sync=sync,
            gated=sync and rng.random() < 0.8,
            labelled=rng.random() < 0.5,
            routes_unready=sync and rng.random() < 0.15,
            pdb=pdb,
            grace=rng.choice([1, 5, 30]),
            task_rate=rng.choice([0.05, 0.15, 0.3]),
        )
        self.apps[name] = app
        if sync:
            self.slices[name] = {}
            self.slice_rv[name] = self.next_rv()
        if pdb is not None:
            self.pdbs[name] = {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {
                    "namespace": NS,
                    "name": name,
                    "generation": 1,
                    "resourceVersion": str(self.next_rv()),
                },
                "spec": {**pdb, "selector": {"matchLabels": {"app": name}}},
                "status": {"observedGeneration": 0, "disruptionsAllowed": 0},
            }
        for _ in range(replicas):
            self._new_pod(app)

    def _new_pod(self, app: App) -> Pod:
        self.serial += 1
        pod = Pod(name=f"{app.name}-{self.serial}", app=app, uid=self.next_uid(), created=self.now)
        pod.rv = self.next_rv()
        self.pods[pod.name] = pod
        return pod

    def _bind(self, rng: random.Random, pod: Pod) -> bool:
        fits = [n for n in self.nodes if self.schedulable(n)]
        if not fits:
            return False
        pod.node = rng.choice(fits)
        return True

    def _refresh_ready(self, pod: Pod) -> bool:
        ready = (
            pod.running(self.now)
            and pod.deleting_at is None
            and (not pod.app.gated or pod.serving == "True")
        )
        if ready != pod.ready:
            pod.ready, pod.ready_ltt = ready, self.now
            return True
        return False

    def routed(self, pod: Pod) -> bool:
        """A ready endpoint in its Service's EndpointSlice, as published now."""
        return pod.app.sync and self.slices[pod.app.name].get(pod.name, False)

    def delete_pod(self, pod: Pod, grace: int | None) -> None:
        if pod.deleting_at is not None:
            return
        pod.deleting_at = self.now
        pod.gone_at = self.now + (pod.app.grace if grace is None else grace)
        if pod.start_at is None:
            pod.gone_at = self.now
        self._refresh_ready(pod)
        self.touch_pod(pod)

    # --- the controllers, one round each (called once per simulation step) ---

    def tick(self, rng: random.Random, busy: bool) -> None:
        for pod in list(self.pods.values()):
            changed = False
            if pod.gone_at is not None and self.now >= pod.gone_at:
                del self.pods[pod.name]
                self.emit("pods", pod.key)
                continue
            if pod.node is None and rng.random() < 0.5 and self._bind(rng, pod):
                pod.start_at = self.now + rng.uniform(1, 8)
                changed = True
            if pod.running(self.now) and pod.deleting_at is None:
                changed = self._runtime(rng, pod, busy) or changed
            changed = self._refresh_ready(pod) or changed
            if changed:
                self.touch_pod(pod)
        for app in self.apps.values():
            live = [p for p in self.pods.values() if p.app is app and p.deleting_at is None]
            for _ in range(app.replicas - len(live)):
                if rng.random() < 0.5:
                    self.emit("pods", self._new_pod(app).key)
            if app.sync and rng.random() < 0.35:
                self._sync_slice(app)
            if app.pdb is not None and rng.random() < 0.4:
                self._sync_pdb(app)

    def _runtime(self, rng: random.Random, pod: Pod, busy: bool) -> bool:
        """Tasks end at random; new ones start only while the pod carries no drain
        signal and, for a sync pod, while routing sends it requests."""
        before = pod.tasks
        pod.tasks -= sum(1 for _ in range(pod.tasks) if rng.random() < 0.15)
        takes = C.ANNOTATION_DRAINING not in pod.annotations and (
            not pod.app.sync or self.routed(pod)
        )
        if busy and takes and rng.random() < pod.app.task_rate:
            pod.tasks += 1
        if pod.tasks == before:
            return False
        pod.annotations[C.ANNOTATION_INFLIGHT] = str(pod.tasks)
        return True

    def _slice_body(self, app: App) -> dict[str, Any]:
        endpoints = []
        for name, ready in self.slices[app.name].items():
            pod = self.pods.get(name)
            endpoints.append(
                {
                    "targetRef": {"kind": "Pod", "namespace": NS, "name": name},
                    "nodeName": pod.node if pod is not None else None,
                    "conditions": {"ready": ready},
                }
            )
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "namespace": NS,
                "name": app.name,
                "resourceVersion": str(self.slice_rv[app.name]),
            },
            "endpoints": endpoints,
        }

    def _sync_slice(self, app: App) -> None:
        published = {}
        for p in self.pods.values():
            if p.app is not app or p.node is None:
                continue
            published[p.name] = p.ready or (app.routes_unready and p.deleting_at is None)
        if published != self.slices[app.name]:
            self.slices[app.name] = published
            self.slice_rv[app.name] = self.next_rv()
            self.emit("endpointslices", f"{NS}/{app.name}")

    def covering(self, pod: Pod) -> list[dict[str, Any]]:
        return [self.pdbs[pod.app.name]] if pod.app.pdb is not None else []

    def _sync_pdb(self, app: App) -> None:
        """The disruption controller: healthy pods, less those an accepted eviction
        took (until it sees them terminating, or 2 minutes pass)."""
        pdb = self.pdbs[app.name]
        status = pdb["status"]
        disrupted = dict(status.get("disruptedPods") or {})
        for name, at in list(disrupted.items()):
            pod = self.pods.get(name)
            if pod is None or pod.deleting_at is not None or self.now - at > 120:
                del disrupted[name]
        pods = [p for p in self.pods.values() if p.app is app]
        healthy = sum(1 for p in pods if p.ready and p.name not in disrupted)
        spec = pdb["spec"]
        if "minAvailable" in spec:
            desired = int(spec["minAvailable"])
        else:
            desired = max(0, app.replicas - int(spec["maxUnavailable"]))
        new = {
            "observedGeneration": 1,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": app.replicas,
            "disruptionsAllowed": max(0, healthy - desired),
            "disruptedPods": disrupted,
        }
        if new != status:
            pdb["status"] = new
            pdb["metadata"]["resourceVersion"] = str(self.next_rv())
            self.emit("pdbs", f"{NS}/{app.name}")

    # --- pitstop's resources ---

    def create_repair(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        meta = {
            **body["metadata"],
            "uid": self.next_uid(),
            "generation": 1,
            "creationTimestamp": stamp(self.now),
            "resourceVersion": str(self.next_rv()),
        }
        self.repairs[name] = {
            "apiVersion": C.API_VERSION,
            "kind": "NodeRepair",
            "metadata": meta,
            "spec": body["spec"],
        }
        self.emit("noderepairs", name)
        return self.repairs[name]

    def delete_repair(self, name: str) -> None:
        """kubectl delete: with a finalizer on, only marked for deletion."""
        r = self.repairs.get(name)
        if r is None or r["metadata"].get("deletionTimestamp"):
            return
        if r["metadata"].get("finalizers"):
            r["metadata"]["deletionTimestamp"] = stamp(self.now)
            self.touch_repair(name)
        else:
            del self.repairs[name]
            self.emit("noderepairs", name)

    def create_policy(self, name: str, spec: dict[str, Any]) -> None:
        self.policies[name] = {
            "apiVersion": C.API_VERSION,
            "kind": "RepairPolicy",
            "metadata": {
                "name": name,
                "uid": self.next_uid(),
                "generation": 1,
                "creationTimestamp": stamp(self.now),
                "resourceVersion": str(self.next_rv()),
            },
            "spec": spec,
        }
        self.emit("repairpolicies", name)
