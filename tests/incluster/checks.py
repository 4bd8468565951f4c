"""Checks both install methods run (test_install.py on the whole tier's install,
test_other_install.py on the other one)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid

import pytest
from kubernetes import client

from tests.e2e.kube import Cluster, wait_until
from tests.incluster.conftest import NAMESPACE, local, nodes_on_host, operator_pods, wait_holder


def get(cluster: Cluster, pod: client.V1Pod, port: int, path: str) -> str:
    """GET on the pod's own address: directly where this machine routes to pod
    addresses (the local control plane's bridges, kind on a bridge of this
    machine's), else through the API server's pod proxy (which dials the same
    address)."""
    if nodes_on_host(cluster):
        url = f"http://{pod.status.pod_ip}:{port}{path}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())
    proxied = client.CoreV1Api(cluster.api).connect_get_namespaced_pod_proxy_with_path(
        f"{pod.metadata.name}:{port}", NAMESPACE, path.lstrip("/")
    )
    return str(proxied)


def one_leader_one_standby(cluster: Cluster) -> str:
    """The Lease holder says it leads on /healthz, the other replica that it stands
    by; returns the holder."""
    pods = {p.metadata.name: p for p in operator_pods(cluster)}
    holder = wait_holder(cluster, set(pods))
    roles = {
        name: json.loads(get(cluster, pod, 8080, "/healthz")).get("role")
        for name, pod in pods.items()
    }
    assert roles[holder] == "leader", roles
    assert sorted(roles.values()) == ["leader", "standby"], roles
    return holder


def repair_a_node(cluster: Cluster) -> None:
    """A Manual NodeRepair of a node that runs no operator replica (a tainted kwok
    node here; elsewhere a worker) goes Repairing, then Succeeded when marked
    repaired, and its finalizer runs on delete."""
    if local(cluster):
        node = f"kwok-{uuid.uuid4().hex[:6]}"
        cluster.create_node(node, {"pool": node})
        # kwok's convention: fake nodes repel real workloads (the operator's own Pods).
        taint = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
        cluster.core.patch_node(node, {"spec": {"taints": [taint]}})
        wait_until(f"{node} Ready", lambda: cluster.node_ready(node), timeout=60)
    else:  # another cluster (kind): a worker that runs no operator replica
        busy = {p.spec.node_name for p in operator_pods(cluster)}
        workers = [
            n.metadata.name
            for n in cluster.core.list_node().items
            if "node-role.kubernetes.io/control-plane" not in (n.metadata.labels or {})
            and n.metadata.name not in busy
        ]
        if not workers:
            pytest.skip("every worker runs an operator replica")
        node = workers[0]
    name = f"{node}-repair"
    body = {
        "apiVersion": "pitstop.dev/v1alpha1",
        "kind": "NodeRepair",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "reason": "InClusterTest",
            "repair": {"strategy": "Manual"},
            "verify": {"stableSeconds": 1, "timeoutSeconds": 60},
        },
    }
    custom = cluster.custom
    custom.create_cluster_custom_object("pitstop.dev", "v1alpha1", "noderepairs", body)

    def phase() -> str | None:
        got = custom.get_cluster_custom_object("pitstop.dev", "v1alpha1", "noderepairs", name)
        return (got.get("status") or {}).get("phase")

    wait_until("Repairing", lambda: phase() == "Repairing", timeout=120)
    assert cluster.core.read_node(node).spec.unschedulable
    custom.patch_cluster_custom_object(
        "pitstop.dev",
        "v1alpha1",
        "noderepairs",
        name,
        {"metadata": {"annotations": {"pitstop.dev/repaired": "true"}}},
    )
    wait_until("Succeeded", lambda: phase() == "Succeeded", timeout=120)
    assert not cluster.core.read_node(node).spec.unschedulable
    custom.delete_cluster_custom_object("pitstop.dev", "v1alpha1", "noderepairs", name)
    wait_until(
        "the repair's finalizer ran",
        lambda: (
            name
            not in [
                r["metadata"]["name"]
                for r in custom.list_cluster_custom_object(
                    "pitstop.dev", "v1alpha1", "noderepairs"
                )["items"]
            ]
        ),
        timeout=60,
    )
    if local(cluster):
        cluster.core.delete_node(node)


# A refusal of the API server or a crash. 403 only as a number of its own: every log
# line starts with a time whose milliseconds may be ",403", and byte counts in access
# log lines may contain it.
PERMISSION_ERROR = re.compile(r"Forbidden|Traceback|Not enough permissions|(?<![\d,.])\b403\b")


def permission_errors(log: str) -> list[str]:
    """The lines of an operator log that show a refusal or a crash."""
    return [line for line in log.splitlines() if PERMISSION_ERROR.search(line)]


def assert_no_permission_errors(cluster: Cluster) -> None:
    """No replica logged a refusal of the API server or a crash."""
    time.sleep(2)  # let the watches of a fresh leader answer
    for pod in operator_pods(cluster):
        log = cluster.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)
        errors = permission_errors(log)
        assert not errors, f"in {pod.metadata.name}'s log: {errors}\n{log[-3000:]}"
