"""The repair half on the real control plane: Repairing → Verifying → Uncordoning →
Succeeded (or Failed), for the Manual and Job strategies, with faults injected into
kwok's simulated kubelets; attempts, timeouts, flapping nodes, deletion and a
SIGKILLed operator (invariant 6).

A test plays the outside world itself: a human annotating `pitstop.dev/repaired`,
or a "repair agent" thread standing in for the repair Job's container, which heals
the node once the Job's pod runs on it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.e2e.barriers import decided_again, saw_itself
from tests.e2e.helpers import cond, make_pool, repair_events, wait_event
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import GROUP, PLURAL, VERSION, Repairs, node_markers
from tests.e2e.workloads import deployment, running_pods

pytestmark = pytest.mark.e2e

NS = "pitstop-system"
FAULT = "sim.pitstop.dev/fault"
REPAIRED = "pitstop.dev/repaired"
LOCK = "pitstop.dev/repair"
WAS_UNSCHEDULABLE = "pitstop.dev/was-unschedulable"
RELEASED = {"unschedulable": False, "taint": False, "lock": None}
DEADLOCK = "KernelDeadlock"
VERIFY = {
    "conditions": [{"type": "Ready", "status": "True"}, {"type": DEADLOCK, "status": "False"}],
    "stableSeconds": 1,
    "timeoutSeconds": 10,
}
MANUAL = {"strategy": "Manual", "timeoutSeconds": 60}


def held(name: str) -> dict[str, Any]:
    return {"unschedulable": True, "taint": True, "lock": name}


# --- nodes and faults ---


def node_condition(cluster: Cluster, node: str, type_: str) -> str | None:
    for c in cluster.core.read_node(node).status.conditions or []:
        if c.type == type_:
            return str(c.status)
    return None


def inject(cluster: Cluster, node: str, fault: str = DEADLOCK) -> None:
    """Breaks the node (kwok sets `fault`=True) and waits until it shows."""
    cluster.core.patch_node(node, {"metadata": {"annotations": {FAULT: fault}}})
    wait_until(
        f"{fault}=True on {node}",
        lambda: node_condition(cluster, node, fault) == "True",
        timeout=20,
    )


def heal(cluster: Cluster, node: str, fault: str = DEADLOCK, wait: bool = True) -> None:
    cluster.core.patch_node(node, {"metadata": {"annotations": {FAULT: None}}})
    if wait:
        wait_until(
            f"{fault}=False on {node}",
            lambda: node_condition(cluster, node, fault) == "False",
            timeout=20,
        )


# --- NodeRepairs ---


def mark(cluster: Cluster, name: str, value: str) -> None:
    """What a human (or `pitstop done`) does for a Manual repair."""
    cluster.custom.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, name, {"metadata": {"annotations": {REPAIRED: value}}}
    )


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@contextmanager
def phase_log(cluster: Cluster, name: str) -> Iterator[list[str]]:
    """Every phase the NodeRepair `name` goes through, in order, as its watch shows
    (start it before the repair is created)."""
    seen: list[str] = []
    selector = f"metadata.name={name}"
    rv = cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, field_selector=selector)[
        "metadata"
    ]["resourceVersion"]
    w = watch.Watch()
    stop = threading.Event()

    def run() -> None:
        nonlocal rv
        while not stop.is_set():
            for event in w.stream(
                cluster.custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                field_selector=selector,
                resource_version=rv,
                timeout_seconds=2,
            ):
                obj = event["object"]
                rv = obj["metadata"]["resourceVersion"]
                phase = (obj.get("status") or {}).get("phase")
                if phase and (not seen or seen[-1] != phase):
                    seen.append(phase)
                if stop.is_set():
                    w.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        time.sleep(0.3)  # let the last events in
        stop.set()
        thread.join(timeout=10)


# --- Jobs ---


def batch(cluster: Cluster) -> client.BatchV1Api:
    return client.BatchV1Api(cluster.api)


def job_repair(
    node: str,
    run: str = "1s",
    exit_code: int | None = None,
    timeout: int = 30,
    attempts: int = 1,
) -> dict[str, Any]:
    """spec.repair for a Job whose pod kwok runs on `node` for `run`, then ends with
    `exit_code` (0: success)."""
    annotations = {"sim.pitstop.dev/run-duration": run}
    if exit_code is not None:
        annotations["sim.pitstop.dev/exit-code"] = str(exit_code)
    template = {
        "metadata": {"labels": {"team": "e2e"}},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{"name": "repair", "image": "fake"}],
                },
            }
        },
    }
    return {
        "strategy": "Job",
        "job": {"template": template},
        "timeoutSeconds": timeout,
        "maxAttempts": attempts,
    }


def jobs_of(cluster: Cluster, repair: str) -> list[client.V1Job]:
    return list(batch(cluster).list_namespaced_job(NS, label_selector=f"{LOCK}={repair}").items)


def jobs_report(cluster: Cluster, repair: str) -> list[tuple[str, Any, Any]]:
    """The Jobs of a repair with their conditions and deletion marks (for messages)."""
    return [
        (
            j.metadata.name,
            [(c.type, c.status, c.message) for c in j.status.conditions or []],
            j.metadata.deletion_timestamp,
        )
        for j in jobs_of(cluster, repair)
    ]


def job_exists(cluster: Cluster, job: str) -> bool:
    try:
        batch(cluster).read_namespaced_job(job, NS)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def job_gone(cluster: Cluster, job: str) -> bool:
    """Gone, or on its way (a background deletion of a Job with pods)."""
    try:
        found = batch(cluster).read_namespaced_job(job, NS)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return found.metadata.deletion_timestamp is not None


class Agent:
    """Plays the repair Job's container: once the pod of a Job of `repair` whose
    attempt is in `heal_on` runs on `node`, it heals the node. Records each Job's uid
    and the node its pod ran on."""

    def __init__(self, cluster: Cluster, repair: str, node: str, heal_on: set[int]):
        self.cluster, self.repair, self.node, self.heal_on = cluster, repair, node, heal_on
        self.jobs: dict[str, str] = {}
        self.ran_on: dict[str, str] = {}
        self.healed: list[str] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Agent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.error is not None and exc[0] is None:
            raise AssertionError(f"repair agent failed: {self.error!r}")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._pass()
                time.sleep(0.1)
        except BaseException as e:  # reported by __exit__
            self.error = e

    def _pass(self) -> None:
        for job in jobs_of(self.cluster, self.repair):
            name = job.metadata.name
            self.jobs.setdefault(name, job.metadata.uid)
            if name in self.ran_on:
                continue
            pods = self.cluster.core.list_namespaced_pod(NS, label_selector=f"job-name={name}")
            running = [p for p in pods.items if p.spec.node_name and p.status.phase == "Running"]
            if not running:
                continue
            self.ran_on[name] = running[0].spec.node_name
            attempt = int(name.rsplit("-", 1)[1])
            if attempt in self.heal_on and running[0].spec.node_name == self.node:
                heal(self.cluster, self.node, wait=False)
                self.healed.append(name)


# --- Manual ---


def test_manual_repair_succeeds_and_the_node_takes_pods_again(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    cluster.apps.create_namespaced_deployment(namespace, deployment("fn", 2, p.selector, grace=1))
    running_pods(cluster, namespace, "fn", 2)
    inject(cluster, node)

    name = f"r-{uuid.uuid4().hex[:8]}"
    with phase_log(cluster, name) as phases:
        repairs.create(node, name=name, repair=MANUAL, verify=VERIFY)
        status = repairs.wait_phase(name, "Repairing", timeout=60)
        assert cond(status, "RepairAllowed")["status"] == "True"
        assert cond(status, "Repaired")["status"] == "False"
        assert status["repair"]["attempts"] == 1
        assert REPAIRED in status["message"], "a Manual repair says how to finish it"
        decided_again(cluster, running_operator, name)
        assert repairs.phase(name) == "Repairing", "a Manual repair waits for the human"
        assert node_markers(cluster, node) == held(name)
        # The evicted pods wait (the pool's only node is cordoned).
        assert all(
            not x.spec.node_name
            for x in cluster.core.list_namespaced_pod(namespace).items
            if x.metadata.deletion_timestamp is None
        )

        heal(cluster, node)
        mark(cluster, name, "true")
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=30)
    assert status["phase"] == "Succeeded", status
    assert phases[-4:] == ["Repairing", "Verifying", "Uncordoning", "Succeeded"], phases
    for type_, reason in (("Repaired", "Repaired"), ("Verified", "Verified")):
        c = cond(status, type_)
        assert (c["status"], c["reason"]) == ("True", reason), c
    uncordoned = cond(status, "Uncordoned")
    assert uncordoned["status"] == "True" and "schedulable again" in uncordoned["message"]
    assert status["completionTime"] and parse_time(status["completionTime"]) >= parse_time(
        status["startTime"]
    )
    assert status["message"].startswith("Repaired"), status["message"]
    assert node_markers(cluster, node) == RELEASED
    notes = cluster.core.read_node(node).metadata.annotations or {}
    assert LOCK not in notes and WAS_UNSCHEDULABLE not in notes, notes
    wait_event(cluster, name, "RepairSucceeded", type_="Normal")

    # Allocation resumes: the waiting replicas land on the repaired node.
    back = running_pods(cluster, namespace, "fn", 2, timeout=30)
    assert {x.spec.node_name for x in back} == {node}


@pytest.mark.parametrize("on_failure", ["KeepCordoned", "Uncordon"])
def test_manual_repair_declared_failed(
    cluster: Cluster, pool: Any, repairs: Repairs, on_failure: str
) -> None:
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    name = repairs.create(node, repair=MANUAL, verify=VERIFY, onFailure=on_failure)
    repairs.wait_phase(name, "Repairing", timeout=30)
    mark(cluster, name, "false")
    status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=45)
    assert status["phase"] == "Failed", status
    assert status["message"].startswith("RepairFailed:"), status["message"]
    assert "declared failed" in status["message"]
    assert status["repair"]["lastError"] == "declared failed by a human"
    assert status["repair"]["attempts"] == 1
    repaired = cond(status, "Repaired")
    assert (repaired["status"], repaired["reason"]) == ("False", "RepairFailed")
    assert status["completionTime"]
    wait_event(cluster, name, "RepairFailed")
    if on_failure == "KeepCordoned":
        time.sleep(1)
        assert node_markers(cluster, node) == held(name), "the Failed repair says why"
        assert not any(
            c["type"] == "Uncordoned" and c["status"] == "True"
            for c in repairs.status(name)["conditions"]
        )
    else:
        wait_until(
            "node returned after the failure",
            lambda: node_markers(cluster, node) == RELEASED,
            timeout=20,
        )
        c = wait_until("Uncordoned=True", lambda: repairs.condition(name, "Uncordoned"), timeout=20)
        assert c["status"] == "True" and c["reason"] == "OnFailureUncordon", c
        assert repairs.phase(name) == "Failed"


def test_manual_repair_times_out(cluster: Cluster, pool: Any, repairs: Repairs) -> None:
    node = make_pool(cluster, pool).names[0]
    name = repairs.create(node, repair={"strategy": "Manual", "timeoutSeconds": 2}, verify=VERIFY)
    repairs.wait_phase(name, "Repairing", timeout=30)
    status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=15)
    assert status["phase"] == "Failed", status
    took = parse_time(status["completionTime"]) - parse_time(status["repair"]["attemptStartTime"])
    assert took.total_seconds() >= 2.0, f"failed after {took}, before the timeout"
    assert status["repair"]["lastError"] == "attempt 1 timed out after 2s"
    assert status["repair"]["attempts"] == 1, "a Manual repair has one attempt"
    assert "RepairFailed" in status["message"]
    assert node_markers(cluster, node) == held(name)


def test_mark_before_repairing_counts_once_repairing(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    """A human who marks the repair done early (during the drain) is heard once the
    node may be touched; the drain is not skipped."""
    p = make_pool(cluster, pool)
    node = p.names[0]
    cluster.apps.create_namespaced_deployment(namespace, deployment("fn", 2, p.selector, grace=1))
    running = running_pods(cluster, namespace, "fn", 2)
    busy = running[0].metadata.name
    cluster.core.patch_namespaced_pod(
        busy, namespace, {"metadata": {"annotations": {"pitstop.dev/inflight-tasks": "1"}}}
    )
    name = repairs.create(node, repair=MANUAL, verify=VERIFY | {"conditions": []})
    repairs.wait_phase(name, "WaitingForTasks", timeout=30)
    mark(cluster, name, "true")
    saw_itself(cluster, running_operator, repairs, name)
    assert repairs.phase(name) == "WaitingForTasks"
    cluster.core.patch_namespaced_pod(
        busy, namespace, {"metadata": {"annotations": {"pitstop.dev/inflight-tasks": "0"}}}
    )
    status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=30)
    assert status["phase"] == "Succeeded", status
    assert cond(status, "InstancesOffline")["status"] == "True"


# --- Job ---


def test_job_repair_succeeds(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    name = f"r-{uuid.uuid4().hex[:8]}"
    with Agent(cluster, name, node, heal_on={1}) as agent:
        repairs.create(node, name=name, repair=job_repair(node), verify=VERIFY)
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=40)
    assert status["phase"] == "Succeeded", status
    job_name = f"pitstop-{name}-1"
    assert status["repair"]["jobName"] == job_name
    assert status["repair"]["attempts"] == 1
    assert agent.ran_on == {job_name: node}, "the Job's pod ran on the cordoned node"
    assert agent.healed == [job_name]
    assert "completed" in cond(status, "Repaired")["message"]
    assert node_markers(cluster, node) == RELEASED

    job = batch(cluster).read_namespaced_job(job_name, NS)
    assert job.metadata.labels["team"] == "e2e", "the template's labels are kept"
    assert job.metadata.labels[LOCK] == name
    assert job.spec.backoff_limit == 0
    pod = job.spec.template.spec
    assert pod.restart_policy == "Never"
    assert pod.service_account_name == "pitstop-repair", "never the operator's own"
    env = {e.name: e.value for e in pod.containers[0].env}
    assert env == {"NODE_NAME": node, "PITSTOP_NODE_NAME": node, "NODEREPAIR_NAME": name}
    tolerations = {(t.key, t.operator, t.effect) for t in pod.tolerations}
    assert {
        ("pitstop.dev/maintenance", "Exists", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "Exists", "NoSchedule"),
    } <= tolerations
    uid = repairs.get(name)["metadata"]["uid"]
    owners = [(o.api_version, o.kind, o.name, o.uid) for o in job.metadata.owner_references]
    assert owners == [(f"{GROUP}/{VERSION}", "NodeRepair", name, uid)]

    # The garbage collector removes the Job with its repair.
    repairs.delete(name)
    wait_until(f"Job {job_name} collected", lambda: not job_exists(cluster, job_name), timeout=60)


def test_failing_job_is_retried_then_the_repair_fails(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    name = repairs.create(node, repair=job_repair(node, exit_code=1, attempts=2), verify=VERIFY)
    status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=40)
    report = (status, jobs_report(cluster, name), [e.message for e in repair_events(cluster, name)])
    assert status["phase"] == "Failed", report
    assert status["repair"]["attempts"] == 2, report
    assert status["repair"]["jobName"] == f"pitstop-{name}-2"
    assert f"Job pitstop-{name}-2 failed" in status["repair"]["lastError"], report
    assert "attempt 2 of 2" in status["message"]
    assert sorted(j.metadata.name for j in jobs_of(cluster, name)) == [
        f"pitstop-{name}-1",
        f"pitstop-{name}-2",
    ], report
    attempt_failed = wait_event(cluster, name, "RepairAttemptFailed")
    assert f"pitstop-{name}-1" in attempt_failed[0].message
    wait_event(cluster, name, "RepairFailed")
    assert node_markers(cluster, node) == held(name)


def test_attempt_that_does_not_verify_is_retried(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    """Attempt 1's Job succeeds but the node stays faulty: verification times out,
    the attempt fails, and attempt 2 (whose agent does heal) succeeds."""
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    name = f"r-{uuid.uuid4().hex[:8]}"
    with Agent(cluster, name, node, heal_on={2}) as agent:
        repairs.create(
            node,
            name=name,
            repair=job_repair(node, attempts=2),
            verify=VERIFY | {"timeoutSeconds": 3},
        )
        failed = wait_event(cluster, name, "RepairAttemptFailed", timeout=30)
        assert "node not healthy after 3s" in failed[0].message, failed[0].message
        assert f"{DEADLOCK}=True" in failed[0].message
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=40)
    assert status["phase"] == "Succeeded", status
    assert status["repair"]["attempts"] == 2
    assert status["repair"]["jobName"] == f"pitstop-{name}-2"
    assert agent.healed == [f"pitstop-{name}-2"]
    assert sorted(agent.jobs) == [f"pitstop-{name}-1", f"pitstop-{name}-2"]
    assert node_markers(cluster, node) == RELEASED


def test_job_that_outlives_the_timeout_is_deleted(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    node = make_pool(cluster, pool).names[0]
    name = repairs.create(node, repair=job_repair(node, run="60s", timeout=2), verify=VERIFY)
    job_name = f"pitstop-{name}-1"
    status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=30)
    assert status["phase"] == "Failed", status
    assert status["repair"]["lastError"] == "attempt 1 timed out after 2s"
    assert repairs.exists(name), "deleted by the operator, not collected with its repair"
    wait_until(f"Job {job_name} deleted", lambda: job_gone(cluster, job_name), timeout=20)
    assert node_markers(cluster, node) == held(name)


def test_job_repair_with_a_long_name(cluster: Cluster, pool: Any, repairs: Repairs) -> None:
    """NodeRepair names may be 253 characters; label values only 63. The Job name is
    shortened (recovery.job_name); the repair must run all the same."""
    node = make_pool(cluster, pool).names[0]
    name = f"r-{uuid.uuid4().hex[:8]}" + "-kernel-deadlock" * 5
    assert len(name) > 63
    repairs.create(node, name=name, repair=job_repair(node), verify=VERIFY | {"conditions": []})
    status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=20)
    assert status["phase"] == "Succeeded", status
    assert len(status["repair"]["jobName"]) <= 63


def test_invalid_job_template_fails_with_a_clear_message(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    """Invariant 7: a Job template the API server rejects is bad input, reported in
    status (a clear lastError, then Failed), not a pass that fails forever."""
    node = make_pool(cluster, pool).names[0]
    repair = job_repair(node)
    repair["job"]["template"]["spec"]["template"]["spec"]["containers"] = []
    name = repairs.create(node, repair=repair, verify=VERIFY)
    # The refusal fails the attempt at once; Repairing may last only milliseconds.
    # (repair.timeoutSeconds is 30: a Failed "timed out" later would not say why)
    status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=45)
    assert status["phase"] == "Failed", status
    assert "containers" in status["repair"]["lastError"], status["repair"]


def test_new_repair_takes_over_from_a_failed_one(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    """A Failed repair keeps its node cordoned (KeepCordoned); a second repair of the
    node takes the lock over and, once it succeeds, returns the node as it was before
    the first one (schedulable). Deleting the failed repair then leaves the node alone."""
    node = make_pool(cluster, pool).names[0]
    first = repairs.create(node, repair=MANUAL, verify=VERIFY | {"conditions": []})
    repairs.wait_phase(first, "Repairing", timeout=30)
    mark(cluster, first, "false")
    repairs.wait_phase(first, "Failed", timeout=20)
    assert node_markers(cluster, node) == held(first)

    second = repairs.create(node, repair=MANUAL, verify=VERIFY | {"conditions": []})
    repairs.wait_phase(second, "Repairing", timeout=30)
    assert node_markers(cluster, node) == held(second)
    mark(cluster, second, "true")
    status = repairs.wait_phase(second, "Succeeded", "Failed", timeout=20)
    assert status["phase"] == "Succeeded", status
    assert node_markers(cluster, node) == RELEASED, "schedulable, as before the first repair"
    repairs.delete(first)  # returns once it is gone: its deletion handler has run
    assert node_markers(cluster, node) == RELEASED


# --- verification ---


def test_verify_waits_for_a_stable_node(cluster: Cluster, pool: Any, repairs: Repairs) -> None:
    """A node that flaps during verification restarts the stable window each time:
    the repair succeeds only once it has been healthy for stableSeconds on end."""
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    name = repairs.create(
        node, repair=MANUAL, verify=VERIFY | {"stableSeconds": 3, "timeoutSeconds": 30}
    )
    repairs.wait_phase(name, "Repairing", timeout=30)
    heal(cluster, node)
    healed_at = datetime.now(UTC)
    mark(cluster, name, "true")
    repairs.wait_phase(name, "Verifying", timeout=10)

    def healthy_since() -> datetime | None:
        since = (repairs.status(name).get("verify") or {}).get("healthySince")
        return parse_time(since) if since else None

    for _ in range(3):
        since = wait_until("healthySince set", healthy_since, timeout=10)
        assert since >= healed_at, (since, healed_at)
        assert repairs.phase(name) == "Verifying", "succeeded inside the stable window"
        time.sleep(0.3)
        inject(cluster, node)
        wait_until(
            "the flap seen: healthySince reset",
            lambda: (
                healthy_since() is None
                and (repairs.condition(name, "Verified") or {}).get("reason") == "NodeUnhealthy"
            ),
            timeout=10,
        )
        assert repairs.phase(name) == "Verifying"
        healed_at = datetime.now(UTC)
        heal(cluster, node, wait=False)

    status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=20)
    assert status["phase"] == "Succeeded", status
    since = parse_time(status["verify"]["healthySince"])
    assert since >= healed_at, "the stable window began after the last heal"
    done = parse_time(status["completionTime"])
    assert (done - healed_at).total_seconds() >= 3.0, (done, healed_at)
    assert (done - since).total_seconds() >= 3.0, (done, since)
    assert "held for 3s" in cond(status, "Verified")["message"]


def test_node_cordoned_before_stays_cordoned(cluster: Cluster, pool: Any, repairs: Repairs) -> None:
    node = make_pool(cluster, pool).names[0]
    cluster.core.patch_node(node, {"spec": {"unschedulable": True}})
    name = repairs.create(node, repair=MANUAL, verify=VERIFY | {"conditions": []})
    repairs.wait_phase(name, "Repairing", timeout=30)
    assert node_markers(cluster, node) == held(name)
    assert cluster.core.read_node(node).metadata.annotations[WAS_UNSCHEDULABLE] == "true"
    mark(cluster, name, "true")
    status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=20)
    assert status["phase"] == "Succeeded", status
    assert node_markers(cluster, node) == {"unschedulable": True, "taint": False, "lock": None}
    assert WAS_UNSCHEDULABLE not in (cluster.core.read_node(node).metadata.annotations or {})
    uncordoned = cond(status, "Uncordoned")
    assert uncordoned["status"] == "True"
    assert "stays cordoned" in uncordoned["message"], uncordoned
    assert "stays cordoned" in status["message"]


# --- deletion ---


def test_deleting_a_repair_with_a_running_job(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    node = make_pool(cluster, pool).names[0]
    name = f"r-{uuid.uuid4().hex[:8]}"
    job_name = f"pitstop-{name}-1"
    with Agent(cluster, name, node, heal_on=set()) as agent:
        repairs.create(node, name=name, repair=job_repair(node, run="60s"), verify=VERIFY)
        wait_until("the Job's pod running", lambda: job_name in agent.ran_on, timeout=30)
    assert repairs.phase(name) == "Repairing"
    with phase_log(cluster, name) as phases:
        repairs.delete(name, timeout=30)
    assert phases[-1:] == ["Aborted"], phases
    wait_until(f"Job {job_name} deleted", lambda: job_gone(cluster, job_name), timeout=20)
    wait_until("node released", lambda: node_markers(cluster, node) == RELEASED, timeout=5)


def test_deleting_a_repair_while_verifying(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    name = repairs.create(node, repair=MANUAL, verify=VERIFY | {"timeoutSeconds": 60})
    repairs.wait_phase(name, "Repairing", timeout=30)
    mark(cluster, name, "true")  # but the node is still faulty: it stays Verifying
    repairs.wait_phase(name, "Verifying", timeout=10)
    decided_again(cluster, running_operator, name)
    assert repairs.phase(name) == "Verifying"
    assert node_markers(cluster, node) == held(name)
    repairs.delete(name, timeout=30)
    assert node_markers(cluster, node) == RELEASED


# --- a SIGKILLed operator (invariant 6) ---


def test_operator_killed_while_the_job_runs(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    name = f"r-{uuid.uuid4().hex[:8]}"
    job_name = f"pitstop-{name}-1"
    with Agent(cluster, name, node, heal_on={1}) as agent:
        repairs.create(node, name=name, repair=job_repair(node, run="4s"), verify=VERIFY)
        wait_until("the Job created", lambda: job_name in agent.jobs, timeout=30)
        running_operator.kill()
        uid = agent.jobs[job_name]
        assert repairs.phase(name) == "Repairing"
        time.sleep(0.5)
        running_operator.start()
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=40)
    assert status["phase"] == "Succeeded", status
    assert status["repair"]["attempts"] == 1
    jobs = jobs_of(cluster, name)
    assert [(j.metadata.name, j.metadata.uid) for j in jobs] == [(job_name, uid)], (
        "exactly one Job for attempt 1, never re-created"
    )
    assert (jobs[0].status.succeeded, jobs[0].status.failed) == (1, None)
    assert node_markers(cluster, node) == RELEASED


def test_operator_killed_while_verifying(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    name = f"r-{uuid.uuid4().hex[:8]}"
    with Agent(cluster, name, node, heal_on={1}):
        repairs.create(
            node,
            name=name,
            repair=job_repair(node),
            verify=VERIFY | {"stableSeconds": 4, "timeoutSeconds": 30},
        )
        repairs.wait_phase(name, "Verifying", timeout=30)
        since = wait_until(
            "healthySince set",
            lambda: (repairs.status(name).get("verify") or {}).get("healthySince"),
            timeout=10,
        )
        running_operator.kill()
        assert repairs.phase(name) == "Verifying"
        time.sleep(0.5)
        running_operator.start()
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=30)
    assert status["phase"] == "Succeeded", status
    assert status["verify"]["healthySince"] == since, "the stable window survived the restart"
    done = parse_time(status["completionTime"])
    assert (done - parse_time(since)).total_seconds() >= 4.0
    assert status["repair"]["attempts"] == 1
    assert [j.metadata.name for j in jobs_of(cluster, name)] == [f"pitstop-{name}-1"]
    assert node_markers(cluster, node) == RELEASED


def test_failed_repair_with_uncordon_survives_a_crash(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    """Invariant 6 for `onFailure: Uncordon`: the operator writes phase Failed and
    only then gives the node back. A crash between the two is simulated here (the
    operator killed, the status it wrote put in place): after a restart the node
    must still be returned, as the spec asks."""
    node = make_pool(cluster, pool).names[0]
    name = repairs.create(
        node, repair=MANUAL, verify=VERIFY | {"conditions": []}, onFailure="Uncordon"
    )
    status = repairs.wait_phase(name, "Repairing", timeout=30)
    running_operator.kill()
    mark(cluster, name, "false")
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    failed = {
        "phase": "Failed",
        "phaseStartTime": now,
        "completionTime": now,
        "message": "RepairFailed: declared failed by a human (attempt 1 of 1)",
        "repair": {**status["repair"], "lastError": "declared failed by a human"},
    }
    cluster.custom.patch_cluster_custom_object_status(
        GROUP, VERSION, PLURAL, name, {"status": failed}
    )
    assert node_markers(cluster, node) == held(name)
    running_operator.start()
    wait_until(
        "node returned after a Failed repair with onFailure: Uncordon",
        lambda: node_markers(cluster, node) == RELEASED,
        timeout=10,
    )
