"""The chaos tier: its own local control plane (no real node; the pool's fake nodes
are made by the test), whose kube-apiserver and etcd the test restarts (a second
API server, never restarted, serves the checker), with the e2e tier's fixtures
(namespace, pool, the operator with its ServiceAccount's RBAC).

PITSTOP_KEEP_CLUSTER=1 leaves the cluster running afterwards. An existing cluster
(PITSTOP_KUBECONFIG) cannot be used: the test must restart its components."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.conftest import namespace, operator, pool, running_operator
from tests.e2e.kube import Cluster, ClusterFailed, local_cluster

__all__ = ["namespace", "operator", "pool", "running_operator"]

pytestmark = pytest.mark.e2e


SUMMARY: list[str] = []
"""The soak's figures, printed at the end of the run (the test's own output is captured)."""


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in SUMMARY:
        terminalreporter.write_line(line)


@dataclass(frozen=True)
class ControlPlane:
    cluster: Cluster
    state: str
    """PITSTOP_CLUSTER_DIR of the cluster: what `hack/cluster.sh restart` needs."""

    @property
    def observer(self) -> Cluster:
        """The same cluster through the second API server, which the chaos never
        restarts: the checker's watches stay open across the first one's restarts."""
        return Cluster(f"{self.state}/observer.kubeconfig")


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    if os.environ.get("PITSTOP_KUBECONFIG"):
        pytest.skip("the chaos tier restarts the control plane: it starts its own")
    try:
        with local_cluster(0, 0, observer=True) as (made, state):
            yield ControlPlane(made, state)
    except ClusterFailed as e:
        pytest.exit(f"local control plane failed to start:\n{e}", returncode=1)


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane) -> Cluster:
    """The name the e2e fixtures ask for."""
    return control_plane.cluster
