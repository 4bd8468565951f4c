"""Room before the drain, on the real control plane: a repair whose node's instances
would fit on no other node waits in Pending (WaitingForRoom), touching nothing, and
goes ahead once a node with room joins the pool, or once its requireRoom is turned
off. The nodes are kwok's with a small allocatable (2 cpu), so two instances of
1500m cannot share one."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.helpers import cond, repair_events, wait_event
from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.repairs import GROUP, PLURAL, VERSION, Repairs, node_markers
from tests.e2e.workloads import deployment, running_pods

pytestmark = pytest.mark.e2e

SMALL = {"cpu": "2", "memory": "8Gi", "pods": "10"}


@pytest.fixture
def small_nodes(cluster: Cluster) -> Iterator[Callable[[str, int], list[str]]]:
    """Makes kwok nodes of pool `pool_id` with the SMALL allocatable (kwok keeps a
    node's own status.allocatable), Ready and untainted; deletes them afterwards."""
    made: list[str] = []

    def make(pool_id: str, count: int) -> list[str]:
        names = [f"room-{pool_id}-{len(made) + i}" for i in range(count)]
        for name in names:
            cluster.core.create_node(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {
                            "kwok.x-k8s.io/node": "fake",
                            "node.alpha.kubernetes.io/ttl": "0",
                        },
                        "labels": {
                            "type": "kwok",
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "pool": pool_id,
                        },
                    },
                    "status": {"allocatable": SMALL, "capacity": SMALL},
                }
            )
            made.append(name)
        for name in names:
            wait_until(
                f"node {name} Ready and untainted",
                lambda n=name: cluster.node_ready(n) and not cluster.core.read_node(n).spec.taints,
                timeout=30,
            )
        return names

    yield make
    for name in made:
        cluster.core.delete_node(name)


def big_function(cluster: Cluster, namespace: str, selector: dict[str, str], replicas: int) -> None:
    """A function whose instances request 1500m cpu each: one per SMALL node."""
    body: dict[str, Any] = deployment("fn", replicas, selector)
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "1500m", "memory": "1Gi"}
    }
    cluster.apps.create_namespaced_deployment(namespace, body)
    running_pods(cluster, namespace, "fn", replicas, timeout=30)


def full_pool(
    cluster: Cluster, namespace: str, small_nodes: Callable[[str, int], list[str]]
) -> tuple[str, Pool]:
    pool_id = uuid.uuid4().hex[:6]
    names = small_nodes(pool_id, 2)
    big_function(cluster, namespace, {"pool": pool_id}, 2)
    return pool_id, Pool(names=names, selector={"pool": pool_id})


def waits_for_room(cluster: Cluster, repairs: Repairs, name: str, node: str) -> dict[str, Any]:
    """The repair is Pending for want of room (reason, message, Event) and its node
    untouched; returns its status."""
    status = wait_until(
        f"{name} WaitingForRoom",
        lambda: (
            (s := repairs.status(name)).get("phase") == "Pending"
            and (cond(s, "Reconciling") if s.get("conditions") else {}).get("reason")
            == "WaitingForRoom"
            and s
        ),
        timeout=20,
    )
    wait_event(cluster, name, "WaitingForRoom")
    assert node_markers(cluster, node) == {"unschedulable": False, "taint": False, "lock": None}
    return dict(status)


def test_a_repair_waits_for_room_and_goes_once_a_node_with_room_joins(
    cluster: Cluster,
    namespace: str,
    small_nodes: Callable[[str, int], list[str]],
    repairs: Repairs,
) -> None:
    pool_id, pool = full_pool(cluster, namespace, small_nodes)
    node = pool.names[0]
    # requireRoom left out: a NodeRepair made by hand checks for room by default.
    name = repairs.create(node, repair={"strategy": "Manual"}, requireRoom=None)

    status = waits_for_room(cluster, repairs, name, node)
    # The message names what is missing: the one instance's request and its pod slot.
    assert status["message"].startswith("WaitingForRoom: 1 of 1 instances of"), status
    assert "1500m cpu, 1Gi memory, 1 pod" in status["message"], status
    (event,) = repair_events(cluster, name, "WaitingForRoom")
    assert event.type == "Warning" and "1500m cpu" in event.message

    # A node with room joins the pool: the repair takes its node, and the instance
    # goes to the new node.
    (added,) = small_nodes(pool_id, 1)
    repairs.wait_phase(name, "Repairing", timeout=30)
    assert node_markers(cluster, node)["lock"] == name
    moved = running_pods(cluster, namespace, "fn", 2, timeout=20)
    assert sorted(p.spec.node_name for p in moved) == sorted([pool.names[1], added])


def test_require_room_off_lets_a_waiting_repair_go(
    cluster: Cluster,
    namespace: str,
    small_nodes: Callable[[str, int], list[str]],
    repairs: Repairs,
) -> None:
    _, pool = full_pool(cluster, namespace, small_nodes)
    node = pool.names[0]
    name = repairs.create(node, repair={"strategy": "Manual"}, requireRoom=True)
    waits_for_room(cluster, repairs, name, node)

    cluster.custom.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, name, {"spec": {"requireRoom": False}}
    )
    repairs.wait_phase(name, "Repairing", timeout=30)
    # Nothing had room for it: the evicted instance's replacement waits unscheduled,
    # which is what the check, turned off, no longer prevents.
    wait_until(
        "the replacement instance Pending",
        lambda: any(
            p.status.phase == "Pending" and not p.spec.node_name
            for p in cluster.core.list_namespaced_pod(namespace, label_selector="app=fn").items
        ),
        timeout=20,
    )
