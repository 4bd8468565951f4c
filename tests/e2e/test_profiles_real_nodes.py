"""InstanceProfiles on a real node, with the project's own function runtime
(function/) serving real requests over TCP, judged by the load generator's own
record of every request (tests/e2e/loadgen.py), not by the operator's view.

- a repair of the node with a `prometheus` profile (+ httpPost drain) cuts no
  request, and writes nothing to the pods per task (the API server's own
  apiserver_request_total);
- an instance that does not answer on the profile's port, and a wrong metric
  name: busy, reported with the error, until the task timeout;
- the operator killed while it polls: the repair resumes, still no request cut.

Skipped when the cluster has no real node (PITSTOP_REAL_NODES=0)."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import cond, wait_event
from tests.e2e.kube import REPO, Cluster, wait_until
from tests.e2e.loadgen import BackgroundLoad, LoadConfig
from tests.e2e.operator import Operator
from tests.e2e.repairs import Repairs
from tests.e2e.workloads import ready_endpoints

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "pitstop.dev", "v1alpha1", "instanceprofiles"
POD_NETWORK = "10.90.0.0/16"  # the real nodes' pods, on this machine's own bridge only
TOLERATE_REAL = [{"key": "pitstop.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]
IMAGE = "localhost/pitstop-function:dev"


@pytest.fixture(scope="module")
def real_node(cluster: Cluster) -> str:
    names = [n.metadata.name for n in cluster.core.list_node(label_selector="type=real").items]
    if not names:
        pytest.skip("the cluster has no real node (started with PITSTOP_REAL_NODES=0)")
    return names[0]


@pytest.fixture(scope="module")
def function_image(cluster: Cluster, real_node: str) -> str:
    """The project's function, built and imported into the real node's containerd."""
    cluster_dir = Path(cluster.kubeconfig).parent
    if not (cluster_dir / "real").is_dir():
        pytest.skip(f"no real-node state in {cluster_dir} to import images into")
    subprocess.run(
        ["make", "-s", "function"], cwd=REPO, check=True, capture_output=True, timeout=600
    )
    subprocess.run(
        [str(REPO / "function/build-image.sh")],
        cwd=REPO,
        env={**os.environ, "PITSTOP_CLUSTER_DIR": str(cluster_dir), "IMAGE": IMAGE},
        check=True,
        capture_output=True,
        timeout=300,
    )
    return IMAGE


@pytest.fixture
def profiles(cluster: Cluster) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def create(spec: dict[str, Any]) -> str:
        name = f"fn-{uuid.uuid4().hex[:8]}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InstanceProfile"}
        body |= {"metadata": {"name": name}, "spec": spec}
        cluster.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
        made.append(name)
        return name

    yield create
    for name in made:
        cluster.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)


def function(cluster: Cluster, ns: str, node: str, image: str, app: str, replicas: int = 2) -> None:
    """The function pinned to the real node (its replacements wait there: a kwok node
    would give them addresses that route nowhere), gated, behind a Service."""
    container = {
        "name": "function",
        "image": image,
        "imagePullPolicy": "Never",
        "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "metrics", "containerPort": 9100},
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "ANNOTATIONS_FILE", "value": ""},
            {"name": "SHUTDOWN_MAX_WAIT_MS", "value": "20000"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": TOLERATE_REAL,
                    "readinessGates": [{"conditionType": "pitstop.dev/serving"}],
                    "terminationGracePeriodSeconds": 30,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "containers": [container],
                },
            },
        },
    }
    cluster.apps.create_namespaced_deployment(ns, body)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app},
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 8080}]},
    }
    cluster.core.create_namespaced_service(ns, service)
    wait_until(
        f"{replicas} {app} pods routed",
        lambda: len(ready_endpoints(cluster, ns, app)) == replicas,
        timeout=120,
    )


def prometheus_profile(app: str, **tasks: Any) -> dict[str, Any]:
    return {
        "podSelector": {"matchLabels": {"app": app}},
        "kind": "sync",
        "tasks": {
            "prometheus": {"port": "metrics", "metric": "function_requests_in_flight", **tasks}
        },
        "drainSignal": {"httpPost": {"port": "metrics", "path": "/drain"}},
        "pollIntervalSeconds": 0.5,
    }


def pod_writes(cluster: Cluster) -> int:
    """PATCH, PUT and POST on pods (the pod object, not its status or eviction) so
    far, from the API server's own apiserver_request_total."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    total = 0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if (
            labels.get("resource") == "pods"
            and labels.get("subresource", "") == ""
            and labels.get("verb") in ("PATCH", "UPDATE", "APPLY")
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def load(cluster: Cluster, ns: str, app: str, **cfg: Any) -> BackgroundLoad:
    config = LoadConfig(
        rate=cfg.pop("rate", 40),
        count=100_000,
        duration=cfg.pop("duration", 120),
        ms=cfg.pop("ms", (200, 800)),
        allowed_networks=(POD_NETWORK,),
        **cfg,
    )
    return BackgroundLoad(config, api=cluster.api, namespace=ns, service=app, port_name="http")


