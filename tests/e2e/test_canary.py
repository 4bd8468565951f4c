"""verify.canary on the real control plane (issue 22, item 5): once the repaired
node's conditions held, a pod pitstop runs on it (in pitstop-system, as
pitstop-repair, with the operator's own RBAC) must reach Succeeded before the node
is uncordoned. kwok runs the canary pod as it runs a Job's
(hack/kwok/pod-stages.yaml): it succeeds after `sim.pitstop.dev/run-duration`, or
fails when annotated `sim.pitstop.dev/exit-code` != "0"."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError

from tests.e2e.helpers import cond, make_pool, wait_event
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import GROUP, VERSION, Repairs, node_markers

pytestmark = pytest.mark.e2e

NS = "pitstop-system"
LOCK = "pitstop.dev/repair"
RELEASED = {"unschedulable": False, "taint": False, "lock": None}
MANUAL_OK = {"strategy": "Manual", "timeoutSeconds": 60}


def held(name: str) -> dict[str, Any]:
    return {"unschedulable": True, "taint": True, "lock": name}


def verify(run: str = "1s", exit_code: int = 0, timeout: int = 30) -> dict[str, Any]:
    annotations = {"sim.pitstop.dev/run-duration": run, "sim.pitstop.dev/exit-code": str(exit_code)}
    return {
        "conditions": [{"type": "Ready", "status": "True"}],
        "stableSeconds": 1,
        "timeoutSeconds": 30,
        "canary": {
            "timeoutSeconds": timeout,
            "pod": {
                "metadata": {"labels": {"team": "e2e"}, "annotations": annotations},
                "spec": {"containers": [{"name": "probe", "image": "fake"}]},
            },
        },
    }


def canary_pods(cluster: Cluster, repair: str) -> list[Any]:
    return list(
        cluster.core.list_namespaced_pod(
            NS, label_selector=f"{LOCK}={repair},pitstop.dev/canary=true"
        ).items
    )


def pod_gone(cluster: Cluster, name: str) -> bool:
    try:
        pod = cluster.core.read_namespaced_pod(name, NS)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return pod.metadata.deletion_timestamp is not None


@contextmanager
def canaries_seen(cluster: Cluster, repair: str) -> Iterator[dict[str, dict[str, Any]]]:
    """Every canary pod of `repair` created while in the block, by uid: its name,
    node, and whether the node was cordoned when the pod was first seen."""
    seen: dict[str, dict[str, Any]] = {}
    w = watch.Watch()
    done = threading.Event()

    def run() -> None:
        while not done.is_set():
            try:
                for event in w.stream(
                    cluster.core.list_namespaced_pod,
                    NS,
                    label_selector=f"{LOCK}={repair}",
                    timeout_seconds=2,
                ):
                    pod = event["object"]
                    if pod.metadata.uid in seen:
                        continue
                    node = cluster.core.read_node(pod.spec.node_name)
                    seen[pod.metadata.uid] = {
                        "name": pod.metadata.name,
                        "node": pod.spec.node_name,
                        "cordoned": bool(node.spec.unschedulable),
                    }
            except (ProtocolError, ApiException):
                continue  # stopped, or broken: listed again (seen by uid), so none is missed

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        w.stop()
        thread.join(timeout=10)


def declare_repaired(cluster: Cluster, repairs: Repairs, name: str) -> None:
    repairs.wait_phase(name, "Repairing", timeout=40)
    cluster.custom.patch_cluster_custom_object(
        GROUP,
        VERSION,
        "noderepairs",
        name,
        {"metadata": {"annotations": {"pitstop.dev/repaired": "true"}}},
    )


def test_a_passing_canary_returns_the_node(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    node = make_pool(cluster, pool).names[0]
    name = f"r-{uuid.uuid4().hex[:8]}"
    with canaries_seen(cluster, name) as seen:
        repairs.create(node, name=name, repair=MANUAL_OK, verify=verify(run="2s"))
        declare_repaired(cluster, repairs, name)
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=60)
    assert status["phase"] == "Succeeded", status
    canary = status["verify"]["canary"]
    assert canary["result"] == "Passed" and canary["reason"] == "CanaryPassed", canary
    uid = repairs.get(name)["metadata"]["uid"]
    assert canary["pod"] == f"pitstop-canary-{uid}-s1a1"
    assert "succeeded" in cond(status, "Verified")["message"]
    assert node_markers(cluster, node) == RELEASED
    # It ran on the node while the node was still cordoned, once.
    assert [(s["name"], s["node"], s["cordoned"]) for s in seen.values()] == [
        (canary["pod"], node, True)
    ], seen
    wait_event(cluster, name, "CanaryPassed", type_="Normal")
    wait_until(f"canary {canary['pod']} deleted", lambda: pod_gone(cluster, canary["pod"]))


def test_a_failing_canary_keeps_the_node_cordoned(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    node = make_pool(cluster, pool).names[0]
    name = f"r-{uuid.uuid4().hex[:8]}"
    repairs.create(node, name=name, repair=MANUAL_OK, verify=verify(exit_code=1))
    declare_repaired(cluster, repairs, name)
    status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=60)
    assert status["phase"] == "Failed", status
    canary = status["verify"]["canary"]
    assert canary["result"] == "Failed" and canary["reason"] == "CanaryFailed", canary
    assert "probe exited 1" in canary["message"], canary
    verified = cond(status, "Verified")
    assert (verified["status"], verified["reason"]) == ("False", "CanaryFailed"), verified
    assert "CanaryFailed" in status["repair"]["lastError"], status
    # A failed verification: the repair failed and keeps its node (KeepCordoned).
    assert node_markers(cluster, node) == held(name)
    wait_event(cluster, name, "CanaryFailed")
    wait_until(f"canary {canary['pod']} deleted", lambda: pod_gone(cluster, canary["pod"]))


def test_a_restarted_operator_finds_its_canary(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    """Invariant 6: the operator killed while the canary runs; the new one finds the
    same pod (deterministic name) and makes no second."""
    node = make_pool(cluster, pool).names[0]
    name = f"r-{uuid.uuid4().hex[:8]}"
    with canaries_seen(cluster, name) as seen:
        repairs.create(node, name=name, repair=MANUAL_OK, verify=verify(run="8s"))
        declare_repaired(cluster, repairs, name)
        wait_until("canary pod created", lambda: canary_pods(cluster, name), timeout=30)
        running_operator.kill()
        assert repairs.phase(name) == "Verifying"
        running_operator.start()
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=90)
    assert status["phase"] == "Succeeded", status
    assert len(seen) == 1, seen
    assert node_markers(cluster, node) == RELEASED


def test_deleting_the_repair_during_its_canary_deletes_the_canary(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    node = make_pool(cluster, pool).names[0]
    name = f"r-{uuid.uuid4().hex[:8]}"
    repairs.create(node, name=name, repair=MANUAL_OK, verify=verify(run="120s", timeout=300))
    declare_repaired(cluster, repairs, name)
    pods = wait_until("canary pod created", lambda: canary_pods(cluster, name), timeout=30)
    pod = pods[0].metadata.name
    repairs.delete(name)
    wait_until(f"canary {pod} deleted", lambda: pod_gone(cluster, pod), timeout=30)
    assert node_markers(cluster, node) == RELEASED


def test_a_canary_outside_the_admins_grants_fails_before_the_node_is_touched(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    """Invariant 8: the canary pod runs only as a ServiceAccount the admin labelled
    for repairs (as a repair Job's pod). Asking for another fails the repair while
    Pending: the node never cordoned, no pod made; the admin's label lets it run."""
    nodes = make_pool(cluster, pool, 2).names
    sa = f"e2e-canary-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespaced_service_account(
        NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=sa))
    )
    try:
        spec = verify()
        spec["canary"]["pod"]["spec"]["serviceAccountName"] = sa
        name = repairs.create(nodes[0], repair=MANUAL_OK, verify=spec)
        status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=30)
        assert status["phase"] == "Failed", status
        repaired = cond(status, "Repaired")
        assert (repaired["status"], repaired["reason"]) == ("False", "CanaryNotAllowed")
        assert f"{NS}/{sa} is not allowed" in repaired["message"], repaired
        assert "pitstop.dev/repair-allowed=true" in repaired["message"], "says how to allow it"
        assert node_markers(cluster, nodes[0]) == RELEASED, "the node was never cordoned"
        assert not canary_pods(cluster, name), "nothing was run"

        cluster.core.patch_namespaced_service_account(
            sa, NS, {"metadata": {"labels": {"pitstop.dev/repair-allowed": "true"}}}
        )
        name = repairs.create(nodes[1], repair=MANUAL_OK, verify=spec)
        declare_repaired(cluster, repairs, name)
        pods = wait_until(f"a canary of {name}", lambda: canary_pods(cluster, name), timeout=30)
        assert pods[0].spec.service_account_name == sa
        assert pods[0].spec.node_name == nodes[1]
        assert repairs.wait_phase(name, "Succeeded", "Failed", timeout=60)["phase"] == "Succeeded"
    finally:
        cluster.core.delete_namespaced_service_account(sa, NS)


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ({"timeoutSeconds": 0}, "canary.timeoutSeconds must be between 1 and 3600"),
        ({"timeoutSeconds": 7200}, "canary.timeoutSeconds must be between 1 and 3600"),
        ({"pod": {"spec": {"nodeName": "elsewhere"}}}, "leave nodeName unset"),
        ({"pod": {"spec": {"restartPolicy": "Always"}}}, "restartPolicy"),
        ({"pod": {"spec": {"serviceAccountName": "pitstop"}}}, "operator's own ServiceAccount"),
    ],
)
def test_bad_canaries_are_refused_at_admission(
    cluster: Cluster, canary: dict[str, Any], message: str
) -> None:
    """The CRD's schema and CEL rules (from the models) refuse them: never stored."""
    spec = verify()
    spec["canary"] = spec["canary"] | canary
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NodeRepair",
        "metadata": {"name": f"bad-{uuid.uuid4().hex[:8]}"},
        "spec": {"nodeName": "nowhere", "verify": spec},
    }
    with pytest.raises(ApiException) as refused:
        cluster.custom.create_cluster_custom_object(GROUP, VERSION, "noderepairs", body)
    assert refused.value.status == 422, refused.value.body
    assert message in refused.value.body, refused.value.body
