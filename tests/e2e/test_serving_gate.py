"""The serving gate keeper on a real API server: a gated pod turns Ready because
pitstop writes its `pitstop.dev/serving` condition, and that condition carries what
`kubectl describe pod` and kstatus read: a reason, a message, a lastTransitionTime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.helpers import make_pool
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.repairs import Repairs
from tests.e2e.workloads import deployment, ready_endpoints, ready_pods, service

pytestmark = pytest.mark.e2e

GATE = "pitstop.dev/serving"
INFLIGHT = "pitstop.dev/inflight-tasks"


def test_an_opened_gate_says_why_and_since_when(
    cluster: Cluster, namespace: str, pool: Any, running_operator: Any
) -> None:
    p = make_pool(cluster, pool)
    start = datetime.now(UTC) - timedelta(seconds=1)  # the condition's time has seconds only
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("fn", 2, p.selector, gated=True)
    )
    pods = ready_pods(cluster, namespace, "fn", 2)
    for pod in pods:
        cond = next(c for c in pod.status.conditions if c.type == GATE)
        assert (cond.status, cond.reason) == ("True", "NodeInService"), cond
        assert cond.message == "routed: its node is not under repair", cond
        assert cond.last_transition_time is not None, cond
        assert start <= cond.last_transition_time <= datetime.now(UTC), cond


def test_a_closed_and_reopened_gate_name_the_repair(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Any
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("fn", 1, p.selector, gated=True)
    )
    service(cluster, namespace, "fn")  # routed: a sync instance, whose gate a repair closes
    (pod,) = ready_pods(cluster, namespace, "fn", 1)
    wait_until("fn routed", lambda: len(ready_endpoints(cluster, namespace, "fn")) == 1)
    # A task in flight keeps the pod on the node with its gate closed.
    cluster.core.patch_namespaced_pod(
        pod.metadata.name, namespace, {"metadata": {"annotations": {INFLIGHT: "1"}}}
    )
    name = repairs.create(node)
    repairs.wait_phase(name, "WaitingForTasks")

    def gate() -> Any:
        got = cluster.core.read_namespaced_pod(pod.metadata.name, namespace)
        return next(c for c in got.status.conditions if c.type == GATE)

    closed = gate()
    assert (closed.status, closed.reason) == ("False", "NodeRepair"), closed
    assert closed.message == f"out of routing: NodeRepair {name} drains its node", closed
    repairs.delete(name)
    wait_until("the gate reopened", lambda: gate().status == "True", timeout=30)
    reopened = gate()
    assert reopened.reason == "NodeRepairEnded", reopened
    assert reopened.message == f"routed again: NodeRepair {name} gave its node back", reopened
    assert reopened.last_transition_time >= closed.last_transition_time
