"""Knative Serving's real queue-proxy on a real node, with the shipped
`instanceprofile-knative.yaml`: pitstop reads the queue-proxy's own stats (its
protobuf Stat on :9090) and evicts a revision pod only after its window read 0.

Each pod is shaped as Knative renders a revision (pkg/reconciler/revision/resources):
the queue-proxy (built from the Go module proxy by hack/build-knative.sh) in front
of a user container, here the project's function bound to 127.0.0.1 so every
request goes through the queue-proxy; the queue-proxy's readiness probe (which it
answers by probing the user container, and fails once it drains), the user
container's preStop hook on the queue-proxy's /wait-for-drain, and the env the
queue-proxy reads. No Knative control plane runs: the queue-proxy needs no API
server (it reads only its env), and the load generator routes by EndpointSlices
as the activator does.

Judged by the load generator's own record of every request (tests/e2e/loadgen.py)
and by a watch of the pods: 0 failed, 0 cut, 0 sent after leaving, and every
request a pod served had ended before pitstop evicted it (requests of 2 to 5 s,
so a source that read 0 too early would evict a pod mid-request).

Skipped when the cluster has no real node (PITSTOP_REAL_NODES=0)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import watch

from pitstop.instances.sources.answers import parse_knative_stat
from tests.e2e.helpers import cond
from tests.e2e.kube import REPO, Cluster, wait_until
from tests.e2e.loadgen import BackgroundLoad, LoadConfig
from tests.e2e.repairs import Repairs
from tests.e2e.workloads import ready_endpoints

pytestmark = pytest.mark.e2e

PROFILE = REPO / "manifests/examples/instanceprofile-knative.yaml"
POD_NETWORK = "10.90.0.0/16"  # the real nodes' pods, on this machine's own bridge only
TOLERATE_REAL = [{"key": "pitstop.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]
FUNCTION_IMAGE = "localhost/pitstop-function:dev"
QUEUE_IMAGE = "localhost/knative-queue:dev"
QUEUE_PORT, ADMIN_PORT, STATS_PORT, USER_PORT = 8012, 8022, 9090, 8080


def run(command: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def images(cluster: Cluster) -> None:
    """The function and the queue-proxy, imported into the real node's containerd."""
    if not cluster.core.list_node(label_selector="type=real").items:
        pytest.skip("the cluster has no real node (started with PITSTOP_REAL_NODES=0)")
    cluster_dir = Path(cluster.kubeconfig).parent
    if not (cluster_dir / "real").is_dir():
        pytest.skip(f"no real-node state in {cluster_dir} to import images into")
    env = {"PITSTOP_CLUSTER_DIR": str(cluster_dir)}
    run(["make", "-s", "function"])
    run([str(REPO / "function/build-image.sh")], {**env, "IMAGE": FUNCTION_IMAGE})
    queue = Path(run([str(REPO / "hack/build-knative.sh")]))
    rootfs = REPO / "build/knative-queue-rootfs"
    run(["rm", "-rf", str(rootfs)])
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "queue").write_bytes(queue.read_bytes())
    (rootfs / "queue").chmod(0o755)
    (rootfs / "etc/passwd").write_text("nonroot:x:65532:65532:nonroot:/:/queue\n")
    out = REPO / "build/knative-queue-dev.oci.tar"
    name, tag = QUEUE_IMAGE.removeprefix("localhost/").split(":")
    build = ["hack/image.sh", "build", "--rootfs", str(rootfs), "--name", name, "--tag", tag]
    run([*build, "--out", str(out), "--entrypoint", "/queue", "--user", "65532:65532"])
    run(["hack/image.sh", "import", str(out), name, str(cluster_dir)])


@pytest.fixture
def profile(cluster: Cluster) -> Iterator[str]:
    name = yaml.safe_load(PROFILE.read_text())["metadata"]["name"]
    cluster.kubectl("apply", "-f", str(PROFILE))
    yield name
    cluster.kubectl("delete", "-f", str(PROFILE), "--ignore-not-found")


