"""A real function on real nodes, repaired again and again while it serves: the
project's function runtime (function/) as a Deployment with the serving gate, a
load generator on this machine that routes by the Service's EndpointSlices (as a
FaaS router does), and NodeRepairs of the real nodes in turn, with pitstop
running in-cluster from manifests/ (it evicts its own Pods too: the other replica
takes over).

The judge is the generator's own record of every request: none failed
(refused, reset, 5xx ...), none cut mid-flight, none sent to a pod after it left
the ready endpoints. FUNCTION_REPAIRS sets how many repairs (default 6; the
closing figures quote 20)."""

from __future__ import annotations

import ipaddress
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e.kube import REPO, Cluster, wait_until
from tests.e2e.loadgen import BackgroundLoad, LoadConfig
from tests.incluster.conftest import local

pytestmark = pytest.mark.incluster

REPAIRS = int(os.environ.get("FUNCTION_REPAIRS", "6"))
GROUP, VERSION, PLURAL = "pitstop.dev", "v1alpha1", "noderepairs"
SERVICE = "pitstop-function"
REPAIRED = "pitstop.dev/repaired"


def real_nodes(cluster: Cluster) -> list[str]:
    nodes = cluster.core.list_node(label_selector="type!=kwok").items
    return sorted(n.metadata.name for n in nodes)


def function_pods(cluster: Cluster, ns: str) -> list[client.V1Pod]:
    pods = cluster.core.list_namespaced_pod(ns, label_selector=f"app={SERVICE}").items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def available(cluster: Cluster, ns: str, replicas: int) -> bool:
    d = cluster.apps.read_namespaced_deployment(SERVICE, ns)
    return (d.status.available_replicas or 0) >= replicas and (
        d.status.updated_replicas or 0
    ) >= replicas


@pytest.fixture
def function(cluster: Cluster, installed: Any) -> Any:
    if not local(cluster):
        pytest.skip("sends requests to pod addresses: only on the local control plane")
    if len(real_nodes(cluster)) < 2:
        pytest.skip("needs two real nodes (PITSTOP_REAL_NODES=2): the function moves")
    ns = f"fn-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    docs = list(yaml.safe_load_all((REPO / "function" / "deploy.yaml").read_text()))
    for doc in docs:
        if doc and doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = 4
    path = Path(f"/tmp/{ns}.yaml")
    path.write_text(yaml.safe_dump_all(docs))
    cluster.kubectl("-n", ns, "apply", "-f", str(path))
    wait_until("the function available", lambda: available(cluster, ns, 4), timeout=180)
    yield ns
    cluster.core.delete_namespace(ns)


def pod_networks(cluster: Cluster, ns: str) -> tuple[str, ...]:
    """The /24s the function's pods live in: the real nodes' own bridges."""
    nets = {
        str(ipaddress.ip_network(f"{p.status.pod_ip}/24", strict=False))
        for p in function_pods(cluster, ns)
        if p.status.pod_ip
    }
    nodes = real_nodes(cluster)
    for node in nodes:  # a node's podCIDR, when the cluster sets one
        cidr = cluster.core.read_node(node).spec.pod_cidr
        if cidr:
            nets.add(cidr)
    return tuple(sorted(nets))


def repair(cluster: Cluster, node: str, i: int) -> dict[str, Any]:
    name = f"{node}-fn-{i}-{uuid.uuid4().hex[:4]}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NodeRepair",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "reason": "FunctionUnderLoad",
            "drain": {"taskTimeoutSeconds": 120, "evictionTimeoutSeconds": 300},
            "repair": {"strategy": "Manual"},
            "verify": {"stableSeconds": 1, "timeoutSeconds": 120},
        },
    }
    custom = cluster.custom
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)

    def get() -> dict[str, Any]:
        return dict(custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name))

    def phase() -> str | None:
        return (get().get("status") or {}).get("phase")

    wait_until(f"{name} Repairing", lambda: phase() in ("Repairing", "Failed"), timeout=300)
    assert phase() == "Repairing", get().get("status")
    custom.patch_cluster_custom_object(
        GROUP,
        VERSION,
        PLURAL,
        name,
        {"metadata": {"annotations": {"pitstop.dev/repaired": "true"}}},
    )
    wait_until(f"{name} Succeeded", lambda: phase() in ("Succeeded", "Failed"), timeout=300)
    done = get()
    assert done["status"]["phase"] == "Succeeded", done["status"]
    return done


def test_repairs_of_real_nodes_hurt_no_request(cluster: Cluster, function: str) -> None:
    ns = function
    nodes = real_nodes(cluster)
    config = LoadConfig(
        rate=40,
        count=1_000_000,
        duration=REPAIRS * 120 + 120,
        ms=(50, 400),
        allowed_networks=pod_networks(cluster, ns),
    )
    started = time.monotonic()
    durations: list[float] = []
    with BackgroundLoad(
        config, api=cluster.api, namespace=ns, service=SERVICE, port_name="http"
    ) as load:
        for i in range(REPAIRS):
            # The node with the most instances: every repair moves real work.
            counts = {n: 0 for n in nodes}
            for p in function_pods(cluster, ns):
                if p.spec.node_name in counts:
                    counts[p.spec.node_name] += 1
            node = max(nodes, key=lambda n: (counts[n], n))
            t = time.monotonic()
            repair(cluster, node, i)
            durations.append(time.monotonic() - t)
            wait_until(
                "the function available again", lambda: available(cluster, ns, 4), timeout=180
            )
    summary = load.summary
    assert summary is not None
    print(
        f"\n{REPAIRS} repairs in {time.monotonic() - started:.0f} s "
        f"(each {min(durations):.1f} to {max(durations):.1f} s)\n{summary.text()}"
    )
    assert summary.sent > REPAIRS * 50, "the load generator hardly sent anything"
    assert summary.ok > 0
    assert summary.failed_total == 0, summary.failed
    assert summary.cut == 0
    assert summary.sent_after_leaving == 0
    assert summary.clean, summary.defects()
    # Every repair moved instances while they served: the judge saw pods leave.
    assert len(summary.left) >= REPAIRS, summary.left
