"""Orphaned locks: a NodeRepair force-deleted without its finalizer leaves its lock on
the node; the operator sweeps it (OrphanedLockReleased on the node, the metric) and
gives the node back as the repair's deletion would have: drain signals removed, the
taint and the lock gone, uncordoned unless the node was cordoned before the repair."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.helpers import make_pool, node_pods
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import Repairs, node_markers
from tests.e2e.workloads import deployment, running_pods

pytestmark = pytest.mark.e2e

DRAINING = "pitstop.dev/draining"
REASON = "OrphanedLockReleased"
RETURNED = {"unschedulable": False, "taint": False, "lock": None}
KEPT_CORDONED = {"unschedulable": True, "taint": False, "lock": None}
METRIC = re.compile(r"^pitstop_orphaned_locks_released_total (\S+)$", re.M)


def node_events(cluster: Cluster, node: str) -> list[client.CoreV1Event]:
    return [
        e
        for e in cluster.core.list_event_for_all_namespaces(
            field_selector=f"involvedObject.kind=Node,involvedObject.name={node}"
        ).items
        if e.reason == REASON
    ]


def swept(op: Operator) -> float:
    found = METRIC.search(op.metrics())
    return float(found.group(1)) if found else 0.0


def busy_node(cluster: Cluster, ns: str, pool: Any) -> tuple[str, str]:
    """One node with two async instances, one of them busy forever: a repair of the
    node holds it in WaitingForTasks, drain signals set."""
    p = make_pool(cluster, pool, 1)
    cluster.apps.create_namespaced_deployment(ns, deployment("worker", 2, p.selector, grace=1))
    busy = running_pods(cluster, ns, "worker", 2)[0].metadata.name
    note = {"metadata": {"annotations": {"pitstop.dev/inflight-tasks": "1"}}}
    cluster.core.patch_namespaced_pod(busy, ns, note)
    return p.names[0], busy


def orphan(repairs: Repairs, node: str, **spec: Any) -> str:
    """A repair holding `node` in WaitingForTasks, then force-deleted (retried with a
    fresh repair if the operator re-added its finalizer in between)."""
    for _ in range(3):
        name = repairs.create(node, **spec)
        repairs.wait_phase(name, "WaitingForTasks", timeout=30)
        if repairs.force_delete(name):
            return name
        wait_until(f"{name} finalized as usual", lambda n=name: not repairs.exists(n), timeout=30)
    raise AssertionError("the finalizer came back every time")


def test_orphaned_lock_is_swept_by_the_running_operator(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    node, _ = busy_node(cluster, namespace, pool)
    before = swept(running_operator)
    name = orphan(repairs, node)
    wait_until(
        "node given back",
        lambda: node_markers(cluster, node) == RETURNED,
        timeout=30,
    )
    events = wait_until("the Warning Event on the node", lambda: node_events(cluster, node))
    assert events[0].type == "Warning" and name in events[0].message, events[0]
    assert swept(running_operator) == before + 1
    wait_until(
        "drain signals removed",
        lambda: all(
            DRAINING not in (x.metadata.annotations or {})
            for x in node_pods(cluster, namespace, node)
            if x.metadata.deletion_timestamp is None
        ),
        timeout=15,
    )
    notes = cluster.core.read_node(node).metadata.annotations or {}
    assert "pitstop.dev/was-unschedulable" not in notes, notes


def test_orphaned_lock_left_while_down_is_swept_at_start_and_keeps_a_prior_cordon(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    """Force-deleted while the operator is down (no finalizer can come back): found at
    start-up from the initial listing. The node was cordoned before its repair, so it is
    left cordoned; only pitstop's taint and lock go."""
    node, _ = busy_node(cluster, namespace, pool)
    cluster.core.patch_node(node, {"spec": {"unschedulable": True}})
    name = repairs.create(node)
    repairs.wait_phase(name, "WaitingForTasks", timeout=30)
    running_operator.kill()
    assert repairs.force_delete(name)
    time.sleep(1)
    assert node_markers(cluster, node) == {"unschedulable": True, "taint": True, "lock": name}
    running_operator.start()
    wait_until(
        "lock and taint removed",
        lambda: node_markers(cluster, node) == KEPT_CORDONED,
        timeout=30,
    )
    wait_until("the Warning Event on the node", lambda: node_events(cluster, node))
    assert swept(running_operator) == 1  # a fresh process: its first sweep
    # Sweeping again (the node's next events) changes nothing and reports nothing more.
    cluster.core.patch_node(node, {"metadata": {"labels": {"e2e.pitstop.dev/poke": "1"}}})
    time.sleep(2)
    assert len(node_events(cluster, node)) == 1
    assert swept(running_operator) == 1