def field(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def revision(cluster: Cluster, ns: str, node: str, app: str, replicas: int) -> None:
    """A revision's Deployment as Knative renders it, pinned to the real node (the
    replacements wait there: a kwok node would give addresses that route nowhere),
    gated, behind a Service whose target is the queue-proxy."""
    user = {
        "name": "user-container",
        "image": FUNCTION_IMAGE,
        "imagePullPolicy": "Never",
        "env": [
            {"name": "PORT", "value": str(USER_PORT)},
            {"name": "BIND_ADDRESS", "value": "127.0.0.1"},  # reached only through the queue-proxy
            {"name": "POD_NAME", **field("metadata.name")},
            {"name": "ANNOTATIONS_FILE", "value": ""},
            {"name": "SHUTDOWN_MAX_WAIT_MS", "value": "20000"},
        ],
        # Knative's: the user container is stopped only once the queue-proxy drained.
        "lifecycle": {"preStop": {"httpGet": {"path": "/wait-for-drain", "port": ADMIN_PORT}}},
    }
    probe = {"tcpSocket": {"port": USER_PORT, "host": "127.0.0.1"}, "successThreshold": 1}
    queue = {
        "name": "queue-proxy",
        "image": QUEUE_IMAGE,
        "imagePullPolicy": "Never",
        "ports": [
            {"name": "http", "containerPort": QUEUE_PORT},
            {"name": "queue-admin", "containerPort": ADMIN_PORT},
            {"name": "http-autometric", "containerPort": STATS_PORT},
        ],
        "env": [
            {"name": "SERVING_NAMESPACE", **field("metadata.namespace")},
            {"name": "SERVING_SERVICE", "value": app},
            {"name": "SERVING_CONFIGURATION", "value": app},
            {"name": "SERVING_REVISION", "value": f"{app}-00001"},
            {"name": "SERVING_POD", **field("metadata.name")},
            {"name": "SERVING_POD_IP", **field("status.podIP")},
            {"name": "QUEUE_SERVING_PORT", "value": str(QUEUE_PORT)},
            {"name": "QUEUE_SERVING_TLS_PORT", "value": "8112"},
            {"name": "USER_PORT", "value": str(USER_PORT)},
            {"name": "CONTAINER_CONCURRENCY", "value": "0"},
            {"name": "REVISION_TIMEOUT_SECONDS", "value": "300"},
            {"name": "SERVING_READINESS_PROBE", "value": json.dumps(probe)},
            {"name": "SERVING_LOGGING_CONFIG", "value": ""},
            {"name": "SERVING_LOGGING_LEVEL", "value": "info"},
            {"name": "TRACING_CONFIG_BACKEND", "value": "none"},
        ],
        # Knative's: the kubelet's probe goes to the queue-proxy, which probes the
        # user container, and answers 503 from SIGTERM on.
        "readinessProbe": {
            "httpGet": {
                "path": "/",
                "port": QUEUE_PORT,
                "httpHeaders": [{"name": "K-Network-Probe", "value": "queue"}],
            },
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    labels = {"app": app, "serving.knative.dev/revision": f"{app}-00001"}
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": TOLERATE_REAL,
                    "readinessGates": [{"conditionType": "pitstop.dev/serving"}],
                    # The queue-proxy drains for 30 s after its last request.
                    "terminationGracePeriodSeconds": 60,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "containers": [user, queue],
                },
            },
        },
    }
    cluster.apps.create_namespaced_deployment(ns, body)
    ports = [{"name": "http", "port": 80, "targetPort": QUEUE_PORT}]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app},
        "spec": {"selector": {"app": app}, "ports": ports},
    }
    cluster.core.create_namespaced_service(ns, service)
    wait_until(
        f"{replicas} {app} pods routed",
        lambda: len(ready_endpoints(cluster, ns, app)) == replicas,
        timeout=180,
    )


class Evictions:
    """When each pod of `app` got its deletionTimestamp, on the monotonic clock the
    load generator's records are on (seen through a watch: a little late, never early)."""

    def __init__(self, cluster: Cluster, ns: str, app: str):
        self.cluster, self.ns, self.app = cluster, ns, app
        self.at: dict[str, float] = {}
        self.error: Exception | None = None
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Evictions:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._watch.stop()

    def _run(self) -> None:
        stream = self._watch.stream(
            self.cluster.core.list_namespaced_pod,
            self.ns,
            label_selector=f"app={self.app}",
            timeout_seconds=600,
        )
        try:
            for event in stream:
                pod = event["object"]
                if pod.metadata.deletion_timestamp is not None:
                    self.at.setdefault(pod.metadata.name, time.monotonic())
        except Exception as e:  # ends with the cluster; a test still waiting fails on `at`
            self.error = e


def stat_count(pod_ip: str) -> int:
    """The queue-proxy's own Stat, read as pitstop reads it."""
    with urllib.request.urlopen(f"http://{pod_ip}:{STATS_PORT}/metrics", timeout=2) as answer:
        return parse_knative_stat(answer.read())


def test_knative_revision_drains_on_the_queue_proxys_own_count(
    cluster: Cluster,
    namespace: str,
    images: None,
    profile: str,
    repairs: Repairs,
) -> None:
    node = cluster.core.list_node(label_selector="type=real").items[0].metadata.name
    app = f"kn-{uuid.uuid4().hex[:6]}"
    revision(cluster, namespace, node, app, replicas=2)
    pods = {
        p.metadata.name: p.status.pod_ip
        for p in cluster.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    }
    config = LoadConfig(
        rate=8,
        count=100_000,
        duration=90,
        ms=(2000, 5000),
        allowed_networks=(POD_NETWORK,),
    )
    load = BackgroundLoad(
        config, api=cluster.api, namespace=namespace, service=app, port_name="http"
    )
    with Evictions(cluster, namespace, app) as evictions, load as running:
        time.sleep(4)
        # Under load the queue-proxy's window is busy, as pitstop reads it.
        busy = {name: stat_count(ip) for name, ip in pods.items()}
        assert all(n >= 1 for n in busy.values()), busy
        name = repairs.create(node, drain={"taskTimeoutSeconds": 120, "onTaskTimeout": "Fail"})
        status = repairs.wait_phase(name, "Repairing", timeout=150)
        wait_until("both pods evicted", lambda: set(pods) <= set(evictions.at), timeout=30)
        summary = running.stop()
        generator = running.generator
    assert generator is not None
    print(f"\n{summary.text()}\nqueue-proxy counts under load: {busy}")
    assert summary.clean, summary.text()
    assert summary.ok >= 20, summary.text()
    assert cond(status, "TasksDrained")["reason"] == "TasksDrained", status
    # The drain had requests to wait for: each pod left routing with some in flight
    # (else "ended before the eviction" below would hold without any waiting).
    assert set(summary.in_flight_at_leave) == set(pods), summary.text()
    assert all(n >= 1 for n in summary.in_flight_at_leave.values()), summary.text()
    for pod, evicted in evictions.at.items():
        served = [r for r in generator.records if r.pod == pod]
        assert served, f"{pod} served no request"
        last_end = max(generator.t0 + r.ended for r in served)
        # Requests last 2 to 5 s: evicting on a count that read 0 too early would
        # land while one of them was still being served.
        assert last_end < evicted, (
            f"{pod} evicted {last_end - evicted:.2f}s before its last request ended"
        )
