"""Edges of the drain on the real control plane: PodDisruptionBudgets, task
timeouts, a hand-uncordoned node, refused API writes, a busy or missing node, bad
task counts, sync pods without the serving gate, dry runs, aborts in every phase,
bursts of repairs for one node (invariant 5), a node that vanishes mid-repair
(invariant 7) and the metrics of a repair."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.barriers import decided_again
from tests.e2e.helpers import (
    cond,
    log_since,
    make_pdb,
    make_pool,
    make_service,
    node_pods,
    pdb_settled,
    relax_pdb,
    untainted,
    wait_event,
)
from tests.e2e.invariants import marks_left
from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import GROUP, PLURAL, VERSION, Repairs, node_markers
from tests.e2e.watching import watching
from tests.e2e.workloads import (
    GATE,
    deployment,
    pods,
    ready_endpoints,
    ready_pods,
    running_pods,
)

pytestmark = pytest.mark.e2e

INFLIGHT = "pitstop.dev/inflight-tasks"
DRAINING = "pitstop.dev/draining"
LOCK = "pitstop.dev/repair"
WAS_UNSCHEDULABLE = "pitstop.dev/was-unschedulable"
FINAL = ("Succeeded", "Failed", "Aborted")
RELEASED = {"unschedulable": False, "taint": False, "lock": None}


# --- helpers ---


SUMMARY = {"Ready", "Reconciling", "Stalled"}
"""kstatus' summary conditions, on every repair from its first write: they say how
far it got, not that a step touched anything."""


def step_conditions(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The conditions of the repair's steps (Cordoned, Deregistered, ...)."""
    return [c for c in status.get("conditions") or [] if c["type"] not in SUMMARY]


def deploy(
    cluster: Cluster,
    ns: str,
    name: str,
    replicas: int,
    p: Pool,
    gated: bool = False,
    labels: dict[str, str] | None = None,
) -> None:
    cluster.apps.create_namespaced_deployment(
        ns, deployment(name, replicas, p.selector, gated=gated, grace=1, labels=labels)
    )


def set_tasks(cluster: Cluster, ns: str, pod: str, value: str | None) -> None:
    cluster.core.patch_namespaced_pod(pod, ns, {"metadata": {"annotations": {INFLIGHT: value}}})


def live(pods_: list[client.V1Pod]) -> list[client.V1Pod]:
    return [x for x in pods_ if x.metadata.deletion_timestamp is None]


def serving(pod: client.V1Pod) -> str | None:
    for c in pod.status.conditions or []:
        if c.type == GATE:
            return str(c.status)
    return None


def gated(pod: client.V1Pod) -> bool:
    return any(g.condition_type == GATE for g in pod.spec.readiness_gates or [])


def node_annotations(cluster: Cluster, node: str) -> dict[str, str]:
    return dict(cluster.core.read_node(node).metadata.annotations or {})


def wait_condition(
    repairs: Repairs, name: str, type_: str, reason: str, timeout: float = 30
) -> dict[str, Any]:
    found: dict[str, Any] = wait_until(
        f"{name} condition {type_} reason {reason}",
        lambda: (c := repairs.condition(name, type_)) and c["reason"] == reason and c,
        timeout=timeout,
    )
    return found


def assert_released(cluster: Cluster, ns: str, node: str, cordoned_before: bool = False) -> None:
    """The node is given back: untainted, unlocked, uncordoned unless it was cordoned
    before, and what is left on it carries no drain signal, its gate open again."""
    assert node_markers(cluster, node) == {**RELEASED, "unschedulable": cordoned_before}
    notes = node_annotations(cluster, node)
    assert LOCK not in notes and WAS_UNSCHEDULABLE not in notes, notes
    # Invariant 9: the pods are unmarked before the node is, so at once.
    assert marks_left(cluster.core, ns) == []
    wait_until(
        "no drain signal left and every gate open on the node's pods",
        lambda: all(
            DRAINING not in (x.metadata.annotations or {})
            and (not gated(x) or serving(x) == "True")
            for x in live(node_pods(cluster, ns, node))
        ),
        timeout=20,
    )


