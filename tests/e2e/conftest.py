"""The e2e session: a real control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok) started by hack/cluster.sh on free
loopback ports, with one real node (PITSTOP_REAL_NODES, default 1), the CRDs
installed, and per-test namespaces and node pools.

PITSTOP_KUBECONFIG=path  use an already running cluster instead of starting one
PITSTOP_KEEP_CLUSTER=1   leave the started cluster running after the session
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from tests.e2e.kube import Cluster, ClusterFailed, Pool, install_crds, local_cluster, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import Repairs
from tests.e2e.sa import operator_kubeconfig

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    given = os.environ.get("PITSTOP_KUBECONFIG")
    if given:
        yield install_crds(Cluster(given))
        return
    try:
        with local_cluster(3, int(os.environ.get("PITSTOP_REAL_NODES", "1"))) as (made, _):
            yield made
    except ClusterFailed as e:
        pytest.exit(f"local control plane failed to start:\n{e}", returncode=1)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_until(
        f"default ServiceAccount in {name}",
        lambda: cluster.core.list_namespaced_service_account(name).items,
    )
    yield name
    cluster.core.delete_namespace(name)


@pytest.fixture
def pool(cluster: Cluster) -> Iterator[Callable[[int], Pool]]:
    """Makes fake nodes for one test, labelled `pool=<id>` so its pods can be pinned
    to them with `pool.selector`; deletes them afterwards."""
    made: list[str] = []

    def make(count: int) -> Pool:
        pool_id = uuid.uuid4().hex[:6]
        names = [f"n-{pool_id}-{i}" for i in range(count)]
        for name in names:
            cluster.create_node(name, {"pool": pool_id})
            made.append(name)
        for name in names:
            wait_until(f"node {name} Ready", lambda n=name: cluster.node_ready(n), timeout=30)
            # ... and rid of the node controller's not-ready taint, which spreading honours
            wait_until(
                f"node {name} untainted",
                lambda n=name: not cluster.core.read_node(n).spec.taints,
                timeout=30,
            )
        return Pool(names=names, selector={"pool": pool_id})

    yield make
    for name in made:
        cluster.core.delete_node(name)


@pytest.fixture(scope="session")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """One `pitstop run` for the session, with the ServiceAccount's permissions
    (manifests/rbac), not the admin's. Tests may kill it; it is restarted for the next."""
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = operator_kubeconfig(cluster.kubeconfig, str(workdir / "sa.kubeconfig"))
    # No rate limit on the receiver: test_bad_input fuzzes it with hundreds of
    # requests from one address (the limit is tested in tests/unit/test_alert_receiver.py).
    op = Operator(kubeconfig, workdir / "operator.log", "--alerts-rate", "0")
    op.start()
    yield op
    op.stop()
    print(f"\noperator log: {op.log}")


@pytest.fixture
def running_operator(operator: Operator) -> Operator:
    operator.ensure_running()
    return operator


@pytest.fixture
def repairs(
    cluster: Cluster, running_operator: Operator, pool: Callable[[int], Pool]
) -> Iterator[Repairs]:
    """NodeRepairs of one test, deleted afterwards (the operator runs their finalizers)
    before the test's nodes go (`pool` is set up first, so torn down last)."""
    made = Repairs(cluster)
    yield made
    running_operator.ensure_running()
    made.cleanup()
