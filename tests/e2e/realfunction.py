"""The project's function runtime (function/) on the local cluster's real nodes, as
a platform team installs it: its image built here and imported into the nodes'
containerd, function/deploy.yaml (Deployment with the serving gate, Service, PDB)
and its InstanceProfile. Shared by the in-cluster tier and `make demo`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml
from kubernetes import client

from tests.e2e.kube import REPO, Cluster, wait_until

IMAGE = "localhost/pitstop-function:dev"
APP = "pitstop-function"  # deploy.yaml's Deployment, Service and PDB
PROFILE = REPO / "manifests/examples/instanceprofile-pitstop-function.yaml"
POD_NETWORK = "10.90.0.0/16"  # the real nodes' pod CIDRs: this machine's own bridges


def real_nodes(cluster: Cluster) -> list[str]:
    return sorted(n.metadata.name for n in cluster.core.list_node(label_selector="type=real").items)


def build_image(cluster_dir: Path) -> str:
    """Builds the function and its image, imported into the real nodes of the
    cluster whose state is in cluster_dir."""
    for command in (["make", "-s", "function"], [str(REPO / "function/build-image.sh")]):
        done = subprocess.run(
            command,
            cwd=REPO,
            env={**os.environ, "PITSTOP_CLUSTER_DIR": str(cluster_dir), "IMAGE": IMAGE},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return IMAGE


def deploy(cluster: Cluster, ns: str, replicas: int, workdir: Path) -> None:
    """function/deploy.yaml into ns with `replicas` pods on the real nodes only (a
    kwok node would give them addresses that route nowhere), and its profile;
    returns once every replica is available."""
    docs = [d for d in yaml.safe_load_all((REPO / "function/deploy.yaml").read_text()) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = replicas
            pod = doc["spec"]["template"]["spec"]
            pod["nodeSelector"] = {"type": "real"}
            # The local cluster's real nodes keep kwok-test pods off with this taint.
            pod["tolerations"] = [
                {"key": "pitstop.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}
            ]
    path = workdir / f"function-{ns}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    cluster.kubectl("apply", "-f", str(PROFILE))
    cluster.kubectl("-n", ns, "apply", "-f", str(path))
    wait_until(
        f"{replicas} function pods available",
        lambda: available(cluster, ns, replicas),
        timeout=180,
    )


def pods(cluster: Cluster, ns: str) -> list[client.V1Pod]:
    listed = cluster.core.list_namespaced_pod(ns, label_selector=f"app={APP}").items
    return [p for p in listed if p.metadata.deletion_timestamp is None]


def available(cluster: Cluster, ns: str, replicas: int) -> bool:
    status = cluster.apps.read_namespaced_deployment(APP, ns).status
    return (status.available_replicas or 0) >= replicas and (
        status.updated_replicas or 0
    ) >= replicas


def busiest_node(cluster: Cluster, ns: str) -> str:
    """The real node with the most function pods: its repair moves the most work."""
    counts = {n: 0 for n in real_nodes(cluster)}
    for pod in pods(cluster, ns):
        if pod.spec.node_name in counts:
            counts[pod.spec.node_name] += 1
    return max(counts, key=lambda n: (counts[n], n))