@contextmanager
def watching_repair(cluster: Cluster, name: str) -> Iterator[list[tuple[str, str | None, bool]]]:
    """Records (event type, status.phase, deleting) of one NodeRepair as the watch
    sees it, until it is deleted or the block ends."""
    seen: list[tuple[str, str | None, bool]] = []
    since = cluster.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)["metadata"][
        "resourceVersion"
    ]

    def on_event(kind: str, obj: Any) -> bool:
        phase = (obj.get("status") or {}).get("phase")
        seen.append((kind, phase, bool(obj["metadata"].get("deletionTimestamp"))))
        return kind == "DELETED"

    with watching(
        cluster.custom.list_cluster_custom_object,
        GROUP,
        VERSION,
        PLURAL,
        since=since,
        on_event=on_event,
        field_selector=f"metadata.name={name}",
    ):
        yield seen


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted(x for x in (m.group(2) or "").split(",") if x))
        if got == want:
            return float(m.group(3))
    return 0.0


# --- PodDisruptionBudgets ---


def test_pdb_blocks_eviction_until_relaxed(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    deploy(cluster, namespace, "worker", 2, p)
    make_pdb(cluster, namespace, "keep-all", "worker", 2)
    running = running_pods(cluster, namespace, "worker", 2)
    pdb_settled(cluster, namespace, "keep-all", healthy=2, allowed=0)

    name = repairs.create(node)
    repairs.wait_phase(name, "Evicting", timeout=30)
    offline = wait_condition(repairs, name, "InstancesOffline", "EvictionBlocked")
    assert offline["status"] == "False"
    assert f"{namespace}/keep-all" in offline["message"], offline
    blocked = wait_event(cluster, name, "EvictionBlocked")
    assert any(f"{namespace}/keep-all" in (e.message or "") for e in blocked), [
        e.message for e in blocked
    ]
    decided_again(cluster, running_operator, name)  # with the refusal in view
    assert repairs.phase(name) == "Evicting"
    assert {x.metadata.name for x in live(node_pods(cluster, namespace, node))} == {
        x.metadata.name for x in running
    }, "a PDB-protected instance was evicted"

    relax_pdb(cluster, namespace, "keep-all")
    status = repairs.wait_phase(name, "Repairing", timeout=30)
    assert cond(status, "InstancesOffline")["status"] == "True"
    assert node_pods(cluster, namespace, node) == []


def test_pdb_that_never_allows_fails_after_eviction_timeout(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    deploy(cluster, namespace, "worker", 2, p)
    make_pdb(cluster, namespace, "never", "worker", 2)
    running_pods(cluster, namespace, "worker", 2)
    pdb_settled(cluster, namespace, "never", healthy=2, allowed=0)

    name = repairs.create(node, drain={"evictionTimeoutSeconds": 3})
    status = repairs.wait_phase(name, "Failed", timeout=30)
    assert status["message"].startswith("EvictionTimeout"), status["message"]
    assert f"{namespace}/never" in status["message"], status["message"]
    assert status.get("completionTime")
    # onFailure: KeepCordoned (the default): the repair says why the node is cordoned.
    assert node_markers(cluster, node) == {"unschedulable": True, "taint": True, "lock": name}
    assert len(live(node_pods(cluster, namespace, node))) == 2
    wait_event(cluster, name, "EvictionTimeout")

    # Invariant 4: deleting the failed repair gives the node back.
    repairs.delete(name)
    assert_released(cluster, namespace, node)


# --- the task timeout ---


def busy_node(cluster: Cluster, ns: str, p: Pool, tasks: str = "3") -> tuple[str, str]:
    """Two async workers on a one-node pool; one has `tasks` in flight that never finish."""
    deploy(cluster, ns, "worker", 2, p)
    running = running_pods(cluster, ns, "worker", 2)
    busy, idle = running[0].metadata.name, running[1].metadata.name
    set_tasks(cluster, ns, busy, tasks)
    return busy, idle


def test_task_timeout_evict(cluster: Cluster, namespace: str, pool: Any, repairs: Repairs) -> None:
    p = make_pool(cluster, pool)
    busy, _ = busy_node(cluster, namespace, p)
    name = repairs.create(p.names[0], drain={"taskTimeoutSeconds": 2, "onTaskTimeout": "Evict"})
    waiting = repairs.wait_phase(name, "WaitingForTasks", timeout=20)
    assert waiting["instances"]["inflightTasks"] == 3
    status = repairs.wait_phase(name, "Repairing", timeout=30)
    drained = cond(status, "TasksDrained")
    assert drained["status"] == "False" and drained["reason"] == "TaskTimeout", drained
    assert node_pods(cluster, namespace, p.names[0]) == [], "the busy instance was evicted"
    assert busy not in {x.metadata.name for x in pods(cluster, namespace, "worker")}
    wait_event(cluster, name, "TaskTimeout")


def test_task_timeout_fail_keeps_node_cordoned(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    busy, idle = busy_node(cluster, namespace, p)
    name = repairs.create(node, drain={"taskTimeoutSeconds": 2, "onTaskTimeout": "Fail"})
    status = repairs.wait_phase(name, "Failed", timeout=30)
    assert status["message"].startswith("TaskTimeout"), status["message"]
    assert node_markers(cluster, node) == {"unschedulable": True, "taint": True, "lock": name}
    left = {x.metadata.name: x for x in node_pods(cluster, namespace, node)}
    assert set(left) == {busy, idle}, "nothing is evicted when the task timeout fails the repair"
    assert all(x.metadata.deletion_timestamp is None for x in left.values())
    time.sleep(1)
    assert repairs.phase(name) == "Failed"
    assert {x.metadata.name for x in live(node_pods(cluster, namespace, node))} == {busy, idle}

    # A new repair takes the node over from the failed one, with the record that
    # the node was schedulable before the *first* cordon.
    retry = repairs.create(node)
    wait_until(f"{retry} takes the node", lambda: node_markers(cluster, node)["lock"] == retry)
    assert node_annotations(cluster, node)[WAS_UNSCHEDULABLE] == "false"
    repairs.wait_phase(retry, "WaitingForTasks", timeout=20)
    set_tasks(cluster, namespace, busy, "0")
    repairs.wait_phase(retry, "Repairing", timeout=30)
    repairs.delete(retry)
    assert node_markers(cluster, node) == RELEASED, "uncordoned: it was schedulable before"
    repairs.delete(name)
    assert node_markers(cluster, node) == RELEASED


def test_task_timeout_fail_with_uncordon_gives_node_back(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    busy, idle = busy_node(cluster, namespace, p)
    name = repairs.create(
        node, drain={"taskTimeoutSeconds": 2, "onTaskTimeout": "Fail"}, onFailure="Uncordon"
    )
    repairs.wait_phase(name, "WaitingForTasks", timeout=20)
    # The pass writes its phase first, then sends the drain signal.
    wait_until(
        f"the drain signal on {busy}",
        lambda: (
            DRAINING in (cluster.core.read_namespaced_pod(busy, namespace).metadata.annotations)
        ),
        timeout=5,
    )
    status = repairs.wait_phase(name, "Failed", timeout=30)
    assert status["message"].startswith("TaskTimeout"), status["message"]
    wait_until(f"{node} given back", lambda: node_markers(cluster, node) == RELEASED, timeout=15)
    assert_released(cluster, namespace, node)
    assert {x.metadata.name for x in live(node_pods(cluster, namespace, node))} == {busy, idle}
    uncordoned = wait_until(
        "Uncordoned condition", lambda: repairs.condition(name, "Uncordoned"), timeout=10
    )
    assert uncordoned["status"] == "True", uncordoned
    assert repairs.phase(name) == "Failed"


def test_uncordon_by_hand_mid_repair_is_undone(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    """Invariant 3: while the repair holds instances, the node stays cordoned even
    if someone runs `kubectl uncordon` or strips the taint."""
    p = make_pool(cluster, pool)
    node = p.names[0]
    busy, _ = busy_node(cluster, namespace, p, tasks="1")
    name = repairs.create(node)
    repairs.wait_phase(name, "WaitingForTasks", timeout=20)
    cluster.kubectl("uncordon", node)
    wait_until(
        "re-cordoned",
        lambda: node_markers(cluster, node) == {"unschedulable": True, "taint": True, "lock": name},
        timeout=10,
    )
    cluster.core.patch_node(node, {"spec": {"taints": None}})
    wait_until(
        "re-tainted",
        lambda: node_markers(cluster, node) == {"unschedulable": True, "taint": True, "lock": name},
        timeout=10,
    )
    assert node_annotations(cluster, node)[WAS_UNSCHEDULABLE] == "false"
    set_tasks(cluster, namespace, busy, "0")
    repairs.wait_phase(name, "Repairing", timeout=30)
    repairs.delete(name)
    assert node_markers(cluster, node) == RELEASED


# --- transient API errors ---


@contextmanager
def denied(cluster: Cluster, ns: str, what: str, probe: Callable[[], None]) -> Iterator[None]:
    """A ValidatingAdmissionPolicy, bound to the test's namespace, that refuses
    pitstop's write `what` ("drain-signal": the pitstop.dev/draining annotation;
    "deregistration": the serving condition False): a stand-in for a transient API
    failure (webhook timeout, 5xx) of that one request. Active once `probe` (a
    write of the same kind) is refused."""
    adm = client.AdmissionregistrationV1Api(cluster.api)
    name = f"e2e-deny-{what}-{ns}"
    if what == "drain-signal":
        resource = "pods"
        expression = (
            "!has(object.metadata.annotations)"
            " || !('pitstop.dev/draining' in object.metadata.annotations)"
        )
    else:
        resource = "pods/status"
        expression = (
            "!has(object.status.conditions) || !object.status.conditions.exists("
            f"c, c.type == '{GATE}' && c.status == 'False')"
        )
    adm.create_validating_admission_policy(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": [resource],
                        }
                    ]
                },
                "validations": [{"expression": expression, "message": "simulated API failure"}],
            },
        }
    )
    try:
        adm.create_validating_admission_policy_binding(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
                    },
                },
            }
        )

        def refused() -> bool:
            try:
                probe()
            except ApiException as e:
                return e.status in (400, 403, 422)
            return False

        wait_until(f"the API refusing the {what}", refused, timeout=30, interval=0.5)
        yield
    finally:
        for delete in (
            adm.delete_validating_admission_policy_binding,
            adm.delete_validating_admission_policy,
        ):
            try:
                delete(name)
            except ApiException as e:
                if e.status != 404:
                    raise