def test_prometheus_profile_drains_with_no_request_cut_and_no_pod_write_per_task(
    cluster: Cluster,
    namespace: str,
    real_node: str,
    function_image: str,
    repairs: Repairs,
    profiles: Callable[..., str],
) -> None:
    app = f"fn-{uuid.uuid4().hex[:6]}"
    profiles(prometheus_profile(app))
    function(cluster, namespace, real_node, function_image, app)
    with load(cluster, namespace, app) as running:
        time.sleep(3)
        before = pod_writes(cluster)
        name = repairs.create(real_node)
        status = repairs.wait_phase(name, "Repairing", timeout=120)
        writes = pod_writes(cluster) - before
        summary = running.stop()
    print(f"\n{summary.text()}\npod writes during the repair: {writes}")
    assert summary.clean, summary.text()
    assert summary.ok >= 100, summary.text()
    assert cond(status, "TasksDrained")["reason"] == "TasksDrained", status
    # Per pod, pitstop writes its drain mark once; the tasks themselves write nothing.
    assert writes <= 2, f"{writes} pod writes for {summary.ok} requests"
    for p in cluster.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items:
        assert "pitstop.dev/inflight-tasks" not in (p.metadata.annotations or {})


def test_unreachable_instance_and_wrong_metric_are_busy_until_the_timeout(
    cluster: Cluster,
    namespace: str,
    real_node: str,
    function_image: str,
    repairs: Repairs,
    profiles: Callable[..., str],
) -> None:
    app = f"fn-{uuid.uuid4().hex[:6]}"
    wrong = prometheus_profile(app, metric="function_requests_inflight")
    wrong["drainSignal"] = {"none": {}}
    profiles(wrong)
    function(cluster, namespace, real_node, function_image, app, replicas=1)
    name = repairs.create(real_node, drain={"taskTimeoutSeconds": 10, "onTaskTimeout": "Evict"})
    repairs.wait_phase(name, "WaitingForTasks", timeout=60)
    events = wait_event(cluster, name, "TaskSourceUnreachable", timeout=30)
    message = events[0].message or ""
    assert "metric function_requests_inflight not found" in message, message
    assert "function_requests_in_flight" in message, "names what the instance exposes"
    wait_until(
        "unreachable counted",
        lambda: (repairs.status(name).get("instances") or {}).get("unreachable") == 1,
        timeout=10,
    )
    status = repairs.wait_phase(name, "Repairing", timeout=60)
    assert cond(status, "TasksDrained")["reason"] == "TaskTimeout"


