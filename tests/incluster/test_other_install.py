"""The install method the whole tier does not use (kubectl apply -k manifests/, or
the chart with PITSTOP_INSTALL=kustomize), checked briefly before it: both replicas
Ready on real nodes, one leader and one standby, a repair completed, no permission
error; then uninstalled completely (conftest runs this module first)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.e2e.kube import Cluster
from tests.incluster.checks import (
    assert_no_permission_errors,
    one_leader_one_standby,
    repair_a_node,
)
from tests.incluster.conftest import OTHER, installation

pytestmark = pytest.mark.incluster


@pytest.fixture(scope="module")
def other(cluster: Cluster) -> Iterator[list[client.V1Pod]]:
    with installation(cluster, OTHER, keep=False, wait=True) as pods:
        yield pods


def test_installs_leads_and_repairs(cluster: Cluster, other: list[client.V1Pod]) -> None:
    assert len(other) == 2, [p.metadata.name for p in other]
    for pod in other:
        node = cluster.core.read_node(pod.spec.node_name)
        assert node.metadata.labels.get("type") != "kwok", f"{pod.metadata.name} on a fake node"
    one_leader_one_standby(cluster)
    repair_a_node(cluster)
    assert_no_permission_errors(cluster)
