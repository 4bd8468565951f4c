"""The FaaS-aware drain on the real control plane, judged by the simulated FaaS
runtime (tests/e2e/faas.py): a NodeRepair takes its node from cordon to
RepairAllowed without killing a task or routing a request to a leaving instance."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client, watch

from tests.e2e.barriers import decided_again
from tests.e2e.faas import FaasRuntime
from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import Repairs, node_markers
from tests.e2e.workloads import (
    deployment,
    pods,
    ready_endpoints,
    ready_pods,
    running_pods,
    service,
)

pytestmark = pytest.mark.e2e


def faas_pool(cluster: Cluster, namespace: str, pool: Any, nodes: int = 2) -> Pool:
    """A pool with a sync function (gated, behind a Service) and an async worker,
    spread over its nodes."""
    p: Pool = pool(nodes)
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("fn", 2 * nodes, p.selector, gated=True)
    )
    service(cluster, namespace, "fn")
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("worker", 2 * nodes, p.selector)
    )
    ready_pods(cluster, namespace, "fn", 2 * nodes)
    running_pods(cluster, namespace, "worker", 2 * nodes)
    wait_until(
        "all fn pods routed", lambda: len(ready_endpoints(cluster, namespace, "fn")) == 2 * nodes
    )
    return p


def on_node(cluster: Cluster, namespace: str, node: str) -> list[str]:
    return [
        p.metadata.name
        for p in cluster.core.list_namespaced_pod(
            namespace, field_selector=f"spec.nodeName={node}"
        ).items
    ]


def test_repair_reaches_repair_allowed_without_hurting_work(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    p = faas_pool(cluster, namespace, pool)
    target = p.names[0]
    before = sorted(on_node(cluster, namespace, target))
    assert len(before) == 4, before
    with FaasRuntime(cluster, namespace, "fn") as runtime:
        time.sleep(2)  # tasks in flight everywhere
        name = repairs.create(target)
        status = repairs.wait_phase(name, "Repairing", timeout=90)
        runtime.pause_new_tasks()
    judge = runtime.judge

    conds = {c["type"]: c for c in status["conditions"]}
    for kind in ("Cordoned", "Deregistered", "TasksDrained", "InstancesOffline", "RepairAllowed"):
        assert conds[kind]["status"] == "True", conds[kind]
        assert conds[kind]["reason"] and conds[kind]["lastTransitionTime"]
    assert status["instances"]["remaining"] == 0
    assert status["instances"]["total"] == 4, (status["instances"], before, judge.evicted)
    assert status["instances"]["sync"] == 2
    assert status["startTime"] and status["observedGeneration"] == 1 and status["message"]
    assert node_markers(cluster, target) == {"unschedulable": True, "taint": True, "lock": name}
    assert on_node(cluster, namespace, target) == []

    assert judge.tasks_done > 0 and judge.served > 0, "the runtime did work"
    assert len(judge.evicted) == 4
    assert judge.interrupted == [], "invariant 1: an instance was evicted with tasks in flight"
    assert judge.routed_when_evicted == [], "invariant 2: a sync instance was evicted while routed"
    assert judge.dropped == 0, ("routed after leaving", judge.dropped_to)

    # The controllers re-created the instances on the other node of the pool.
    replacement = ready_pods(cluster, namespace, "fn", 4)
    assert {x.spec.node_name for x in replacement} == {p.names[1]}

    printed = cluster.kubectl("get", "nr", name).stdout.split()
    assert printed[:6] == ["NAME", "NODE", "PHASE", "INSTANCES", "TASKS", "REASON"]
    assert printed[7:12] == [name, target, "Repairing", "0", "0"]


def test_judge_catches_kubectl_drain_killing_tasks(
    cluster: Cluster, namespace: str, pool: Any, running_operator: Any
) -> None:
    """The judge can fail: a plain `kubectl drain` evicts busy, routed instances."""
    p = faas_pool(cluster, namespace, pool)
    with FaasRuntime(
        cluster, namespace, "fn", take_probability=1.0, task_seconds=(5, 6)
    ) as runtime:
        time.sleep(1.5)
        cluster.kubectl(
            "drain", p.names[0], "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s"
        )
        time.sleep(1)
    assert runtime.judge.interrupted, "kubectl drain evicted busy instances"
    assert runtime.judge.routed_when_evicted, "kubectl drain evicted routed sync instances"


def test_tasks_in_flight_hold_eviction_until_they_finish(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    """Invariant 1: with a long task in flight, nothing is evicted until it is done."""
    p: Pool = pool(2)
    cluster.apps.create_namespaced_deployment(namespace, deployment("worker", 4, p.selector))
    running = running_pods(cluster, namespace, "worker", 4)
    busy = next(x.metadata.name for x in running if x.spec.node_name == p.names[0])
    cluster.core.patch_namespaced_pod(
        busy, namespace, {"metadata": {"annotations": {"pitstop.dev/inflight-tasks": "2"}}}
    )
    name = repairs.create(p.names[0])
    status = repairs.wait_phase(name, "WaitingForTasks")
    assert status["instances"]["inflightTasks"] == 2  # the operator has seen the task
    decided_again(cluster, running_operator, name)
    assert repairs.phase(name) == "WaitingForTasks"
    still = {
        x.metadata.name
        for x in pods(cluster, namespace, "worker")
        if x.spec.node_name == p.names[0]
    }
    assert busy in still, "a busy instance was evicted"
    assert all(
        x.metadata.deletion_timestamp is None
        for x in cluster.core.list_namespaced_pod(namespace).items
        if x.spec.node_name == p.names[0]
    ), "no instance of the node is evicted while one has tasks in flight"
    cluster.core.patch_namespaced_pod(
        busy, namespace, {"metadata": {"annotations": {"pitstop.dev/inflight-tasks": "0"}}}
    )
    repairs.wait_phase(name, "Repairing", timeout=30)


def test_sync_instances_leave_routing_before_eviction(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    """Invariant 2, observed directly: the node's sync instances are not ready endpoints
    any more while they still exist (held by a task in flight on a worker)."""
    p = faas_pool(cluster, namespace, pool)
    target = p.names[0]
    worker = next(
        x.metadata.name for x in pods(cluster, namespace, "worker") if x.spec.node_name == target
    )
    cluster.core.patch_namespaced_pod(
        worker, namespace, {"metadata": {"annotations": {"pitstop.dev/inflight-tasks": "1"}}}
    )
    sync_here = {
        x.metadata.name for x in pods(cluster, namespace, "fn") if x.spec.node_name == target
    }
    name = repairs.create(target)
    status = repairs.wait_phase(name, "WaitingForTasks")
    assert status["instances"]["deregistered"] == len(sync_here) == 2, (status, sync_here)
    routed = ready_endpoints(cluster, namespace, "fn")
    assert not routed & sync_here, "deregistered instances are out of the ready endpoints"
    assert len(routed) == 2, ("the other node's instances still serve", routed, sync_here)
    for pod in sync_here:
        body = cluster.core.read_namespaced_pod(pod, namespace)
        assert body.metadata.deletion_timestamp is None
        assert body.metadata.annotations["pitstop.dev/draining"]
        gate = [c for c in body.status.conditions if c.type == "pitstop.dev/serving"]
        assert gate[0].status == "False"
    cluster.core.patch_namespaced_pod(
        worker, namespace, {"metadata": {"annotations": {"pitstop.dev/inflight-tasks": "0"}}}
    )
    repairs.wait_phase(name, "Repairing", timeout=30)


def test_new_gated_pod_becomes_a_ready_endpoint(
    cluster: Cluster, namespace: str, pool: Any, running_operator: Any
) -> None:
    """Outside repairs pitstop opens the serving gate, so declaring it is all a platform does."""
    p: Pool = pool(1)
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("fn", 2, p.selector, gated=True)
    )
    service(cluster, namespace, "fn")
    ready = ready_pods(cluster, namespace, "fn", 2, timeout=30)
    wait_until(
        "ready endpoints",
        lambda: ready_endpoints(cluster, namespace, "fn") == {x.metadata.name for x in ready},
    )


def test_cordon_comes_before_any_instance_is_touched(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    """Invariant 3: the node is unschedulable, tainted and locked before the first
    instance is touched. resourceVersions come from etcd's one global revision
    counter, so they order the node's and the pods' writes."""
    p: Pool = pool(1)
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("fn", 3, p.selector, gated=True)
    )
    ready_pods(cluster, namespace, "fn", 3)
    node = p.names[0]
    core = client.CoreV1Api(cluster.api)
    node_rv = cluster.core.read_node(node).metadata.resource_version
    pod_rv = cluster.core.list_namespaced_pod(namespace).metadata.resource_version

    name = repairs.create(node)
    repairs.wait_phase(name, "Repairing", timeout=30)

    cordoned_at: list[int] = []
    for event in watch.Watch().stream(
        core.list_node,
        field_selector=f"metadata.name={node}",
        resource_version=node_rv,
        timeout_seconds=2,
    ):
        n = event["object"]
        markers = (
            n.spec.unschedulable,
            any(t.key == "pitstop.dev/maintenance" for t in n.spec.taints or []),
            (n.metadata.annotations or {}).get("pitstop.dev/repair"),
        )
        if markers == (True, True, name):
            cordoned_at.append(int(n.metadata.resource_version))
    touched_at: list[int] = []
    for event in watch.Watch().stream(
        core.list_namespaced_pod, namespace, resource_version=pod_rv, timeout_seconds=2
    ):
        pod = event["object"]
        gate = [c for c in pod.status.conditions or [] if c.type == "pitstop.dev/serving"]
        if (
            "pitstop.dev/draining" in (pod.metadata.annotations or {})
            or pod.metadata.deletion_timestamp is not None
            or (gate and gate[0].status == "False")
        ):
            touched_at.append(int(pod.metadata.resource_version))
    assert cordoned_at and touched_at, "the watches replayed the repair"
    assert min(cordoned_at) < min(touched_at), "an instance was touched before the cordon"
