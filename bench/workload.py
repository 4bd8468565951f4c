"""What the benchmarks put on the cluster: fake (kwok) nodes, Deployments of
instance pods pinned to them, PodDisruptionBudgets, NodeRepairs and
RepairPolicies; and how they are taken away again."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from kubernetes.client.rest import ApiException

from bench.cluster import BenchError, Cluster, now, poll
from bench.watches import GROUP, PLURAL, VERSION, World

NS = "bench"
"""The namespace of the drain benchmark's instances."""
KEY = "bench.pitstop.dev"
"""Prefix of the benchmark's own labels."""
IMAGE = "registry.k8s.io/pause:3.10"  # never pulled: kwok runs no containers
FAULT = "sim.pitstop.dev/fault"
"""The annotation the kwok stages turn into a node condition of that type."""


def node_body(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A node kwok takes over (annotation `kwok.x-k8s.io/node: fake`)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                **labels,
            },
        },
    }


def make_nodes(cluster: Cluster, world: World, names: list[str], labels: dict[str, str]) -> None:
    """Creates the nodes one by one; returns once the watch saw them all Ready."""
    for name in names:
        cluster.core.create_node(node_body(name, labels))
    world.wait(
        f"nodes {names[0]}.. Ready",
        lambda: all(n in world.nodes and world.nodes[n].ready for n in names),
        60,
    )


def apply_nodes(
    cluster: Cluster, names: list[str], labels: dict[str, str], chunk: int = 250
) -> None:
    """Creates many nodes, `chunk` per `kubectl apply` (no waiting)."""
    for start in range(0, len(names), chunk):
        items = [node_body(n, labels) for n in names[start : start + chunk]]
        listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        cluster.run_kubectl("apply", "--server-side", "-f", "-", input=listing)


def delete_nodes(cluster: Cluster, names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(ApiException):
            cluster.core.delete_node(name)


def set_fault(cluster: Cluster, node: str, fault: str | None) -> None:
    """Breaks the fake node (a condition of type `fault` turns True) or, with None, heals it."""
    cluster.core.patch_node(node, {"metadata": {"annotations": {FAULT: fault}}})


def deployment(
    name: str,
    replicas: int,
    pod_labels: dict[str, str],
    labels: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    grace: int = 1,
    image: str = IMAGE,
) -> dict[str, Any]:
    """A Deployment of `replicas` pods selected by `app: <name>`."""
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": grace,
        "containers": [{"name": "fn", "image": image}],
    }
    if node_selector is not None:
        pod_spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, **({"labels": labels} if labels is not None else {})},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **pod_labels}},
                "spec": pod_spec,
            },
        },
    }


def make_function(
    cluster: Cluster,
    name: str,
    replicas: int,
    selector: dict[str, str],
    labels: dict[str, str],
    grace: int,
    pdb: str | None,
) -> None:
    """A Deployment of `replicas` async instance pods pinned by `selector` and, unless
    `pdb` is None, a PDB over them with that `maxUnavailable`."""
    body = deployment(
        name,
        replicas,
        {"pitstop.dev/instance-type": "async", **labels},
        labels=labels,
        node_selector=selector,
        grace=grace,
    )
    cluster.apps.create_namespaced_deployment(NS, body)
    if pdb is not None:
        make_pdb(cluster, name, labels, {"app": name}, pdb)


def make_pdb(
    cluster: Cluster,
    name: str,
    labels: dict[str, str],
    match: dict[str, str],
    max_unavailable: str,
) -> None:
    cluster.policy.create_namespaced_pod_disruption_budget(
        NS,
        {
            "metadata": {"name": name, "labels": labels},
            "spec": {"maxUnavailable": max_unavailable, "selector": {"matchLabels": match}},
        },
    )


def pdbs_settled(cluster: Cluster, selector: str) -> bool:
    """Every PDB with these labels has seen all its pods healthy (so it allows all
    the disruptions its maxUnavailable does)."""
    for pdb in cluster.policy.list_namespaced_pod_disruption_budget(
        NS, label_selector=selector
    ).items:
        s = pdb.status
        if s is None or (s.observed_generation or 0) < pdb.metadata.generation:
            return False
        if not s.expected_pods or s.current_healthy != s.expected_pods:
            return False
    return True


