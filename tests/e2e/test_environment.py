"""The local control plane is faithful where pitstop relies on it: kwok's fake
nodes, the scheduler, the controllers (ReplicaSet, EndpointSlice, disruption,
Job, node lifecycle) and our kwok stages (readiness gates, grace periods,
finalizers, Job outcomes, fault injection). If one of these fails, every later
e2e result would be meaningless."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.workloads import deployment, is_ready, pods, ready_endpoints, service

# A gate of the test's own: pitstop (if an operator runs) opens its pitstop.dev/serving
# gate on every pod, and this test is about kwok's handling of gates, not pitstop's.
GATE = "e2e.pitstop.dev/gate"

pytestmark = pytest.mark.e2e


def set_gate(cluster: Cluster, ns: str, pod: str, status: str) -> None:
    body = {"status": {"conditions": [{"type": GATE, "status": status}]}}
    cluster.core.patch_namespaced_pod_status(pod, ns, body)


def evict(cluster: Cluster, ns: str, pod: str) -> None:
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=ns))
    cluster.core.create_namespaced_pod_eviction(pod, ns, body)


def test_fake_nodes_become_ready(cluster: Cluster, pool: Any) -> None:
    nodes: Pool = pool(2)
    for name in nodes.names:
        node = cluster.core.read_node(name)
        assert node.status.allocatable["pods"], "kwok sets allocatable"
        assert cluster.node_ready(name)


def test_deployment_pods_are_scheduled_ready_and_listed_in_endpointslices(
    cluster: Cluster, namespace: str, pool: Any
) -> None:
    nodes: Pool = pool(2)
    cluster.apps.create_namespaced_deployment(namespace, deployment("fn", 4, nodes.selector))
    service(cluster, namespace, "fn")
    running = wait_until(
        "4 ready pods",
        lambda: (
            (p := pods(cluster, namespace, "fn")) and len(p) == 4 and all(map(is_ready, p)) and p
        ),
    )
    assert {p.spec.node_name for p in running} <= set(nodes.names)
    names = {p.metadata.name for p in running}
    wait_until(
        "EndpointSlices list all pods", lambda: ready_endpoints(cluster, namespace, "fn") == names
    )


def test_readiness_gate_controls_ready_and_endpoints(
    cluster: Cluster, namespace: str, pool: Any
) -> None:
    nodes: Pool = pool(1)
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("gated", 2, nodes.selector, gated=True, gate=GATE)
    )
    service(cluster, namespace, "gated")
    running = wait_until(
        "2 running pods",
        lambda: (
            (p := pods(cluster, namespace, "gated"))
            and len(p) == 2
            and all(x.status.phase == "Running" for x in p)
            and p
        ),
    )
    time.sleep(1)  # give a wrong stage the chance to mark them Ready
    assert not any(is_ready(p) for p in pods(cluster, namespace, "gated")), "gate not yet True"
    assert ready_endpoints(cluster, namespace, "gated") == set()

    first, second = (p.metadata.name for p in running)
    set_gate(cluster, namespace, first, "True")
    wait_until(
        "gated pod Ready", lambda: is_ready(cluster.core.read_namespaced_pod(first, namespace))
    )
    wait_until("ready endpoint", lambda: ready_endpoints(cluster, namespace, "gated") == {first})
    assert not is_ready(cluster.core.read_namespaced_pod(second, namespace))

    set_gate(cluster, namespace, first, "False")
    wait_until(
        "pod leaves Ready", lambda: not is_ready(cluster.core.read_namespaced_pod(first, namespace))
    )
    wait_until(
        "endpoint not ready",
        lambda: ready_endpoints(cluster, namespace, "gated") == set(),
        timeout=10,
    )


def test_cordoned_node_receives_no_new_pods(cluster: Cluster, namespace: str, pool: Any) -> None:
    nodes: Pool = pool(2)
    cordoned, open_node = nodes.names
    cluster.core.patch_node(cordoned, {"spec": {"unschedulable": True}})
    cluster.apps.create_namespaced_deployment(namespace, deployment("fn", 6, nodes.selector))
    running = wait_until(
        "6 running pods",
        lambda: (
            (p := pods(cluster, namespace, "fn"))
            and len(p) == 6
            and all(x.status.phase == "Running" for x in p)
            and p
        ),
    )
    assert {p.spec.node_name for p in running} == {open_node}


def test_eviction_removes_pod_and_replicaset_recreates_it_elsewhere(
    cluster: Cluster, namespace: str, pool: Any
) -> None:
    nodes: Pool = pool(2)
    source, target = nodes.names
    cluster.core.patch_node(target, {"spec": {"unschedulable": True}})
    cluster.apps.create_namespaced_deployment(namespace, deployment("fn", 1, nodes.selector))
    victim = wait_until(
        "a running pod", lambda: [p for p in pods(cluster, namespace, "fn") if is_ready(p)]
    )[0]
    assert victim.spec.node_name == source
    cluster.core.patch_node(target, {"spec": {"unschedulable": False}})
    cluster.core.patch_node(source, {"spec": {"unschedulable": True}})

    evict(cluster, namespace, victim.metadata.name)

    def gone() -> bool:
        try:
            cluster.core.read_namespaced_pod(victim.metadata.name, namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_until("evicted pod deleted after its grace period", gone, timeout=15)
    replacement = wait_until(
        "replacement ready", lambda: [p for p in pods(cluster, namespace, "fn") if is_ready(p)]
    )[0]
    assert replacement.metadata.name != victim.metadata.name
    assert replacement.spec.node_name == target


def test_pdb_makes_eviction_fail_with_429(cluster: Cluster, namespace: str, pool: Any) -> None:
    nodes: Pool = pool(1)
    cluster.apps.create_namespaced_deployment(namespace, deployment("fn", 2, nodes.selector))
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "fn"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "fn"}}},
    }
    client.PolicyV1Api(cluster.api).create_namespaced_pod_disruption_budget(namespace, pdb)
    running = wait_until(
        "2 ready pods",
        lambda: (
            (p := pods(cluster, namespace, "fn")) and len(p) == 2 and all(map(is_ready, p)) and p
        ),
    )
    wait_until(
        "PDB observed",
        lambda: (
            client.PolicyV1Api(cluster.api)
            .read_namespaced_pod_disruption_budget("fn", namespace)
            .status.current_healthy
            == 2
        ),
    )
    with pytest.raises(ApiException) as refused:
        evict(cluster, namespace, running[0].metadata.name)
    assert refused.value.status == 429
    assert "disruption budget" in refused.value.body


def test_deleted_pod_honours_grace_period_and_finalizers(
    cluster: Cluster, namespace: str, pool: Any
) -> None:
    nodes: Pool = pool(1)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "finalizers": ["pitstop.dev/test"]},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "nodeSelector": nodes.selector,
            "containers": [{"name": "c", "image": "fake"}],
        },
    }
    cluster.core.create_namespaced_pod(namespace, pod)
    wait_until(
        "pod running",
        lambda: cluster.core.read_namespaced_pod("p", namespace).status.phase == "Running",
    )
    cluster.core.delete_namespaced_pod("p", namespace)
    time.sleep(3)  # past the grace period, but the finalizer holds it
    assert cluster.core.read_namespaced_pod("p", namespace).metadata.deletion_timestamp
    cluster.core.patch_namespaced_pod("p", namespace, {"metadata": {"finalizers": None}})

    def gone() -> bool:
        try:
            cluster.core.read_namespaced_pod("p", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_until("pod deleted once its finalizer is gone", gone, timeout=10)


def test_grace_period_delays_deletion(cluster: Cluster, namespace: str, pool: Any) -> None:
    nodes: Pool = pool(1)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "slow"},
        "spec": {
            "terminationGracePeriodSeconds": 3,
            "nodeSelector": nodes.selector,
            "containers": [{"name": "c", "image": "fake"}],
        },
    }
    cluster.core.create_namespaced_pod(namespace, pod)
    wait_until(
        "pod running",
        lambda: cluster.core.read_namespaced_pod("slow", namespace).status.phase == "Running",
    )
    start = time.monotonic()
    cluster.core.delete_namespaced_pod("slow", namespace)

    def gone() -> bool:
        try:
            cluster.core.read_namespaced_pod("slow", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_until("pod deleted", gone, timeout=15)
    # deletionTimestamp has one-second precision, so the wait can be up to 1 s short
    assert time.monotonic() - start >= 2.0, "the pod lives out its grace period"


@pytest.mark.parametrize(
    ("annotations", "outcome"), [({}, "Complete"), ({"sim.pitstop.dev/exit-code": "1"}, "Failed")]
)
def test_job_pods_succeed_or_fail_on_request(
    cluster: Cluster, namespace: str, pool: Any, annotations: dict[str, str], outcome: str
) -> None:
    nodes: Pool = pool(1)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "repair"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "annotations": {"sim.pitstop.dev/run-duration": "500ms", **annotations}
                },
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": nodes.selector,
                    "containers": [{"name": "c", "image": "fake"}],
                },
            },
        },
    }
    client.BatchV1Api(cluster.api).create_namespaced_job(namespace, job)

    def finished() -> str | None:
        status = client.BatchV1Api(cluster.api).read_namespaced_job("repair", namespace).status
        for c in status.conditions or []:
            if c.type in ("Complete", "Failed") and c.status == "True":
                return str(c.type)
        return None

    assert wait_until(f"job {outcome}", finished, timeout=30) == outcome


def conditions(cluster: Cluster, node: str) -> dict[str, tuple[str, str]]:
    return {
        c.type: (c.status, c.reason) for c in cluster.core.read_node(node).status.conditions or []
    }


def test_fault_injection_breaks_and_heals_a_node(cluster: Cluster, pool: Any) -> None:
    nodes: Pool = pool(2)
    not_ready, deadlocked = nodes.names
    cluster.core.patch_node(
        not_ready, {"metadata": {"annotations": {"sim.pitstop.dev/fault": "NotReady"}}}
    )
    cluster.core.patch_node(
        deadlocked, {"metadata": {"annotations": {"sim.pitstop.dev/fault": "KernelDeadlock"}}}
    )
    wait_until(
        "Ready=False",
        lambda: conditions(cluster, not_ready)["Ready"] == ("False", "SimulatedFault"),
    )
    wait_until(
        "KernelDeadlock=True",
        lambda: conditions(cluster, deadlocked).get("KernelDeadlock") == ("True", "SimulatedFault"),
    )
    assert conditions(cluster, deadlocked)["Ready"][0] == "True"
    time.sleep(2)  # a fault holds: no heartbeat wipes it
    assert conditions(cluster, not_ready)["Ready"][0] == "False"
    assert conditions(cluster, deadlocked)["KernelDeadlock"][0] == "True"

    for name in nodes.names:
        cluster.core.patch_node(
            name, {"metadata": {"annotations": {"sim.pitstop.dev/fault": None}}}
        )
    wait_until("healed Ready", lambda: conditions(cluster, not_ready)["Ready"][0] == "True")
    wait_until(
        "healed KernelDeadlock",
        lambda: conditions(cluster, deadlocked)["KernelDeadlock"][0] == "False",
    )