def test_nothing_listening_on_the_profile_port(
    cluster: Cluster,
    namespace: str,
    real_node: str,
    function_image: str,
    repairs: Repairs,
    profiles: Callable[..., str],
) -> None:
    app = f"fn-{uuid.uuid4().hex[:6]}"
    spec = prometheus_profile(app)
    spec["tasks"]["prometheus"]["port"] = 9999
    spec["drainSignal"] = {"none": {}}
    profiles(spec)
    function(cluster, namespace, real_node, function_image, app, replicas=1)
    name = repairs.create(real_node, drain={"taskTimeoutSeconds": 8, "onTaskTimeout": "Fail"})
    repairs.wait_phase(name, "WaitingForTasks", timeout=60)
    events = wait_event(cluster, name, "TaskSourceUnreachable", timeout=30)
    assert "connection refused" in (events[0].message or ""), events[0].message
    status = repairs.wait_phase(name, "Failed", timeout=60)
    assert "TaskTimeout" in status["message"]
    pods_left = cluster.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    assert pods_left and all(p.metadata.deletion_timestamp is None for p in pods_left)


def test_operator_killed_while_polling(
    cluster: Cluster,
    namespace: str,
    real_node: str,
    function_image: str,
    repairs: Repairs,
    running_operator: Operator,
    profiles: Callable[..., str],
) -> None:
    app = f"fn-{uuid.uuid4().hex[:6]}"
    profiles(prometheus_profile(app))
    function(cluster, namespace, real_node, function_image, app)
    with load(cluster, namespace, app, rate=10, ms=(3000, 6000)) as running:
        time.sleep(2)
        name = repairs.create(real_node)
        repairs.wait_phase(name, "WaitingForTasks", timeout=60)
        running_operator.kill()
        time.sleep(2)
        running_operator.ensure_running()
        status = repairs.wait_phase(name, "Repairing", timeout=120)
        summary = running.stop()
    assert summary.clean, summary.text()
    assert summary.ok > 0
    assert cond(status, "TasksDrained")["reason"] == "TasksDrained", status


def test_profile_changed_mid_drain(
    cluster: Cluster,
    namespace: str,
    real_node: str,
    function_image: str,
    repairs: Repairs,
    profiles: Callable[..., str],
) -> None:
    """A profile fixed while its instances wait: the old readings are dropped, the
    new source is read after its drain signal, and the drain completes in time."""
    app = f"fn-{uuid.uuid4().hex[:6]}"
    name = profiles(prometheus_profile(app, metric="no_such_metric"))
    function(cluster, namespace, real_node, function_image, app, replicas=1)
    with load(cluster, namespace, app, rate=10) as running:
        time.sleep(2)
        repair = repairs.create(real_node, drain={"taskTimeoutSeconds": 300})
        repairs.wait_phase(repair, "WaitingForTasks", timeout=60)
        wait_event(cluster, repair, "TaskSourceUnreachable", timeout=30)
        fixed = {"spec": {"tasks": {"prometheus": {"metric": "function_requests_in_flight"}}}}
        cluster.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, fixed)
        status = repairs.wait_phase(repair, "Repairing", timeout=60)
        summary = running.stop()
    assert summary.clean, summary.text()
    assert cond(status, "TasksDrained")["reason"] == "TasksDrained", status


def test_drain_signal_never_acknowledged_is_reported(
    cluster: Cluster,
    namespace: str,
    real_node: str,
    function_image: str,
    repairs: Repairs,
    profiles: Callable[..., str],
) -> None:
    """A drain path the runtime does not have (404): retried, reported after 5
    attempts, and from then on the count is used as with drainSignal none."""
    app = f"fn-{uuid.uuid4().hex[:6]}"
    spec = prometheus_profile(app)
    spec["drainSignal"] = {"httpPost": {"port": "metrics", "path": "/no-such-drain"}}
    profiles(spec)
    function(cluster, namespace, real_node, function_image, app, replicas=1)
    name = repairs.create(real_node, drain={"taskTimeoutSeconds": 300})
    repairs.wait_phase(name, "WaitingForTasks", timeout=60)
    events = wait_event(cluster, name, "DrainSignalUnacknowledged", timeout=30)
    assert "HTTP 404" in (events[0].message or ""), events[0].message
    status = repairs.wait_phase(name, "Repairing", timeout=60)
    assert cond(status, "TasksDrained")["reason"] == "TasksDrained", status
