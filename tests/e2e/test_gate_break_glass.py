"""The serving gate's break-glass on a real API server: with the operator stopped, new
gated pods stay not Ready; `pitstop gate open --all`, run with nothing but the
shipped pitstop-break-glass ClusterRole, opens them, and leaves closed the gate of
a pod whose node is under a repair past deregistration (invariant 2)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.helpers import make_pool
from tests.e2e.kube import REPO, Cluster, wait_until
from tests.e2e.repairs import Repairs
from tests.e2e.test_cli import kubeconfig_of
from tests.e2e.workloads import (
    deployment,
    is_ready,
    ready_endpoints,
    ready_pods,
    running_pods,
    service,
)

pytestmark = pytest.mark.e2e

PITSTOP = REPO / ".venv" / "bin" / "pitstop"
GATE = "pitstop.dev/serving"
INFLIGHT = "pitstop.dev/inflight-tasks"


def gate_of(pod: client.V1Pod) -> Any:
    return next((c for c in pod.status.conditions or [] if c.type == GATE), None)


@pytest.fixture
def oncall(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[str]:
    """A kubeconfig of a fresh ServiceAccount bound to pitstop-break-glass alone."""
    account = f"oncall-{uuid.uuid4().hex[:6]}"
    path = kubeconfig_of(cluster, namespace, account, tmp_path / account)
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=f"{namespace}-{account}"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io",
                kind="ClusterRole",
                name="pitstop-break-glass",
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)
            ],
        )
    )
    who = f"system:serviceaccount:{namespace}:{account}"
    wait_until(  # the authorizer learns bindings from its informers
        "the binding in force",
        lambda: (
            cluster.kubectl(
                "auth", "can-i", f"--as={who}", "patch", "pods", "--subresource=status", check=False
            ).stdout.strip()
            == "yes"
        ),
        timeout=30,
    )
    yield path
    rbac.delete_cluster_role_binding(f"{namespace}-{account}")


def gate_open(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PITSTOP), "gate", "open", *args, "--kubeconfig", kubeconfig],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_break_glass_opens_new_pods_and_keeps_a_deregistered_one_closed(
    cluster: Cluster,
    namespace: str,
    pool: Any,
    repairs: Repairs,
    running_operator: Any,
    oncall: str,
) -> None:
    under_repair, free = make_pool(cluster, pool), make_pool(cluster, pool)
    # A routed sync instance with a task in flight: its repair closes its gate and
    # waits (WaitingForTasks, past deregistration).
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("held", 1, under_repair.selector, gated=True)
    )
    service(cluster, namespace, "held")
    (held,) = ready_pods(cluster, namespace, "held", 1)
    wait_until("held routed", lambda: len(ready_endpoints(cluster, namespace, "held")) == 1)
    cluster.core.patch_namespaced_pod(
        held.metadata.name, namespace, {"metadata": {"annotations": {INFLIGHT: "1"}}}
    )
    name = repairs.create(under_repair.names[0])
    repairs.wait_phase(name, "WaitingForTasks")
    kubeconfig = oncall

    running_operator.stop()
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("fresh", 3, free.selector, gated=True)
    )
    fresh = running_pods(cluster, namespace, "fresh", 3)
    time.sleep(3)  # time the operator would have needed many times over
    fresh = [cluster.core.read_namespaced_pod(p.metadata.name, namespace) for p in fresh]
    assert [(gate_of(p), is_ready(p)) for p in fresh] == [(None, False)] * 3

    # Within the test's namespace: gated pods other tests left elsewhere are opened
    # too, and would change the lines and the counts this test reads.
    dry = gate_open(kubeconfig, "--all", "-n", namespace, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert all(
        gate_of(cluster.core.read_namespaced_pod(p.metadata.name, namespace)) is None for p in fresh
    ), "a dry run writes nothing"

    proc = gate_open(kubeconfig, "--all", "-n", namespace)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    lines = proc.stdout.splitlines()
    node = under_repair.names[0]
    assert lines[0] == (
        f"held       {namespace}/{held.metadata.name}: node {node} is under NodeRepair"
        f" {name} (WaitingForTasks), past deregistration"
    ), lines
    for p in fresh:
        assert f"opened     {namespace}/{p.metadata.name}: node {free.names[0]}" in lines, lines
    assert lines[-1] == "3 opened, 1 held (a repair past deregistration), 0 skipped, 0 failed"

    opened = ready_pods(cluster, namespace, "fresh", 3, timeout=30)
    for p in opened:
        cond = gate_of(p)
        assert (cond.status, cond.reason) == ("True", "BreakGlass"), cond

    # The held pod's gate stays as its repair closed it, and it is not routed.
    still = cluster.core.read_namespaced_pod(held.metadata.name, namespace)
    assert (gate_of(still).status, gate_of(still).reason) == ("False", "NodeRepair")
    assert held.metadata.name not in ready_endpoints(cluster, namespace, "held")
    # Named alone, it is refused in one line.
    one = gate_open(kubeconfig, held.metadata.name, "-n", namespace)
    assert one.returncode == 1 and one.stdout == "", (one.stdout, one.stderr)
    assert one.stderr.startswith(f"pitstop: error: held {namespace}/{held.metadata.name}: node"), (
        one.stderr
    )
    # Opening again changes nothing: every gate is open or held.
    again = gate_open(kubeconfig, "--all", "-n", namespace)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == (
        "0 opened, 1 held (a repair past deregistration), 0 skipped, 0 failed"
    )


def test_without_the_role_nothing_is_opened(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    nobody = kubeconfig_of(cluster, namespace, "nobody", tmp_path / "nobody")
    proc = gate_open(nobody, "--all")
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert proc.stderr.startswith("pitstop: error: cannot list nodes: "), proc.stderr
    assert "forbidden" in proc.stderr
