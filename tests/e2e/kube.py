"""Small helpers for e2e tests against the local control plane: waiting with a
deadline, fake nodes, and a kubectl runner. Every wait has a timeout."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1
) -> T:
    """Calls `probe` until it returns something truthy; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


@dataclass(frozen=True)
class Pool:
    """Fake nodes made for one test; `selector` pins pods to them."""

    names: list[str]
    selector: dict[str, str]


@dataclass
class Cluster:
    """The control plane under test, reached with the admin kubeconfig."""

    kubeconfig: str
    api: client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api = config.new_client_from_config(config_file=self.kubeconfig)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def create_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A fake node that kwok keeps alive (it selects nodes by this annotation)."""
        body = client.V1Node(
            metadata=client.V1ObjectMeta(
                name=name,
                annotations={"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                labels={
                    "type": "kwok",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    **(labels or {}),
                },
            )
        )
        self.core.create_node(body)

    def node_ready(self, name: str) -> bool:
        node = self.core.read_node(name)
        return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


class ClusterFailed(RuntimeError):
    """hack/cluster.sh could not start the control plane (its stderr is the message)."""


@contextmanager
def local_cluster(
    nodes: int, real_nodes: int, observer: bool = False, crds: bool = True, prefix: str = "e2e"
) -> Iterator[tuple[Cluster, str]]:
    """A fresh local control plane (hack/cluster.sh) with `nodes` fake and `real_nodes`
    real nodes and, if `crds`, the CRDs installed, in its own state directory, which is
    yielded too (`hack/cluster.sh restart` needs it); stopped afterwards unless
    PITSTOP_KEEP_CLUSTER. `observer` adds a second API server for checkers
    (`<state>/observer.kubeconfig`)."""
    state = tempfile.mkdtemp(prefix=f"pitstop-{prefix}-")
    env = {
        **os.environ,
        "PITSTOP_CLUSTER_DIR": state,
        "PITSTOP_NODES": str(nodes),
        "PITSTOP_REAL_NODES": str(real_nodes),
        "PITSTOP_OBSERVER_APISERVER": "1" if observer else "0",
    }
    up = subprocess.run(
        [str(REPO / "hack/cluster.sh"), "up"], env=env, capture_output=True, text=True, timeout=3600
    )
    if up.returncode != 0:
        subprocess.run([str(REPO / "hack/cluster.sh"), "down"], env=env, timeout=120)
        raise ClusterFailed(up.stderr)
    try:
        made = Cluster(f"{state}/admin.kubeconfig")
        yield (install_crds(made) if crds else made), state
    finally:
        if os.environ.get("PITSTOP_KEEP_CLUSTER"):
            print(f"\ncluster kept: kubectl --kubeconfig {state}/admin.kubeconfig get nodes")
        else:  # real nodes take longer to stop than kwok's
            subprocess.run([str(REPO / "hack/cluster.sh"), "down"], env=env, timeout=300)


def install_crds(cluster: Cluster) -> Cluster:
    """Installs the CRDs from crds/ and waits until they are served."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "crds"))
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
    return cluster
