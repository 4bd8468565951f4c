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

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e import realfunction
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.loadgen import BackgroundLoad, LoadConfig
from tests.incluster.conftest import NAMESPACE, nodes_on_host

REPAIRS = int(os.environ.get("FUNCTION_REPAIRS", "6"))
# Each repair of a real node moves real pods (and one operator replica): minutes.
pytestmark = [pytest.mark.incluster, pytest.mark.timeout(REPAIRS * 300 + 600)]
GROUP, VERSION, PLURAL = "pitstop.dev", "v1alpha1", "noderepairs"
REPAIRED = "pitstop.dev/repaired"
REPLICAS = 4


@pytest.fixture
def function(cluster: Cluster, installed: Any, tmp_path: Path) -> Iterator[str]:
    if not nodes_on_host(cluster):
        pytest.skip("sends requests to pod addresses: only where this machine routes to them")
    if len(realfunction.real_nodes(cluster)) < 2:
        pytest.skip("needs two real nodes (PITSTOP_REAL_NODES=2): the function moves")
    ns = f"fn-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    realfunction.deploy(cluster, ns, REPLICAS, tmp_path)
    yield ns
    cluster.core.delete_namespace(ns)
    cluster.kubectl("delete", "--ignore-not-found", "-f", str(realfunction.PROFILE))
    # The repairs moved the operator's own Pods: both back before anything else runs.
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deployment/pitstop", "--timeout=180s")


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
        {"metadata": {"annotations": {REPAIRED: "true"}}},
    )
    wait_until(f"{name} Succeeded", lambda: phase() in ("Succeeded", "Failed"), timeout=300)
    done = get()
    assert done["status"]["phase"] == "Succeeded", done["status"]
    return done


def test_repairs_of_real_nodes_hurt_no_request(cluster: Cluster, function: str) -> None:
    ns = function
    config = LoadConfig(
        rate=40,
        count=1_000_000,
        duration=REPAIRS * 300 + 120,  # bounds only: the run stops when the repairs end
        ms=(50, 400),
        allowed_networks=(realfunction.POD_NETWORK,),
    )
    started = time.monotonic()
    durations: list[float] = []
    with BackgroundLoad(
        config, api=cluster.api, namespace=ns, service=realfunction.APP, port_name="http"
    ) as load:
        for i in range(REPAIRS):
            node = realfunction.busiest_node(cluster, ns)  # every repair moves real work
            t = time.monotonic()
            repair(cluster, node, i)
            durations.append(time.monotonic() - t)
            wait_until(
                "the function available again",
                lambda: realfunction.available(cluster, ns, REPLICAS),
                timeout=180,
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