@pytest.mark.parametrize("what", ["drain-signal", "deregistration"])
def test_transient_api_error_on_an_instance_write_is_retried(
    cluster: Cluster,
    namespace: str,
    pool: Any,
    repairs: Repairs,
    running_operator: Operator,
    what: str,
) -> None:
    """A refused write (drain signal, deregistration) is retried once the API takes
    it again: the repair finishes without an operator restart."""
    p = make_pool(cluster, pool)
    node = p.names[0]
    deploy(cluster, namespace, "fn", 1, p, gated=True)
    make_service(cluster, namespace, "fn")
    deploy(cluster, namespace, "probe", 1, p, gated=True)  # a pod to test the policy on
    fn = ready_pods(cluster, namespace, "fn", 1)[0].metadata.name
    probe_pod = ready_pods(cluster, namespace, "probe", 1)[0].metadata.name
    wait_until("fn routed", lambda: ready_endpoints(cluster, namespace, "fn") == {fn})

    def probe() -> None:
        if what == "drain-signal":
            note = {"metadata": {"annotations": {DRAINING: "probe"}}}
            cluster.core.patch_namespaced_pod(probe_pod, namespace, note)
            cluster.core.patch_namespaced_pod(
                probe_pod, namespace, {"metadata": {"annotations": {DRAINING: None}}}
            )
        else:
            closed = {"status": {"conditions": [{"type": GATE, "status": "False"}]}}
            cluster.core.patch_namespaced_pod_status(probe_pod, namespace, closed)
            opened = {"status": {"conditions": [{"type": GATE, "status": "True"}]}}
            cluster.core.patch_namespaced_pod_status(probe_pod, namespace, opened)

    with denied(cluster, namespace, what, probe):
        name = repairs.create(node)
        held = "WaitingForTasks" if what == "drain-signal" else "Deregistering"
        repairs.wait_phase(name, held, timeout=20)
        decided_again(cluster, running_operator, name)  # its writes refused meanwhile
        assert repairs.phase(name) == held, "refused writes hold the repair"
        assert all(
            x.metadata.deletion_timestamp is None for x in node_pods(cluster, namespace, node)
        ), "nothing evicted while a write is refused"
    status = repairs.wait_phase(name, "Repairing", timeout=15)
    assert status["instances"]["total"] == 2


