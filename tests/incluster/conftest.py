"""The in-cluster tier: pitstop installed from manifests/ as a user would
(`kubectl apply -k`, only the image overridden), running as two Pods with the
mounted ServiceAccount token, on real nodes (kubelet + containerd), with the
project's function serving real requests.

E2E_KUBECONFIG=path  run against that cluster (kind, or any other) instead of
                     starting a local control plane; its nodes must already have
                     the images ($PITSTOP_IMAGE, localhost/pitstop-function:dev)
                     loaded.
PITSTOP_IMAGE        the operator image (default: the one `make image` builds here)
PITSTOP_KEEP_CLUSTER=1  leave the started cluster running

The local control plane is started with PITSTOP_REAL_NODES=2 (the function moves
from the node under repair to the other) and no kwok node: tests add tainted
kwok nodes of their own, so that nothing of the operator lands on a fake node."""

from __future__ import annotations

import os
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.e2e.kube import REPO, Cluster, ClusterFailed, local_cluster, wait_until

pytestmark = pytest.mark.incluster

NAMESPACE = "pitstop-system"
OPERATOR_LABELS = "app.kubernetes.io/name=pitstop,app.kubernetes.io/component=operator"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    given = os.environ.get("E2E_KUBECONFIG")
    if given:
        yield Cluster(given)
        return
    real = int(os.environ.get("PITSTOP_REAL_NODES", "2"))
    try:
        # The CRDs come with manifests/, as a user installs them.
        with local_cluster(0, real, crds=False, prefix="incluster") as (made, state):
            yield _prepared(made, state)
    except ClusterFailed as e:
        pytest.exit(f"local control plane failed to start:\n{e}", returncode=1)


def _prepared(cluster: Cluster, state: str) -> Cluster:
    """The local cluster as a platform team has it: no taint of ours on its real nodes
    (the e2e session taints its real node to keep kwok-test pods off it), and the
    images of the operator and the function built and loaded."""
    cluster.kubectl("taint", "nodes", "-l", "type=real", "pitstop.dev/real-node-")
    env = {**os.environ, "PITSTOP_CLUSTER_DIR": state}
    built = []
    for command in (
        ["hack/build-image.sh"],
        ["make", "-s", "function"],
        ["function/build-image.sh"],
    ):
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800
        )
        if done.returncode != 0:
            pytest.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}", returncode=1)
        built.append(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "")
    os.environ.setdefault("PITSTOP_IMAGE", built[0])
    return cluster


def local(cluster: Cluster) -> bool:
    """Whether the cluster is the local control plane (whose nodes' processes this
    machine can see and whose pod addresses it can reach)."""
    return not os.environ.get("E2E_KUBECONFIG")


@pytest.fixture(scope="session")
def installed(cluster: Cluster) -> Iterator[list[client.V1Pod]]:
    """manifests/ applied with only the image overridden; yields the operator Pods
    once the Deployment is available (both replicas Ready)."""
    name, _, tag = os.environ.get("PITSTOP_IMAGE", "localhost/pitstop:dev").rpartition(":")
    # Inside the repository: kustomize refuses a base given by an absolute path.
    (REPO / "build").mkdir(exist_ok=True)
    overlay = Path(tempfile.mkdtemp(prefix="overlay-", dir=REPO / "build"))
    (overlay / "kustomization.yaml").write_text(
        textwrap.dedent(f"""\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources:
          - {os.path.relpath(REPO / "manifests", overlay)}
        images:
          - name: pitstop
            newName: {name}
            newTag: "{tag}"
        """)
    )
    # CRDs are large: server-side apply, as the README says.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(overlay))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/noderepairs.pitstop.dev",
        "crd/repairpolicies.pitstop.dev",
        "crd/instanceprofiles.pitstop.dev",
        "crd/noderepairremediations.pitstop.dev",
        "crd/noderepairremediationtemplates.pitstop.dev",
    )
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deployment/pitstop", "--timeout=300s")
    yield operator_pods(cluster)
    if not os.environ.get("PITSTOP_KEEP_CLUSTER"):
        cluster.kubectl(
            "delete", "-k", str(overlay), "--ignore-not-found", "--wait=false", check=False
        )


def operator_pods(cluster: Cluster) -> list[client.V1Pod]:
    pods = cluster.core.list_namespaced_pod(NAMESPACE, label_selector=OPERATOR_LABELS).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def lease_holder(cluster: Cluster) -> str | None:
    lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease("pitstop", NAMESPACE)
    return lease.spec.holder_identity


def wait_holder(cluster: Cluster, among: set[str], timeout: float = 60) -> str:
    return wait_until(
        f"a Lease holder among {sorted(among)}",
        lambda: (h := lease_holder(cluster)) in among and h,
        timeout=timeout,
    )
