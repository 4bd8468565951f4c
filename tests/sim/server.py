"""The API server of the model cluster, behind the seam pitstop.cluster.kube offers:
`SimKube` is the real `Kube` client with only `request` replaced, so the client's
own code (NodeChanged on a 422 of a guarded patch, the 429 of a budget and the
budgets it names, 404s) runs as against a real server.

Requests travel: each reaches the server after a random delay and its answer comes
back after another. A caller cancelled meanwhile (an operator killed mid-pass) does
not take back a request already sent: the server still applies it, as a real one
would. Injected faults: a 500 without effect, or an answer lost after the write
(the client sees a timeout although the write happened).

Writes are where invariants 1, 2, 3 and 6 are judged: at the moment the server
accepts them, against the model's truth (see tests.sim.checks)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pitstop import constants as C
from pitstop.cluster.kube import ApiError, Kube
from tests.sim.cluster import NS, Cluster, clone, stamp
from tests.unit.test_nodes import Refused, apply

if TYPE_CHECKING:
    from tests.sim.checks import Checks

REPAIRS = f"/apis/{C.GROUP}/{C.VERSION}/{C.NODEREPAIR_PLURAL}"
POLICIES = f"/apis/{C.GROUP}/{C.VERSION}/{C.REPAIRPOLICY_PLURAL}"
PODS = f"/api/v1/namespaces/{NS}/pods/"
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"


def merge(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386)."""
    if not isinstance(patch, dict):
        return clone(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


class ApiServer:
    def __init__(self, cluster: Cluster, checks: Checks) -> None:
        self.c = cluster
        self.checks = checks
        self.requests = 0

    def log(self, line: str) -> None:
        self.checks.sim.log(line)

    def handle(self, method: str, path: str, body: Any, params: Any = None) -> dict[str, Any]:
        self.requests += 1
        c = self.c
        if path == "/api/v1/pods" and method == "GET":
            return self.list_pods(dict(params or {}))
        if path.startswith("/api/v1/nodes/"):
            name = path.rsplit("/", 1)[1]
            if name not in c.nodes:
                raise ApiError(404, f'nodes "{name}" not found')
            if method == "GET":
                return clone(c.nodes[name])
            return self.patch_node(name, body)
        if path == SLICES and method == "GET":
            # A read without resourceVersion: the slices as stored now.
            slices = [c.body("endpointslices", k) for k in c.keys("endpointslices")]
            return {"kind": "EndpointSliceList", "items": [clone(b) for b in slices if b]}
        if path.startswith(PODS):
            rest = path[len(PODS) :].split("/")
            pod = c.pods.get(rest[0])
            if pod is None:
                raise ApiError(404, f'pods "{rest[0]}" not found')
            if len(rest) == 1:
                return self.patch_pod(pod.name, body)
            if rest[1] == "status":
                return self.patch_pod_status(pod.name, body)
            return self.evict(pod.name, body)
        if path == REPAIRS and method == "POST":
            name = body["metadata"]["name"]
            if name in c.repairs:
                raise ApiError(409, f'noderepairs "{name}" already exists')
            c.create_repair(body)
            self.log(f"NodeRepair {name} created by the policy for {body['spec']['nodeName']}")
            return {}
        if path.startswith(REPAIRS + "/"):
            name, *sub = path[len(REPAIRS) + 1 :].split("/")
            r = c.repairs.get(name)
            if r is None:
                raise ApiError(404, f'noderepairs "{name}" not found')
            if method == "GET":
                return clone(r)
            if sub == ["status"]:
                return self.patch_repair_status(name, body)
            return self.patch_repair_meta(name, body)
        if path.startswith(POLICIES + "/"):
            name = path[len(POLICIES) + 1 :].split("/")[0]
            p = c.policies.get(name)
            if p is None:
                raise ApiError(404, f'repairpolicies "{name}" not found')
            p["status"] = merge(p.get("status") or {}, body["status"])
            p["metadata"]["resourceVersion"] = str(c.next_rv())
            c.emit("repairpolicies", name)
            return {}
        raise ApiError(404, f"the model serves no {method} {path}")

    # --- nodes ---

    def patch_node(self, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        c = self.c
        before = c.nodes[name]
        try:
            after = apply(before, ops)
        except Refused as e:
            raise ApiError(422, f"the server rejected our request: {e}") from e
        self.checks.node_written(name, before, after)
        was, now = _lock(before), _lock(after)
        if was != now:
            cordon = after["spec"].get("unschedulable")
            self.log(f"node {name}: lock {was} -> {now}, unschedulable={cordon}")
        elif not (before["spec"].get("unschedulable")) and after["spec"].get("unschedulable"):
            self.log(f"node {name}: cordoned again by {now}")
        c.nodes[name] = after
        c.touch_node(name)
        return clone(after)

    # --- pods ---

    def list_pods(self, params: dict[str, Any]) -> dict[str, Any]:
        """A list of pods, terminating ones too; of field selectors only
        `spec.nodeName=X` is served."""
        selector = params.get("fieldSelector")
        node: str | None = None
        if selector is not None:
            field_, sep, node = str(selector).partition("=")
            if field_ != "spec.nodeName" or not sep:
                raise ApiError(400, f"the model serves no field selector {selector}")
        items = [p.body() for p in self.c.pods.values() if selector is None or p.node == node]
        return {"kind": "PodList", "items": items}

    def patch_pod(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        c = self.c
        pod = c.pods[name]
        notes = (patch.get("metadata") or {}).get("annotations") or {}
        for k, v in notes.items():
            if v is None:
                if k in pod.annotations:
                    self.log(f"pod {pod.key} on {pod.node}: {k} removed")
                    if k == C.ANNOTATION_DRAINING:
                        pod.unmarked_at = c.now
                pod.annotations.pop(k, None)
            else:
                if k == C.ANNOTATION_DRAINING and k not in pod.annotations:
                    self.log(f"pod {pod.key} on {pod.node}: drain signal ({pod.tasks} tasks)")
                    self.checks.pod_touched(pod, "drain signal")
                pod.annotations[k] = v
        c.touch_pod(pod)
        return pod.body()

    def patch_pod_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        c = self.c
        pod = c.pods[name]
        for cond in (patch.get("status") or {}).get("conditions") or []:
            if cond["type"] != C.CONDITION_SERVING:
                continue
            if cond["status"] == "False" and pod.serving != "False":
                self.checks.pod_touched(pod, "serving gate closed")
                pod.gate_closed_at = c.now
            if cond["status"] == "True":
                pod.gate_closed_at = None
            if pod.serving != cond["status"]:
                self.log(f"pod {pod.key} on {pod.node}: serving gate {cond['status']}")
            # A strategic merge keys conditions by type: the fields sent replace those
            # kept (lastTransitionTime too: the server does not stamp pod conditions).
            pod.serving = cond["status"]
            pod.serving_reason = cond.get("reason", pod.serving_reason) or ""
            pod.serving_message = cond.get("message", pod.serving_message) or ""
            pod.serving_since = cond.get("lastTransitionTime", pod.serving_since)
        c._refresh_ready(pod)
        c.touch_pod(pod)
        return pod.body()

    def evict(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """policy/v1 Eviction: pods that cannot count against a budget (not running,
        already terminating) go at once; a Ready pod takes a disruption of its
        budget, or is refused (429); an unready one goes while its budget is whole."""
        c = self.c
        pod = c.pods[name]
        grace = (body.get("deleteOptions") or {}).get("gracePeriodSeconds")
        if pod.deleting_at is not None or pod.start_at is None:
            c.delete_pod(pod, grace)
            return {}
        for pdb in c.covering(pod):
            st, pdb_name = pdb["status"], pdb["metadata"]["name"]
            if st.get("observedGeneration", 0) < pdb["metadata"]["generation"]:
                raise ApiError(429, "budget status is stale", self._refusal(pdb_name, st))
            if not pod.ready and st.get("currentHealthy", 0) >= st.get("desiredHealthy", 0):
                continue
            if st.get("disruptionsAllowed", 0) <= 0:
                raise ApiError(
                    429,
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    self._refusal(pdb_name, st),
                )
            st["disruptionsAllowed"] -= 1
            st.setdefault("disruptedPods", {})[pod.name] = c.now
            pdb["metadata"]["resourceVersion"] = str(c.next_rv())
            c.emit("pdbs", f"{NS}/{pdb_name}")
        self.log(
            f"pod {pod.key} on {pod.node} evicted ({pod.tasks} tasks, routed={c.routed(pod)},"
            f" serving={pod.serving})"
        )
        self.checks.evicted(pod)
        c.delete_pod(pod, grace)
        return {}

    @staticmethod
    def _refusal(pdb: str, st: dict[str, Any]) -> dict[str, Any]:
        message = (
            f"The disruption budget {pdb} needs {st.get('desiredHealthy', 0)} healthy pods"
            f" and has {st.get('currentHealthy', 0)} currently"
        )
        return {
            "kind": "Status",
            "code": 429,
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget", "message": message}]},
        }

    # --- NodeRepairs ---

    def patch_repair_status(self, name: str, patch: Any) -> dict[str, Any]:
        """A merge patch, or a JSON Patch (guarded by `test`s: all or nothing, 422)."""
        r = self.c.repairs[name]
        old = r.get("status") or {}
        if isinstance(patch, list):
            try:
                new = apply(r, patch).get("status") or {}
            except Refused as e:
                raise ApiError(422, f"the server rejected our request: {e}") from e
        else:
            new = merge(old, patch["status"])
        self.checks.status_written(name, old, new)
        if old.get("phase") != new.get("phase"):
            self.log(
                f"NodeRepair {name}: {old.get('phase')} -> {new.get('phase')}: {new.get('message')}"
            )
        r["status"] = new
        self.c.touch_repair(name)
        return clone(r)

    def patch_repair_meta(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        c = self.c
        r = c.repairs[name]
        r["metadata"] = merge(r["metadata"], patch.get("metadata") or {})
        if r["metadata"].get("deletionTimestamp") and not r["metadata"].get("finalizers"):
            del c.repairs[name]
            self.log(f"NodeRepair {name}: finalizer removed, gone")
            c.emit("noderepairs", name)
            self.checks.repair_gone(name, r)
            return {}
        c.touch_repair(name)
        return clone(r)


def _lock(node: dict[str, Any]) -> str | None:
    return (node["metadata"].get("annotations") or {}).get(C.ANNOTATION_REPAIR)


class Network:
    """Delays and faults of the requests, from the simulation's generator."""

    def __init__(self, rng: Callable[[], random.Random]) -> None:
        self.rng = rng
        self.faulty_until = -1.0
        """Until then (simulated time), requests fail now and then."""

    def delays(self) -> tuple[float, float]:
        rng = self.rng()
        slow = rng.random() < 0.02
        return rng.uniform(0.001, 0.02) + (rng.uniform(0.2, 2.0) if slow else 0.0), rng.uniform(
            0.001, 0.02
        )

    def fault(self, now: float) -> str | None:
        if now > self.faulty_until:
            return None
        x = self.rng().random()
        return "error" if x < 0.15 else "lost" if x < 0.3 else None


class SimKube(Kube):
    """The real client, its transport replaced by the model's API server."""

    def __init__(self, server: ApiServer, net: Network) -> None:
        super().__init__(lambda: None)  # type: ignore[arg-type,return-value]
        self.server, self.net = server, net

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: Any = None,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        sent = None if body is None else json.loads(json.dumps(body))
        there, back = self.net.delays()
        fault = self.net.fault(loop.time())
        answer: asyncio.Future[dict[str, Any]] = loop.create_future()

        def deliver(result: dict[str, Any] | BaseException) -> None:
            if answer.done():
                return  # the caller gave up (cancelled): the write stands all the same
            if fault == "lost":
                if path.startswith(REPAIRS + "/") and path.endswith("/status"):
                    self.server.checks.lost_status.add(path.split("/")[-2])
                answer.set_exception(TimeoutError("injected: the answer was lost"))
            elif isinstance(result, BaseException):
                answer.set_exception(result)
            else:
                answer.set_result(result)

        def at_server() -> None:
            result: dict[str, Any] | BaseException
            if fault == "error":
                result = ApiError(500, "injected: internal error")
            else:
                try:
                    result = self.server.handle(method, path, sent, params)
                except ApiError as e:
                    result = e
            loop.call_later(back, deliver, result)

        loop.call_later(there, at_server)
        return await answer


__all__ = ["ApiServer", "Network", "SimKube", "merge", "stamp"]