# --- the node lock, a missing node ---


def test_second_repair_waits_for_busy_node_then_takes_over(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    busy, _ = busy_node(cluster, namespace, p, tasks="1")
    first = repairs.create(node)
    repairs.wait_phase(first, "WaitingForTasks", timeout=20)
    first_start = repairs.status(first)["startTime"]

    second = repairs.create(node)
    wait_until(
        f"{second} reports NodeBusy",
        lambda: "NodeBusy" in (repairs.status(second).get("message") or ""),
        timeout=15,
    )
    decided_again(cluster, running_operator, second)
    status = repairs.status(second)
    assert status.get("phase") in (None, "Pending"), status
    assert first in status["message"], status["message"]
    assert not step_conditions(status), "a waiting repair touches nothing"
    assert node_markers(cluster, node)["lock"] == first
    assert repairs.phase(first) == "WaitingForTasks"
    assert repairs.status(first)["startTime"] == first_start
    assert node_annotations(cluster, node)[WAS_UNSCHEDULABLE] == "false"

    repairs.delete(first)
    wait_until(f"{second} takes the node", lambda: node_markers(cluster, node)["lock"] == second)
    repairs.wait_phase(second, "WaitingForTasks", timeout=20)
    assert node_markers(cluster, node) == {"unschedulable": True, "taint": True, "lock": second}
    assert node_annotations(cluster, node)[WAS_UNSCHEDULABLE] == "false", (
        "the first repair's cordon is not mistaken for a prior one"
    )
    set_tasks(cluster, namespace, busy, "0")
    repairs.wait_phase(second, "Repairing", timeout=30)
    repairs.delete(second)
    assert node_markers(cluster, node) == RELEASED


def test_missing_node_fails_fast(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    name = repairs.create(f"no-such-node-{uuid.uuid4().hex[:6]}")
    status = repairs.wait_phase(name, "Failed", timeout=10)
    assert "NodeNotFound" in status["message"], status
    repairs.delete(name, timeout=15)


# --- the instance contract ---


def test_invalid_task_count_is_reported_and_treated_busy(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    p = make_pool(cluster, pool)
    busy, _ = busy_node(cluster, namespace, p, tasks="lots")
    name = repairs.create(p.names[0])
    repairs.wait_phase(name, "WaitingForTasks", timeout=20)
    events = wait_event(cluster, name, "InvalidTaskCount")
    assert busy in (events[0].message or ""), events[0].message
    wait_until(
        "invalidTaskCounts 1",
        lambda: (repairs.status(name).get("instances") or {}).get("invalidTaskCounts") == 1,
        timeout=10,
    )
    decided_again(cluster, running_operator, name)
    assert repairs.phase(name) == "WaitingForTasks"
    on_node = node_pods(cluster, namespace, p.names[0])
    assert len(on_node) == 2 and live(on_node) == on_node, "nothing evicted"

    set_tasks(cluster, namespace, busy, "0")
    repairs.wait_phase(name, "Repairing", timeout=30)


@pytest.mark.parametrize("how", ["label", "service"])
def test_sync_pod_without_serving_gate(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, how: str
) -> None:
    """A sync instance without the gate (by label, or by backing a Service) is
    reported, counted, and evicted in the end; the repair completes."""
    p = make_pool(cluster, pool)
    node = p.names[0]
    if how == "label":
        deploy(cluster, namespace, "fn", 1, p, labels={"pitstop.dev/instance-type": "sync"})
    else:
        deploy(cluster, namespace, "fn", 1, p)
        make_service(cluster, namespace, "fn")
    ready = ready_pods(cluster, namespace, "fn", 1)
    if how == "service":
        wait_until("fn routed", lambda: ready_endpoints(cluster, namespace, "fn"))
    # A busy worker holds WaitingForTasks, so the count can be read while fn is there.
    busy, _ = busy_node(cluster, namespace, p, tasks="1")

    name = repairs.create(node)
    status = repairs.wait_phase(name, "WaitingForTasks", timeout=20)
    assert status["instances"]["noServingGate"] == 1, status["instances"]
    assert status["instances"]["sync"] == 1, status["instances"]
    events = wait_event(cluster, name, "NoServingGate")
    assert ready[0].metadata.name in (events[0].message or "")
    assert "without the serving gate" in cond(status, "Deregistered")["message"]

    set_tasks(cluster, namespace, busy, "0")
    repairs.wait_phase(name, "Repairing", timeout=30)
    assert node_pods(cluster, namespace, node) == []


# --- dry run ---


def test_dry_run_reports_the_plan_and_changes_nothing(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    deploy(cluster, namespace, "fn", 2, p, gated=True)
    make_service(cluster, namespace, "fn")
    deploy(cluster, namespace, "worker", 2, p)
    make_pdb(cluster, namespace, "no-disruption", "worker", 2)
    fn = {x.metadata.name for x in ready_pods(cluster, namespace, "fn", 2)}
    workers = [x.metadata.name for x in running_pods(cluster, namespace, "worker", 2)]
    wait_until("fn routed", lambda: ready_endpoints(cluster, namespace, "fn") == fn)
    set_tasks(cluster, namespace, workers[0], "2")
    pdb_settled(cluster, namespace, "no-disruption", healthy=2, allowed=0)
    before = {
        x.metadata.name: (x.metadata.resource_version, x.metadata.annotations)
        for x in node_pods(cluster, namespace, node)
    }

    name = repairs.create(node, dryRun=True)
    status = wait_until(
        f"{name} plan with the blocking PDB",
        lambda: (s := repairs.status(name)).get("plan", {}).get("blockingPDBs") and s,
        timeout=20,
    )
    plan = status["plan"]
    assert sorted(plan["sync"]) == sorted(f"{namespace}/{x}" for x in fn), plan
    assert sorted(plan["async"]) == sorted(f"{namespace}/{x}" for x in workers), plan
    assert plan["inflightTasks"] == 2, plan
    assert plan["blockingPDBs"] == [f"{namespace}/no-disruption"], plan
    assert plan.get("noServingGate", []) == [], plan
    assert status.get("phase") in (None, "Pending"), status
    assert status["message"].startswith("Dry run"), status["message"]

    decided_again(cluster, running_operator, name)
    status = repairs.status(name)
    assert status.get("phase") in (None, "Pending"), status
    assert not step_conditions(status), status
    assert node_markers(cluster, node) == RELEASED
    assert WAS_UNSCHEDULABLE not in node_annotations(cluster, node)
    now = node_pods(cluster, namespace, node)
    assert {x.metadata.name for x in now} == set(before), "nothing evicted, nothing added"
    for x in now:
        assert x.metadata.deletion_timestamp is None, x.metadata.name
        assert DRAINING not in (x.metadata.annotations or {}), x.metadata.name
        if gated(x):
            assert serving(x) == "True", x.metadata.name
    assert ready_endpoints(cluster, namespace, "fn") == fn


def test_routing_that_ignores_the_gate_is_left_after_each_pods_own_wait(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    """publishNotReadyAddresses keeps the endpoints ready whatever the gate says: past
    the deregistration deadline the repair goes on (DeregistrationTimeout), and each
    gated pod is evicted once its own gate has been closed for the timeout (invariant
    9). That wait is read from the serving condition's lastTransitionTime, which must
    survive on the pod: without it the pods would never be forced out."""
    p = make_pool(cluster, pool)
    node = p.names[0]
    deploy(cluster, namespace, "fn", 2, p, gated=True)
    make_service(cluster, namespace, "fn", publish_not_ready=True)
    fn = {x.metadata.name for x in ready_pods(cluster, namespace, "fn", 2)}
    wait_until("fn routed", lambda: ready_endpoints(cluster, namespace, "fn") == fn)
    name = repairs.create(node, drain={"taskTimeoutSeconds": 3})

    def closed_at() -> dict[str, str] | None:
        times = {
            x.metadata.name: c.last_transition_time
            for x in pods(cluster, namespace, "fn")
            for c in x.status.conditions or []
            if c.type == GATE and c.status == "False" and c.last_transition_time
        }
        return times if set(times) == fn else None

    closed = wait_until("every gate closed, with its time", closed_at, timeout=20)
    assert ready_endpoints(cluster, namespace, "fn") == fn, "still routed: the gate is ignored"
    status = repairs.wait_phase(name, "Repairing", timeout=40)
    dereg = cond(status, "Deregistered")
    assert dereg["status"] == "False" and dereg["reason"] == "DeregistrationTimeout", dereg
    assert not fn & {x.metadata.name for x in node_pods(cluster, namespace, node)}
    allowed = datetime.fromisoformat(status["phaseStartTime"].replace("Z", "+00:00"))
    for pod, at in closed.items():
        assert allowed >= at + timedelta(seconds=3), f"{pod} out before its own wait ({at})"


# --- abort ---


@pytest.mark.parametrize("phase", ["Deregistering", "WaitingForTasks", "Evicting", "Repairing"])
def test_abort_gives_the_node_back(
    cluster: Cluster,
    namespace: str,
    pool: Any,
    repairs: Repairs,
    running_operator: Operator,
    phase: str,
) -> None:
    """Deleting a repair in any phase undoes it: phase Aborted while the finalizer
    runs, then the node is uncordoned, untainted, unlocked, and the instances still
    there lose the drain signal and serve again."""
    p = make_pool(cluster, pool)
    node = p.names[0]
    deploy(cluster, namespace, "fn", 2, p, gated=True)
    # publishNotReadyAddresses keeps the endpoints ready whatever the gate says, so
    # deregistration is never confirmed: that holds the repair in Deregistering.
    make_service(cluster, namespace, "fn", publish_not_ready=phase == "Deregistering")
    deploy(cluster, namespace, "worker", 2, p)
    fn = {x.metadata.name for x in ready_pods(cluster, namespace, "fn", 2)}
    workers = [x.metadata.name for x in running_pods(cluster, namespace, "worker", 2)]
    wait_until("fn routed", lambda: ready_endpoints(cluster, namespace, "fn") == fn)
    if phase == "WaitingForTasks":
        set_tasks(cluster, namespace, workers[0], "1")
    if phase == "Evicting":
        make_pdb(cluster, namespace, "keep-all", "worker", 2)
        pdb_settled(cluster, namespace, "keep-all", healthy=2, allowed=0)

    name = repairs.create(node)
    repairs.wait_phase(name, phase, timeout=30)
    if phase == "Evicting":
        wait_condition(repairs, name, "InstancesOffline", "EvictionBlocked")
    decided_again(cluster, running_operator, name)
    assert repairs.phase(name) == phase, "the repair is held in the phase under test"
    assert node_markers(cluster, node) == {"unschedulable": True, "taint": True, "lock": name}
    if phase != "Repairing":
        marked = [
            x
            for x in live(node_pods(cluster, namespace, node))
            if DRAINING in (x.metadata.annotations or {})
        ]
        assert marked, "the drain signal is out before the abort"

    with watching_repair(cluster, name) as seen:
        repairs.delete(name, timeout=30)
    assert_released(cluster, namespace, node)
    aborted_seen = any(ph == "Aborted" and deleting for _, ph, deleting in seen)
    events = wait_event(cluster, name, "Aborted", type_="Normal", timeout=10)
    assert events, "Event Aborted"
    assert aborted_seen, ("phase Aborted visible while the finalizer runs", seen)
    # The gated instances serve again (replacements, for those already evicted).
    again = {x.metadata.name for x in ready_pods(cluster, namespace, "fn", 2, timeout=30)}
    wait_until(
        "fn pods ready endpoints again",
        lambda: ready_endpoints(cluster, namespace, "fn") == again,
        timeout=30,
    )
    assert all(serving(x) == "True" for x in pods(cluster, namespace, "fn"))


def test_abort_leaves_a_precordoned_node_cordoned(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    busy, idle = busy_node(cluster, namespace, p, tasks="1")
    cluster.core.patch_node(node, {"spec": {"unschedulable": True}})
    name = repairs.create(node)
    repairs.wait_phase(name, "WaitingForTasks", timeout=20)
    assert node_annotations(cluster, node)[WAS_UNSCHEDULABLE] == "true"
    with watching_repair(cluster, name) as seen:
        repairs.delete(name)
    assert_released(cluster, namespace, node, cordoned_before=True)
    assert {x.metadata.name for x in live(node_pods(cluster, namespace, node))} == {busy, idle}
    assert any(ph == "Aborted" for _, ph, _ in seen) or wait_event(
        cluster, name, "Aborted", type_="Normal"
    )


# --- invariant 5: one active repair per node, also under a burst ---


def test_burst_of_repairs_for_one_node_keeps_one_active(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    busy_node(cluster, namespace, p, tasks="1")  # holds the winner in WaitingForTasks
    names = [f"burst-{uuid.uuid4().hex[:6]}-{i}" for i in range(5)]
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def create(n: str) -> None:
        try:
            barrier.wait(timeout=10)
            repairs.create(node, name=n)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=create, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors, errors

    violations: list[Any] = []
    locks: set[str | None] = set()
    deadline = time.monotonic() + 4
    polls = 0
    while time.monotonic() < deadline:
        listed = cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        phases = {
            o["metadata"]["name"]: (o.get("status") or {}).get("phase")
            for o in listed
            if o["metadata"]["name"] in names
        }
        active = [n for n, ph in phases.items() if ph not in (None, "Pending", *FINAL)]
        if len(active) > 1:
            violations.append(phases)
        lock = node_markers(cluster, node)["lock"]
        locks.add(lock)
        if lock is not None and lock not in names:
            violations.append(("foreign lock", lock))
        polls += 1
        time.sleep(0.05)
    assert polls > 20
    assert not violations, violations[:5]

    statuses = {n: repairs.status(n) for n in names}
    active = [n for n, s in statuses.items() if s.get("phase") not in (None, "Pending", *FINAL)]
    assert len(active) == 1, statuses
    winner = active[0]
    assert statuses[winner]["phase"] == "WaitingForTasks"
    assert node_markers(cluster, node)["lock"] == winner
    assert locks - {None} == {winner}, ("the lock never moved", locks)
    for n in names:
        if n != winner:
            assert statuses[n].get("phase") in (None, "Pending"), statuses[n]
            assert "NodeBusy" in (statuses[n].get("message") or ""), statuses[n]
            assert not step_conditions(statuses[n]), statuses[n]


# --- invariant 7: a node that vanishes mid-repair ---


def test_node_vanishing_mid_repair_fails_cleanly(
    cluster: Cluster,
    namespace: str,
    pool: Any,
    repairs: Repairs,
    running_operator: Operator,
) -> None:
    offset = running_operator.log.stat().st_size
    starts = running_operator.starts
    other = make_pool(cluster, pool)
    # The vanishing node is made here, not by `pool` (whose teardown deletes its nodes).
    doomed = f"n-doomed-{uuid.uuid4().hex[:6]}"
    label = {"pool": f"doomed-{uuid.uuid4().hex[:6]}"}
    cluster.create_node(doomed, label)
    try:
        doomed_pool = untainted(cluster, Pool(names=[doomed], selector=label))
        wait_until(f"{doomed} Ready", lambda: cluster.node_ready(doomed), timeout=30)
        cluster.apps.create_namespaced_deployment(
            namespace, deployment("doomed", 1, doomed_pool.selector, grace=1)
        )
        victim = running_pods(cluster, namespace, "doomed", 1)[0].metadata.name
        set_tasks(cluster, namespace, victim, "1")
        busy, _ = busy_node(cluster, namespace, other, tasks="1")

        doomed_repair = repairs.create(doomed)
        other_repair = repairs.create(other.names[0])
        repairs.wait_phase(doomed_repair, "WaitingForTasks", timeout=20)
        repairs.wait_phase(other_repair, "WaitingForTasks", timeout=20)

        cluster.core.delete_node(doomed)
        status = repairs.wait_phase(doomed_repair, "Failed", timeout=20)
        assert "NodeNotFound" in status["message"], status["message"]
        assert status.get("completionTime")
    finally:
        try:
            cluster.core.delete_node(doomed)
        except ApiException as e:
            if e.status != 404:
                raise

    # The other repair is unaffected and the operator never restarted.
    assert repairs.phase(other_repair) == "WaitingForTasks"
    set_tasks(cluster, namespace, busy, "0")
    repairs.wait_phase(other_repair, "Repairing", timeout=30)
    assert running_operator.healthy()
    assert running_operator.starts == starts, "the operator was restarted"
    repairs.delete(doomed_repair, timeout=20)
    assert "Traceback" not in log_since(running_operator, offset)


# --- metrics ---


def test_metrics_after_a_repair(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    p = make_pool(cluster, pool)
    busy, _ = busy_node(cluster, namespace, p, tasks="1")
    before = running_operator.metrics()
    name = repairs.create(p.names[0])
    repairs.wait_phase(name, "WaitingForTasks", timeout=20)
    wait_until(
        "inflight gauge",
        lambda: metric(running_operator.metrics(), "pitstop_inflight_tasks", node=p.names[0]) == 1,
        timeout=10,
    )
    time.sleep(0.3)
    set_tasks(cluster, namespace, busy, "0")
    repairs.wait_phase(name, "Repairing", timeout=30)
    after = running_operator.metrics()

    evicted = metric(after, "pitstop_evictions_total", result="evicted") - metric(
        before, "pitstop_evictions_total", result="evicted"
    )
    assert evicted >= 2, evicted
    for phase in ("Cordoning", "WaitingForTasks", "Evicting"):
        got = metric(after, "pitstop_phase_duration_seconds_count", phase=phase) - metric(
            before, "pitstop_phase_duration_seconds_count", phase=phase
        )
        assert got >= 1, (phase, got)
    waited = metric(after, "pitstop_phase_duration_seconds_sum", phase="WaitingForTasks") - metric(
        before, "pitstop_phase_duration_seconds_sum", phase="WaitingForTasks"
    )
    assert waited >= 0.2, waited
