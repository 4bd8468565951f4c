"""A drain under a PodDisruptionBudget on the real control plane, judged from
outside the operator: the API server's audit log counts the evictions it refused
(429), and one pod watch (one stream, so in etcd's order) proves that the
instances never fell below what the budget keeps."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.helpers import node_pods, pdb_settled, repair_events, untainted
from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import Repairs
from tests.e2e.watching import watching
from tests.e2e.workloads import deployment, is_ready, ready_pods

pytestmark = pytest.mark.e2e

REPLICAS = 20
MAX_UNAVAILABLE = 2
"""10 waves of 2. One busy instance holds the drain until every instance has its
drain signal, so all 20 may leave in the same pass: an operator that sent every
eviction at once had 18 refused at once, and more on each retry."""
INFLIGHT = "pitstop.dev/inflight-tasks"
DRAINING = "pitstop.dev/draining"
REFUSALS_TOLERATED = 2
"""The cap leaves the API server nothing to refuse; a refusal can only come from a
budget view that lags in the operator's favour, which the cap is built to avoid."""


def audit_evictions(cluster: Cluster, namespace: str) -> list[int]:
    """HTTP codes of the eviction requests for pods of `namespace`, in the API
    server's audit log (hack/cluster.sh logs every write at level Metadata)."""
    log = Path(cluster.kubeconfig).parent / "logs" / "audit.log"
    if not log.exists():
        pytest.skip(f"no audit log at {log} (a cluster not started by hack/cluster.sh)")
    codes = []
    for line in log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (
            ref.get("subresource") == "eviction"
            and ref.get("namespace") == namespace
            and event.get("stage") == "ResponseComplete"
        ):
            codes.append(int((event.get("responseStatus") or {}).get("code", 0)))
    return codes


class Healthy:
    """The fewest pods of the app that were Ready and not terminating at once, as one
    pod watch of the namespace saw them (what the budget protects)."""

    def __init__(self, pods: list[client.V1Pod]) -> None:
        self.state = {x.metadata.name: self._healthy(x) for x in pods}
        self.fewest = sum(self.state.values())
        self.lock = threading.Lock()

    @staticmethod
    def _healthy(pod: client.V1Pod) -> bool:
        return pod.metadata.deletion_timestamp is None and is_ready(pod)

    def on_event(self, kind: str, pod: client.V1Pod) -> None:
        with self.lock:
            if kind == "DELETED":
                self.state.pop(pod.metadata.name, None)
            else:
                self.state[pod.metadata.name] = self._healthy(pod)
            self.fewest = min(self.fewest, sum(self.state.values()))


def test_drain_under_a_pdb_evicts_at_most_what_it_allows(
    cluster: Cluster,
    namespace: str,
    pool: Any,
    repairs: Repairs,
    running_operator: Operator,
) -> None:
    p: Pool = pool(2)
    target, spare = p.names
    # Every instance on the target: the spare is cordoned until the budget is settled.
    cluster.core.patch_node(spare, {"spec": {"unschedulable": True}})
    cluster.apps.create_namespaced_deployment(namespace, deployment("fn", REPLICAS, p.selector))
    busy = ready_pods(cluster, namespace, "fn", REPLICAS)[0].metadata.name
    assert len(node_pods(cluster, namespace, target)) == REPLICAS
    cluster.core.patch_namespaced_pod(
        busy, namespace, {"metadata": {"annotations": {INFLIGHT: "1"}}}
    )
    body = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "fn"},
        "spec": {"maxUnavailable": MAX_UNAVAILABLE, "selector": {"matchLabels": {"app": "fn"}}},
    }
    client.PolicyV1Api(cluster.api).create_namespaced_pod_disruption_budget(namespace, body)
    pdb_settled(cluster, namespace, "fn", healthy=REPLICAS, allowed=MAX_UNAVAILABLE)
    cluster.core.patch_node(spare, {"spec": {"unschedulable": False}})
    untainted(cluster, p)

    listed = cluster.core.list_namespaced_pod(namespace, label_selector="app=fn")
    healthy = Healthy(listed.items)
    with watching(
        cluster.core.list_namespaced_pod,
        namespace,
        since=listed.metadata.resource_version,
        on_event=healthy.on_event,
        label_selector="app=fn",
    ):
        name = repairs.create(target)
        repairs.wait_phase(name, "WaitingForTasks", timeout=30)
        wait_until(
            "the drain signal on every instance",
            lambda: all(
                DRAINING in (x.metadata.annotations or {})
                for x in node_pods(cluster, namespace, target)
            ),
        )
        assert audit_evictions(cluster, namespace) == [], "nothing evicted while one is busy"
        # The last task ends: every instance may leave now, the budget lets 2 at a time.
        cluster.core.patch_namespaced_pod(
            busy, namespace, {"metadata": {"annotations": {INFLIGHT: "0"}}}
        )
        repairs.wait_phase(name, "Repairing", timeout=120)
        ready_pods(cluster, namespace, "fn", REPLICAS)  # the last replacements, seen too

    assert node_pods(cluster, namespace, target) == []
    codes = audit_evictions(cluster, namespace)
    refused = codes.count(429)
    assert codes.count(201) == REPLICAS, codes
    assert refused <= REFUSALS_TOLERATED, f"{refused} evictions refused with 429: {codes}"
    assert healthy.fewest >= REPLICAS - MAX_UNAVAILABLE, (
        f"only {healthy.fewest} healthy instances at once: the budget keeps"
        f" {REPLICAS - MAX_UNAVAILABLE}"
    )
    # The budget paced the evictions, as it was made to: said once, not once per pod
    # or per wave, and as Normal, not a Warning (issue 22).
    paced = wait_until("the pacing said", lambda: repair_events(cluster, name, "EvictionsPaced"))
    assert len(paced) == 1, [e.message for e in paced]
    assert paced[0].type == "Normal" and f"{namespace}/fn" in (paced[0].message or "")
    warnings = [e for e in repair_events(cluster, name) if e.type == "Warning"]
    assert warnings == [], [(e.reason, e.message) for e in warnings]