def delete_workload(cluster: Cluster, selector: str) -> None:
    """Deletes Deployments, PDBs and pods by label. The garbage collector would
    take about a minute for 220 pods here, so once the ReplicaSets are gone
    (nothing re-creates pods any more) the pods go at once (grace period 0)."""
    apps = cluster.apps
    apps.delete_collection_namespaced_deployment(
        NS, label_selector=selector, propagation_policy="Background"
    )
    cluster.policy.delete_collection_namespaced_pod_disruption_budget(NS, label_selector=selector)
    poll(
        f"ReplicaSets {selector} gone",
        lambda: not apps.list_namespaced_replica_set(NS, label_selector=selector).items,
        120,
    )
    cluster.core.delete_collection_namespaced_pod(
        NS, label_selector=selector, grace_period_seconds=0
    )


# --- NodeRepairs ------------------------------------------------------------------


def create_repair(cluster: Cluster, name: str, node: str) -> None:
    cluster.custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodeRepair",
            "metadata": {"name": name, "labels": {KEY + "/bench": "true"}},
            # The bench pins each node's pods to it (as the peers drain them): they fit
            # nowhere else, and the room check would hold the repair for ever.
            "spec": {"nodeName": node, "reason": "bench", "requireRoom": False},
        },
    )


def wait_phase(world: World, name: str, phases: tuple[str, ...], timeout: float) -> str:
    """Blocks until the NodeRepair was seen in one of `phases`; returns that phase."""

    def reached() -> str | None:
        seen = world.repairs.get(name)
        if seen is None:
            return None
        if seen.phase in ("Failed", "Aborted"):
            raise BenchError(f"NodeRepair {name} ended {seen.phase}: {seen.message}")
        return next((p for p in phases if p in seen.phases), None)

    return world.wait(f"NodeRepair {name} in {'/'.join(phases)}", reached, timeout)


def release(cluster: Cluster, world: World, name: str, node: str) -> float:
    """Deletes the NodeRepair; returns the seconds until the node was seen uncordoned.
    The node is given back before the finalizer goes, so it must be uncordoned by
    the time the NodeRepair is gone."""
    start = now()
    cluster.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    deleted = now()
    w = world
    w.wait(f"{name} gone", lambda: w.repairs[name].gone_at is not None, 60)
    w.wait(
        f"{node} uncordoned after {name} was gone",
        lambda: not w.nodes[node].unschedulable,
        5,
    )
    with w.cond:
        t = w.first_flip(node, False, start)
    return (t - deleted) if t is not None else 0.0


def describe(cluster: Cluster, world: World, node: str) -> str:
    """The node's cordon and lock, and every NodeRepair of it, as the API has them."""
    seen = cluster.core.read_node(node)
    lock = (seen.metadata.annotations or {}).get("pitstop.dev/repair")
    parts = [f"node unschedulable={bool(seen.spec.unschedulable)} lock={lock}"]
    with world.cond:
        last = [(n, r) for n, r in world.repairs.items() if r.node == node][-1:]
        for name, repair in last:
            parts.append(f"{name} as watched: " + " | ".join(repair.history[-8:]))
    listing = cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    for nr in listing["items"]:
        if nr["spec"]["nodeName"] != node:
            continue
        meta, status = nr["metadata"], nr.get("status") or {}
        parts.append(
            f"{meta['name']}: phase={status.get('phase')} message={status.get('message')!r}"
            f" deletionTimestamp={meta.get('deletionTimestamp')}"
            f" finalizers={meta.get('finalizers')}"
        )
    return "; ".join(parts)


def policy(
    name: str, pool: str, concurrent: int, min_available: str, duration: str = "3s"
) -> dict[str, Any]:
    """A RepairPolicy over the nodes labelled `pool: <pool>` that repairs a
    KernelDeadlock held for `duration` (Manual repair, no verification wait)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RepairPolicy",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {"pool": pool}},
            "unhealthyConditions": [
                {"type": "KernelDeadlock", "status": "True", "duration": duration}
            ],
            "maxUnhealthy": "100%",
            "maxConcurrentRepairs": concurrent,
            "minAvailable": min_available,
            "repairTemplate": {
                "spec": {
                    "repair": {"strategy": "Manual", "timeoutSeconds": 600},
                    "verify": {"stableSeconds": 0, "timeoutSeconds": 60},
                    "drain": {"taskTimeoutSeconds": 60},
                }
            },
        },
    }
