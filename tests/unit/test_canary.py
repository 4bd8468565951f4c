"""verify.canary (issue 22, item 5): once the node's conditions held, a pod the
platform defines must succeed on it before it is returned. The decision is pure
(recovery.verifying through machine.decide); the pod's body, its reading and the
grants are hooks' (a fake API answers)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import kopf
import pytest
from pydantic import ValidationError

from pitstop import constants as C
from pitstop.conditions import find
from pitstop.models import (
    CanaryResult,
    NodeRepairSpec,
    NodeRepairStatus,
    Phase,
    RepairStatus,
    VerifyStatus,
)
from pitstop.registry import Registry
from pitstop.repair import daemon, flow, hooks, recovery
from pitstop.repair.flow import CanaryState, Decision, Observation
from pitstop.repair.machine import decide
from tests.unit.test_abort_status import Store
from tests.unit.test_hooks_trust import REPAIR, FakeKube, sa_path
from tests.unit.test_recovery_props import JOB, NAME, T0, allowed, done, locked_node

UID = "0f7c9a52-1111-4222-8333-444455556666"
CANARY_POD: dict[str, Any] = {
    "metadata": {"labels": {"app": "probe"}},
    "spec": {"containers": [{"name": "probe", "image": "busybox", "args": ["true"]}]},
}


def spec(max_attempts: int = 2, timeout: int = 60, **canary: Any) -> NodeRepairSpec:
    return NodeRepairSpec.model_validate(
        {
            "nodeName": "n1",
            "repair": {"strategy": "Job", "job": JOB, "maxAttempts": max_attempts},
            "verify": {
                "stableSeconds": 30,
                "timeoutSeconds": 600,
                "canary": {"pod": CANARY_POD, "timeoutSeconds": timeout, **canary},
            },
        }
    )


def verifying(healthy_since_s: int = 60, attempts: int = 1) -> NodeRepairStatus:
    """A repair whose attempt repaired the node, its conditions held long enough."""
    status = allowed()
    status.phase = Phase.VERIFYING
    status.phase_start_time = T0 - timedelta(seconds=healthy_since_s)
    status.conditions.append(done(C.COND_REPAIRED))
    status.repair = RepairStatus(
        attempts=attempts,
        attempt_start_time=T0 - timedelta(seconds=300),
        job_name=recovery.job_name(NAME, attempts),
    )
    status.verify = VerifyStatus(healthy_since=T0 - timedelta(seconds=healthy_since_s))
    return status


def observe(
    sp: NodeRepairSpec,
    status: NodeRepairStatus,
    canary: CanaryState | None = None,
    dt: int = 0,
    ready: str = "True",
) -> Observation:
    return Observation(
        now=T0 + timedelta(seconds=dt),
        name=NAME,
        generation=1,
        spec=sp,
        status=status,
        node=locked_node(ready),
        holder_active=False,
        instances=[],
        uid=UID,
        canary=canary,
    )


def verified(d: Decision) -> tuple[str, str]:
    cond = find(d.status.conditions, C.COND_VERIFIED)
    assert cond is not None
    return cond.status.value, cond.reason


def started(sp: NodeRepairSpec) -> tuple[NodeRepairStatus, str]:
    """The first pass with the conditions held: the canary is started."""
    d = decide(observe(sp, verifying()))
    assert d.create_canary is not None
    return d.status, d.create_canary


def test_the_canary_starts_once_the_conditions_held_and_the_node_stays_cordoned() -> None:
    sp = spec()
    d = decide(observe(sp, verifying()))
    name = recovery.canary_name(UID, 1)
    assert d.create_canary == name
    assert d.status.phase == Phase.VERIFYING and not d.release
    assert verified(d) == ("False", C.REASON_CANARY_RUNNING)
    assert d.status.verify is not None and d.status.verify.canary is not None
    assert d.status.verify.canary.pod == name
    assert d.status.verify.canary.result == CanaryResult.RUNNING
    assert d.status.verify.canary.start_time == T0
    assert d.wake_at is not None and d.wake_at <= T0 + timedelta(seconds=1)
    assert [e.reason for e in d.events] == [C.REASON_CANARY_STARTED]


def test_no_canary_before_the_conditions_held_long_enough() -> None:
    d = decide(observe(spec(), verifying(healthy_since_s=10)))
    assert d.create_canary is None
    assert verified(d) == ("False", C.REASON_STABILIZING)


def test_without_a_canary_the_node_is_returned_as_before() -> None:
    sp = spec().model_copy(deep=True)
    sp.verify.canary = None
    d = decide(observe(sp, verifying()))
    assert d.create_canary is None and d.release
    assert d.status.phase == Phase.UNCORDONING


def test_a_restarted_operator_finds_the_canary_and_never_makes_a_second() -> None:
    """Invariant 6: the name is the repair's uid, step and attempt, recorded in status
    before the pod is made. A new process deciding from that status (the pod not read
    yet, or found running) creates nothing new; one that finds it missing (its creation
    was lost with the old process) creates the same name again, and a 409 from that
    POST is taken as the pod being there."""
    sp = spec()
    status, name = started(sp)
    for seen in (None, CanaryState(name, "Running", "phase Pending")):
        again = decide(observe(sp, status, seen, dt=2))
        assert again.create_canary is None
        assert again.status.verify is not None and again.status.verify.canary is not None
        assert again.status.verify.canary.pod == name
        assert again.status.verify.canary.start_time == T0  # its timeout does not move
    lost = decide(observe(sp, status, CanaryState(name, "Missing"), dt=2))
    assert lost.create_canary == name
    # The same repair, step and attempt always give the same name; another uid,
    # step or attempt another.
    assert recovery.canary_name(UID, 1) == name
    assert len({name, recovery.canary_name(UID, 2), recovery.canary_name(UID, 1, 2)}) == 3
    assert recovery.canary_name("other-uid", 1) != name
    assert len(recovery.canary_name("x" * 300, 99, 16)) <= 63

    kube = FakeKube({sa_path(C.REPAIR_SERVICE_ACCOUNT): {"metadata": {}}})

    async def conflict(method: str, path: str, body: Any = None) -> dict[str, Any]:
        kube.sent.append((method, path, body))
        if method == "POST":
            raise hooks.ApiError(409, "already exists")
        return {"metadata": {}}

    kube.request = conflict  # type: ignore[method-assign]
    assert asyncio.run(hooks.create_canary(kube, REPAIR, sp, name)) is None  # type: ignore[arg-type]


def test_a_passed_canary_returns_the_node_and_is_deleted() -> None:
    sp = spec()
    status, name = started(sp)
    d = decide(observe(sp, status, CanaryState(name, "Succeeded"), dt=5))
    assert d.status.phase == Phase.UNCORDONING and d.release
    assert verified(d) == ("True", C.REASON_VERIFIED)
    assert d.delete_canary == name
    assert d.status.verify is not None and d.status.verify.canary is not None
    assert d.status.verify.canary.result == CanaryResult.PASSED
    assert d.status.verify.canary.reason == C.REASON_CANARY_PASSED
    assert C.REASON_CANARY_PASSED in [e.reason for e in d.events]


def test_a_failed_canary_is_a_failed_verification_the_next_attempt_retries() -> None:
    sp = spec(max_attempts=2)
    status, name = started(sp)
    d = decide(observe(sp, status, CanaryState(name, "Failed", "probe exited 1"), dt=5))
    assert not d.release
    assert d.status.phase == Phase.REPAIRING  # the same path as a verify timeout
    assert d.delete_canary == name
    assert verified(d) == ("False", C.REASON_CANARY_FAILED)
    repaired = find(d.status.conditions, C.COND_REPAIRED)
    assert repaired is not None and repaired.reason == C.REASON_REPAIR_ATTEMPT_FAILED
    assert d.status.repair is not None and d.status.repair.next_attempt_time is not None
    assert "probe exited 1" in (d.status.repair.last_error or "")
    assert d.status.verify is not None and d.status.verify.canary is not None
    assert d.status.verify.canary.result == CanaryResult.FAILED
    assert d.status.verify.canary.reason == C.REASON_CANARY_FAILED
    assert C.REASON_CANARY_FAILED in [e.reason for e in d.events]


def test_a_failed_canary_on_the_last_attempt_fails_the_repair_and_keeps_the_node() -> None:
    sp = spec(max_attempts=1)
    status, name = started(sp)
    d = decide(observe(sp, status, CanaryState(name, "Failed", "probe exited 1"), dt=5))
    assert d.status.phase == Phase.FAILED
    assert not d.release  # onFailure: KeepCordoned
    assert d.delete_canary == name


def test_a_canary_that_outlives_its_timeout_fails() -> None:
    sp = spec(max_attempts=1, timeout=60)
    status, name = started(sp)
    running = CanaryState(name, "Running", "phase Pending")
    before = decide(observe(sp, status, running, dt=59))
    assert before.status.phase == Phase.VERIFYING
    assert before.wake_at is not None and before.wake_at <= T0 + timedelta(seconds=60)
    d = decide(observe(sp, status, running, dt=60))
    assert d.status.phase == Phase.FAILED and d.delete_canary == name
    assert "did not succeed within 60s" in (d.status.message or "")


def test_the_canary_that_could_not_be_created_fails_the_canary() -> None:
    sp = spec(max_attempts=1)
    status, name = started(sp)
    refused = CanaryState(name, "Failed", "cannot create canary pod: CanaryNotAllowed: ...")
    d = decide(observe(sp, status, refused, dt=1))
    assert d.status.phase == Phase.FAILED
    assert "CanaryNotAllowed" in (d.status.message or "")


def test_a_canary_left_running_when_verification_ends_another_way_is_deleted() -> None:
    """The node turned unhealthy while the canary ran and the verify timeout passed:
    the attempt fails as before, and its canary goes with it (once)."""
    sp = spec(max_attempts=2)
    status, name = started(sp)
    d = decide(observe(sp, status, CanaryState(name, "Running"), dt=601, ready="False"))
    assert d.status.phase == Phase.REPAIRING
    assert d.delete_canary == name
    assert d.status.verify is not None and d.status.verify.canary is not None
    assert d.status.verify.canary.result == CanaryResult.FAILED
    later = decide(observe(sp, d.status, None, dt=602))
    assert later.delete_canary is None  # not asked again pass after pass


def test_the_deadline_of_verifying_includes_a_canary_started_late() -> None:
    sp = spec(timeout=600)
    status, _ = started(sp)
    deadline = flow.phase_deadline(sp, status)
    assert deadline == T0 + timedelta(seconds=600)
    assert status.phase_start_time is not None
    assert deadline > status.phase_start_time + timedelta(seconds=sp.verify.timeout_seconds)


# --- the model: bad input is refused (the CRD's CEL rules say the same) ---


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ({"timeoutSeconds": 0}, "between 1 and 3600"),
        ({"timeoutSeconds": 3601}, "between 1 and 3600"),
        ({"pod": {"spec": {"nodeName": "elsewhere"}}}, "leave nodeName unset"),
        ({"pod": {"spec": {"restartPolicy": "Always"}}}, "restartPolicy"),
        ({"pod": {"spec": {"serviceAccountName": "pitstop"}}}, "operator's own"),
    ],
)
def test_bad_canaries_are_refused(canary: dict[str, Any], message: str) -> None:
    raw = {"pod": CANARY_POD, "timeoutSeconds": 60, **canary}
    with pytest.raises(ValidationError, match=message):
        NodeRepairSpec.model_validate({"nodeName": "n1", "verify": {"canary": raw}})


# --- the pod ---


def test_the_canary_pod_runs_on_the_node_with_the_granted_rights_and_is_owned() -> None:
    sp = spec()
    name = recovery.canary_name(UID, 1)
    body = hooks.canary_body(REPAIR, sp, name)  # type: ignore[arg-type]
    pod = body["spec"]
    assert body["metadata"]["name"] == name
    assert body["metadata"]["namespace"] == C.OPERATOR_NAMESPACE
    assert body["metadata"]["labels"] == {
        "app": "probe",
        C.ANNOTATION_REPAIR: "r1",
        C.LABEL_CANARY: "true",
    }
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert pod["nodeName"] == "n1"  # bypasses the scheduler, and so the cordon
    assert pod["serviceAccountName"] == C.REPAIR_SERVICE_ACCOUNT
    assert pod["restartPolicy"] == "Never"
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["NODE_NAME"] == "n1" and env["NODEREPAIR_NAME"] == "r1"


def test_a_canary_pod_outside_the_grants_is_never_created() -> None:
    """A canary runs with the rights the admin granted, as a repair Job: a
    ServiceAccount not labelled for repairs is refused while Pending (refusal) and
    again when the pod would be created, which then sends no POST."""
    sp = spec(pod={"spec": {"serviceAccountName": "powerful", "containers": []}})
    kube = FakeKube({sa_path("powerful"): {"metadata": {"name": "powerful"}}})
    found = asyncio.run(hooks.refusal(kube, sp))  # type: ignore[arg-type]
    assert found is not None and found[0] == C.REASON_CANARY_NOT_ALLOWED
    assert C.LABEL_REPAIR_ALLOWED in found[1]
    got = asyncio.run(hooks.create_canary(kube, REPAIR, sp, "c1"))  # type: ignore[arg-type]
    assert got is not None and got.state == "Failed"
    assert C.REASON_CANARY_NOT_ALLOWED in got.message
    assert not [s for s in kube.sent if s[0] == "POST"]
    host = spec(pod={"spec": {"hostNetwork": True, "containers": []}})
    kube = FakeKube({sa_path(C.REPAIR_SERVICE_ACCOUNT): {"metadata": {}}})
    found = asyncio.run(hooks.refusal(kube, host))  # type: ignore[arg-type]
    assert found is not None and "hostNetwork" in found[1]


def test_what_a_canary_pod_says() -> None:
    assert hooks.canary_state("c", None).state == "Missing"
    assert hooks.canary_state("c", {"status": {"phase": "Succeeded"}}).state == "Succeeded"
    assert hooks.canary_state("c", {"status": {"phase": "Running"}}).state == "Running"
    failed = hooks.canary_state(
        "c",
        {
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {"name": "probe", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}
                ],
            }
        },
    )
    assert failed.state == "Failed" and "probe exited 3 (Error)" in failed.message


# --- the repair deleted while its canary runs ---


class CanaryStore(Store):
    """The repair's status as the API server keeps it, and the pods deleted."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status)
        self.deleted_pods: list[str] = []

    async def request(self, method: str, path: str, *args: Any, **kw: Any) -> dict[str, Any]:
        if method == "DELETE" and "/pods/" in path:
            self.deleted_pods.append(path)
            return {}
        return await super().request(method, path, *args, **kw)


def test_deleting_the_repair_deletes_its_canary() -> None:
    """The finalizer (daemon.abort) deletes the canary the status names, with the
    pass in flight done first; the owner reference is only the garbage collector's
    backstop for one a lost answer left behind."""
    pod = recovery.canary_name(UID, 1)
    status = {
        "phase": "Verifying",
        "verify": {"canary": {"pod": pod, "startTime": "2026-03-01T12:00:00Z"}},
    }
    store = CanaryStore(status)

    async def scenario() -> None:
        memo = kopf.Memo(kube=store)
        Registry.fresh().install(memo)
        await daemon.abort(
            name="r1",
            spec=kopf.Spec({"nodeName": "n1"}),
            status=kopf.Status(status),
            body=kopf.Body({"metadata": {"name": "r1"}}),
            memo=memo,
            logger=logging.getLogger(),
        )

    asyncio.run(scenario())
    assert store.deleted_pods == [f"/api/v1/namespaces/{C.OPERATOR_NAMESPACE}/pods/{pod}"]
    assert store.status["phase"] == "Aborted"
