"""FaaS-like workloads for e2e tests: sync functions (gated, behind a Service)
and async workers, pinned to a test's node pool."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.kube import Cluster, wait_until

GATE = "pitstop.dev/serving"


def deployment(
    name: str,
    replicas: int,
    selector: dict[str, str],
    gated: bool = False,
    grace: int = 1,
    labels: dict[str, str] | None = None,
    gate: str = GATE,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": grace,
        "nodeSelector": selector,
        "containers": [{"name": "fn", "image": "fake"}],
    }
    if gated:
        spec["readinessGates"] = [{"conditionType": gate}]
    # An even spread over the pool's nodes, so a test knows what each node carries;
    # cordoned or tainted nodes leave the count, so replacements go to the others.
    spec["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "nodeTaintsPolicy": "Honor",
            "labelSelector": {"matchLabels": {"app": name}},
        }
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name, **(labels or {})}}, "spec": spec},
        },
    }


def service(cluster: Cluster, ns: str, name: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
    }
    cluster.core.create_namespaced_service(ns, body)


def pods(cluster: Cluster, ns: str, app: str) -> list[client.V1Pod]:
    items = cluster.core.list_namespaced_pod(ns, label_selector=f"app={app}").items
    return [p for p in items if p.metadata.deletion_timestamp is None]


def is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def ready_pods(
    cluster: Cluster, ns: str, app: str, count: int, timeout: float = 60
) -> list[client.V1Pod]:
    return wait_until(
        f"{count} ready {app} pods",
        lambda: (p := pods(cluster, ns, app)) and len(p) == count and all(map(is_ready, p)) and p,
        timeout=timeout,
    )


def running_pods(
    cluster: Cluster, ns: str, app: str, count: int, timeout: float = 60
) -> list[client.V1Pod]:
    return wait_until(
        f"{count} running {app} pods",
        lambda: (
            (p := pods(cluster, ns, app))
            and len(p) == count
            and all(x.status.phase == "Running" for x in p)
            and p
        ),
        timeout=timeout,
    )


def ready_endpoints(cluster: Cluster, ns: str, svc: str) -> set[str]:
    slices = client.DiscoveryV1Api(cluster.api).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={svc}"
    )
    return {
        ep.target_ref.name
        for s in slices.items
        for ep in s.endpoints or []
        if ep.conditions and ep.conditions.ready
    }


def gone(cluster: Cluster, ns: str, name: str) -> bool:
    try:
        cluster.core.read_namespaced_pod(name, ns)
    except ApiException as e:
        return e.status == 404
    return False
