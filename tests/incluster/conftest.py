"""The in-cluster tier: pitstop installed as a user would, only the image
overridden, running as two Pods with the mounted ServiceAccount token, on real
nodes (kubelet + containerd), with the project's function serving real requests.

Two install methods, one cluster: the whole tier runs on the chart (`helm install
pitstop charts/pitstop -n pitstop-system --create-namespace`); first, a shorter
check (test_other_install.py: install, one leader, a repair, no permission error,
uninstall) runs on `kubectl apply -k manifests/`. PITSTOP_INSTALL=kustomize swaps
them.

E2E_KUBECONFIG=path  run against that cluster (kind, or any other) instead of
                     starting a local control plane; its nodes must already have
                     the images ($PITSTOP_IMAGE, localhost/pitstop-function:dev)
                     loaded.
E2E_NODES_ON_HOST=1  that cluster's nodes run on this machine, which routes to their
                     pod addresses and sees their processes (hack/e2e-kind.sh with
                     its own Docker daemon): the tests that need either run too.
PITSTOP_IMAGE        the operator image (default: the one `make image` builds here)
PITSTOP_INSTALL      helm (default) or kustomize: how the whole tier installs pitstop
PITSTOP_KEEP_CLUSTER=1  leave the started cluster (and the whole tier's install) running

The local control plane is started with PITSTOP_REAL_NODES=2 (the function moves
from the node under repair to the other) and no kwok node: tests add tainted
kwok nodes of their own, so that nothing of the operator lands on a fake node."""

from __future__ import annotations

import os
import subprocess
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kubernetes import client

from tests import chart
from tests.e2e.kube import REPO, Cluster, ClusterFailed, local_cluster, wait_until

pytestmark = pytest.mark.incluster

NAMESPACE = "pitstop-system"
OPERATOR_LABELS = "app.kubernetes.io/name=pitstop,app.kubernetes.io/component=operator"
CRDS = (
    "noderepairs",
    "repairpolicies",
    "instanceprofiles",
    "noderepairremediations",
    "noderepairremediationtemplates",
)
METHODS = ("helm", "kustomize")
INSTALL = os.environ.get("PITSTOP_INSTALL", "helm")
if INSTALL not in METHODS:
    raise ValueError(f"PITSTOP_INSTALL={INSTALL!r}: one of {METHODS}")
OTHER = next(m for m in METHODS if m != INSTALL)
OTHER_MODULE = "test_other_install.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The other method's check first: it uninstalls completely before the whole
    tier's install, which stays until the session ends."""
    items.sort(key=lambda item: item.path.name != OTHER_MODULE)


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
    """Whether the cluster is the local control plane (with kwok for fake nodes)."""
    return not os.environ.get("E2E_KUBECONFIG")


def nodes_on_host(cluster: Cluster) -> bool:
    """Whether this machine sees the cluster's node processes and reaches its pod
    addresses: the local control plane, or a cluster whose nodes run here on a
    network this machine made (E2E_NODES_ON_HOST, set by hack/e2e-kind.sh)."""
    return local(cluster) or bool(os.environ.get("E2E_NODES_ON_HOST"))


def image() -> tuple[str, str]:
    name, _, tag = os.environ.get("PITSTOP_IMAGE", "localhost/pitstop:dev").rpartition(":")
    return name, tag


Uninstall = Callable[[bool], None]


def _kustomize(cluster: Cluster) -> Uninstall:
    """manifests/ with only the image overridden, applied as the README says."""
    name, tag = image()
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

    def uninstall(wait: bool) -> None:
        cluster.kubectl(
            "delete", "-k", str(overlay), "--ignore-not-found", f"--wait={str(wait).lower()}",
            "--timeout=100s", check=wait,
        )  # fmt: skip

    return uninstall


def helm(cluster: Cluster, *args: str) -> str:
    done = chart.run("helm", "--kubeconfig", cluster.kubeconfig, *args)
    assert done.returncode == 0, f"helm {' '.join(args)} failed: {done.stderr.strip()}"
    return done.stdout


def _helm(cluster: Cluster) -> Uninstall:
    """The chart with its defaults, as the README says, only the image overridden."""
    name, tag = image()
    helm(
        cluster, "install", chart.RELEASE, str(chart.CHART), "-n", NAMESPACE, "--create-namespace",
        "--set", f"image.repository={name}", "--set-string", f"image.tag={tag}",
    )  # fmt: skip

    def uninstall(wait: bool) -> None:
        # Helm leaves what it did not template: the CRDs (crds/) and the namespace.
        flag = f"--wait={str(wait).lower()}"
        helm(cluster, "uninstall", chart.RELEASE, "-n", NAMESPACE, *(["--wait"] if wait else []))
        for args in (["-f", str(chart.CHART / "crds")], ["namespace", NAMESPACE]):
            cluster.kubectl(
                "delete", *args, "--ignore-not-found", flag, "--timeout=100s", check=wait
            )

    return uninstall


@contextmanager
def installation(
    cluster: Cluster, method: str, *, keep: bool, wait: bool
) -> Iterator[list[client.V1Pod]]:
    """pitstop installed with `method`; yields the operator Pods once the Deployment
    is available (both replicas Ready). Afterwards uninstalled unless `keep`; with
    `wait`, until nothing of it is left (the next install starts clean)."""
    uninstall = {"helm": _helm, "kustomize": _kustomize}[method](cluster)
    try:
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            *(f"crd/{plural}.pitstop.dev" for plural in CRDS),
        )  # fmt: skip
        cluster.kubectl(
            "-n", NAMESPACE, "rollout", "status", "deployment/pitstop", "--timeout=300s"
        )
        yield operator_pods(cluster)
    finally:
        if not keep:
            uninstall(wait)


@pytest.fixture(scope="session")
def installed(cluster: Cluster) -> Iterator[list[client.V1Pod]]:
    """The whole tier's install (PITSTOP_INSTALL, default helm), removed at the end
    of the session (kept with PITSTOP_KEEP_CLUSTER)."""
    keep = bool(os.environ.get("PITSTOP_KEEP_CLUSTER"))
    with installation(cluster, INSTALL, keep=keep, wait=False) as pods:
        yield pods


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
