"""Helpers shared by the e2e tests: pools, Services, PodDisruptionBudgets, pods on a
node, Events on a NodeRepair, conditions and the operator's log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client

from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.operator import Operator

# --- nodes ---


def untainted(cluster: Cluster, p: Pool) -> Pool:
    """Waits until the pool's nodes carry no taint (the node lifecycle controller
    removes its not-ready taint a moment after Ready) and returns the pool."""
    wait_until(
        f"nodes {p.names} untainted",
        lambda: all(not cluster.core.read_node(n).spec.taints for n in p.names),
        timeout=30,
    )
    return p


def make_pool(cluster: Cluster, pool: Callable[[int], Pool], count: int = 1) -> Pool:
    """`count` Ready, untainted nodes from the `pool` fixture."""
    return untainted(cluster, pool(count))


def node_pods(cluster: Cluster, ns: str, node: str) -> list[client.V1Pod]:
    """Every pod of the namespace bound to the node, terminating ones included."""
    return list(cluster.core.list_namespaced_pod(ns, field_selector=f"spec.nodeName={node}").items)


# --- Services and PodDisruptionBudgets ---


def make_service(cluster: Cluster, ns: str, name: str, publish_not_ready: bool = False) -> None:
    """A Service on port 80 selecting `app=<name>`."""
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"port": 80}],
            "publishNotReadyAddresses": publish_not_ready,
        },
    }
    cluster.core.create_namespaced_service(ns, body)


def make_pdb(cluster: Cluster, ns: str, name: str, app: str, min_available: int) -> None:
    """A PodDisruptionBudget keeping `min_available` pods of `app=<app>`."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    }
    client.PolicyV1Api(cluster.api).create_namespaced_pod_disruption_budget(ns, body)


def pdb_settled(cluster: Cluster, ns: str, name: str, healthy: int, allowed: int) -> None:
    """The disruption controller has computed the budget for the current spec."""
    policy = client.PolicyV1Api(cluster.api)

    def probe() -> bool:
        pdb = policy.read_namespaced_pod_disruption_budget(name, ns)
        s = pdb.status
        return bool(
            s
            and s.observed_generation == pdb.metadata.generation
            and s.current_healthy == healthy
            and s.disruptions_allowed == allowed
        )

    wait_until(f"PDB {name} healthy={healthy} allowed={allowed}", probe, timeout=30)


def relax_pdb(cluster: Cluster, ns: str, name: str) -> None:
    """Lets the budget allow every disruption (minAvailable 0)."""
    client.PolicyV1Api(cluster.api).patch_namespaced_pod_disruption_budget(
        name, ns, {"spec": {"minAvailable": 0}}
    )


# --- NodeRepairs ---


def repair_events(
    cluster: Cluster, repair: str, reason: str | None = None
) -> list[client.CoreV1Event]:
    """Events about a NodeRepair (cluster-scoped: they land in some namespace),
    only those with `reason` if given."""
    return [
        e
        for e in cluster.core.list_event_for_all_namespaces(
            field_selector=f"involvedObject.kind=NodeRepair,involvedObject.name={repair}"
        ).items
        if reason is None or e.reason == reason
    ]


def wait_event(
    cluster: Cluster, repair: str, reason: str, type_: str = "Warning", timeout: float = 20
) -> list[client.CoreV1Event]:
    """Waits for an Event of `type_` and `reason` on the repair; returns those found."""
    found: list[client.CoreV1Event] = wait_until(
        f"{type_} Event {reason} on {repair}",
        lambda: [e for e in repair_events(cluster, repair, reason) if e.type == type_],
        timeout=timeout,
    )
    return found


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition `type_` of a status; it must be there."""
    found = [c for c in status.get("conditions") or [] if c["type"] == type_]
    assert found, (type_, status)
    return dict(found[0])


# --- the operator ---


def log_since(op: Operator, offset: int) -> str:
    """The operator's log from byte `offset` on."""
    return op.log.read_bytes()[offset:].decode(errors="replace")
