"""The second half of the repair state machine (pitstop.repair.recovery: Repairing →
Verifying → Uncordoning → Succeeded, or Failed) as hypothesis properties.

A run starts where the drain leaves a repair (RepairAllowed=True, the node locked
and cordoned) and goes through passes of `machine.decide`, the state machine's one
entry, as the driver makes them: time moves on, the node's Ready condition comes
and goes, the repair hook answers (a human's annotation, a Job's state, a webhook's
answer, each also stale or not read yet), and what a decision releases the harness
gives back, as the driver does. The properties are the DESIGN invariants:

- the node is given back (uncordoned) only after Verified=True, or on failure with
  `onFailure: Uncordon`; with KeepCordoned a Failed repair keeps it;
- attempts never exceed `repair.maxAttempts` (one for Manual), and the next one
  starts no earlier than its backoff;
- Verified=True only after the conditions held, pass after pass, for stableSeconds;
- an attempt ends at its timeout and verification at its own, never earlier;
- while it waits, a repair asks to be woken no later than its next deadline, and a
  run driven by those wake-ups alone always ends;
- a finished repair changes nothing any more.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pitstop import constants as C
from pitstop.conditions import is_true
from pitstop.models import (
    FINAL_PHASES,
    Condition,
    ConditionStatus,
    InstanceCounts,
    NodeRecord,
    NodeRepairSpec,
    NodeRepairStatus,
    OnFailure,
    Phase,
    RepairStrategy,
)
from pitstop.repair import ladder, recovery
from pitstop.repair.flow import Decision, JobState, Observation, WebhookAnswer
from pitstop.repair.machine import decide

NAME = "r1"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOOK = ["none", "stale", "running", "done", "failed", "missing", "refused", "odd"]
"""What the repair hook says at a pass, mapped per strategy by `observe`."""

JOB: dict[str, Any] = {"template": {"spec": {"template": {"spec": {"containers": []}}}}}
"""A Job repair's template (what it runs does not matter here)."""

PROPS = settings(deadline=None, max_examples=150)
"""No per-example deadline: the machine is shared, and slowness is not what is tested."""


@dataclass(frozen=True)
class Pass:
    dt: int
    """Seconds since the previous pass."""
    ready: str | None
    """The node's Ready condition status (None: the node reports none)."""
    hook: str
    lag: bool = False
    """The node as the driver's index shows it still lacks the last release."""


passes = st.builds(
    Pass,
    dt=st.one_of(st.integers(0, 5), st.integers(0, 400)),
    ready=st.sampled_from(["True", "True", "True", "False", "Unknown", None]),
    hook=st.sampled_from([*HOOK, "done", "done", "done"]),  # runs that get somewhere
    lag=st.sampled_from([False, False, True]),
)


@st.composite
def specs(draw: st.DrawFn) -> NodeRepairSpec:
    # The ladder's own properties (several steps; Replace, External) are in
    # test_ladder_props.py: here, one step of the strategies that need no cluster.
    strategy = draw(
        st.sampled_from([RepairStrategy.MANUAL, RepairStrategy.JOB, RepairStrategy.WEBHOOK])
    )
    repair: dict[str, Any] = {
        "strategy": strategy.value,
        "timeoutSeconds": draw(st.integers(1, 300)),
        "maxAttempts": draw(st.integers(1, 4)),
    }
    if strategy == RepairStrategy.JOB:
        repair["job"] = JOB
    if strategy == RepairStrategy.WEBHOOK:
        repair["webhook"] = {"url": "https://repair.example/nodes"}
    return NodeRepairSpec.model_validate(
        {
            "nodeName": "n1",
            "repair": repair,
            "verify": {
                "stableSeconds": draw(st.sampled_from([0, 0, 5, 30, 60])),
                "timeoutSeconds": draw(st.integers(1, 300)),
            },
            "onFailure": draw(st.sampled_from(list(OnFailure))).value,
        }
    )


def done(type_: str) -> Condition:
    return Condition(
        type=type_,
        status=ConditionStatus.TRUE,
        reason=type_,
        message="",
        last_transition_time=T0 - timedelta(seconds=60),
    )


def allowed() -> NodeRepairStatus:
    """What the drain leaves: every drain condition True, Repairing just entered."""
    conds = [C.COND_CORDONED, C.COND_DEREGISTERED, C.COND_TASKS_DRAINED]
    conds += [C.COND_INSTANCES_OFFLINE, C.COND_REPAIR_ALLOWED]
    return NodeRepairStatus(
        phase=Phase.REPAIRING,
        conditions=[done(c) for c in conds],
        instances=InstanceCounts(),
        node=NodeRecord(was_unschedulable=False),
        start_time=T0 - timedelta(seconds=300),
        phase_start_time=T0,
    )


def locked_node(ready: str | None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "n1",
            "annotations": {C.ANNOTATION_REPAIR: NAME, C.ANNOTATION_WAS_UNSCHEDULABLE: "false"},
        },
        "spec": {"unschedulable": True, "taints": [{"key": C.TAINT_MAINTENANCE}]},
        "status": {"conditions": [] if ready is None else [{"type": "Ready", "status": ready}]},
    }


def released_node(ready: str | None) -> dict[str, Any]:
    node = locked_node(ready)
    node["metadata"]["annotations"] = {}
    node["spec"] = {}
    return node


@dataclass
class Step:
    """One pass: what was decided from what."""

    before: NodeRepairStatus
    obs: Observation
    d: Decision
    healthy_for: float | None
    """How long the node has been seen Ready=True at every pass, up to this one."""
    held: bool
    """The node carried our lock at this pass (as observed)."""

    @property
    def after(self) -> NodeRepairStatus:
        return self.d.status


@dataclass
class Run:
    spec: NodeRepairSpec
    steps: list[Step] = field(default_factory=list)
    status: NodeRepairStatus = field(default_factory=allowed)
    now: datetime = T0
    held: bool = True
    released: bool = False
    """The last pass gave the node back."""
    streak: datetime | None = None

    def observe(self, p: Pass) -> Observation:
        rs = self.status.repair
        attempt = rs.attempts if rs else 0
        strategy = ladder.current(self.spec, rs).strategy
        mark: str | None = None
        job: JobState | None = None
        hook: WebhookAnswer | None = None
        if strategy == RepairStrategy.MANUAL:
            mark = {"done": "true", "failed": "false", "odd": "True "}.get(p.hook)
        elif strategy == RepairStrategy.JOB and p.hook != "none" and attempt:
            current = recovery.job_name(NAME, attempt)
            stale = recovery.job_name(NAME, attempt - 1) if attempt > 1 else "someone-else"
            state, message = {
                "running": ("Running", ""),
                "done": ("Complete", ""),
                "failed": ("Failed", "BackoffLimitExceeded"),
                "missing": ("Missing", ""),
                "refused": ("Failed", "cannot create Job: forbidden"),
                "odd": ("Running", ""),
            }.get(p.hook, ("Complete", ""))
            job = JobState(stale if p.hook == "stale" else current, state, message)
        elif strategy == RepairStrategy.WEBHOOK and p.hook != "none" and attempt:
            state = {"done": "Succeeded", "failed": "Failed", "refused": "Error"}.get(
                p.hook, "Running"
            )
            seen = attempt - 1 if p.hook == "stale" else attempt
            hook = WebhookAnswer(seen, state, "", self.now - timedelta(seconds=p.dt % 3))
        shows_lock = self.held or (p.lag and self.released)
        node = locked_node(p.ready) if shows_lock else released_node(p.ready)
        return Observation(
            now=self.now,
            name=NAME,
            generation=1,
            spec=self.spec,
            status=self.status,
            node=node,
            holder_active=False,
            instances=[],
            repaired_mark=mark,
            job=job,
            webhook=hook,
        )

    def step(self, p: Pass) -> Step:
        self.now += timedelta(seconds=p.dt)
        if p.ready == "True":
            self.streak = self.streak or self.now
        else:
            self.streak = None
        obs = self.observe(p)
        held = obs.node is not None and C.ANNOTATION_REPAIR in obs.node["metadata"]["annotations"]
        d = decide(obs)
        healthy = None if self.streak is None else (self.now - self.streak).total_seconds()
        step = Step(self.status, obs, d, healthy, held)
        self.steps.append(step)
        self.status = d.status
        self.released = d.release
        if d.release:
            self.held = False  # the driver gives the node back; the index may lag
        return step


def run(spec: NodeRepairSpec, script: list[Pass]) -> Run:
    r = Run(spec)
    for p in script:
        r.step(p)
    return r


def steps(spec: NodeRepairSpec, script: list[Pass]) -> Iterator[Step]:
    yield from run(spec, script).steps


def attempts(status: NodeRepairStatus) -> int:
    return status.repair.attempts if status.repair else 0


scripts = st.lists(passes, min_size=1, max_size=30)


# --- invariant 3: uncordon only after Verified=True ---


@PROPS
@given(specs(), scripts)
def test_the_node_is_given_back_only_after_verified_or_on_failure_with_uncordon(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    for s in steps(spec, script):
        if s.d.release:
            if s.after.phase == Phase.FAILED:
                assert spec.on_failure == OnFailure.UNCORDON
            else:
                assert is_true(s.after.conditions, C.COND_VERIFIED), s.after
        if s.after.phase in (Phase.UNCORDONING, Phase.SUCCEEDED):
            assert is_true(s.after.conditions, C.COND_VERIFIED)
            assert is_true(s.after.conditions, C.COND_REPAIRED)


@PROPS
@given(specs(), scripts)
def test_a_failed_repair_keeps_the_node_cordoned_unless_told_to_uncordon(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    for s in steps(spec, script):
        if s.after.phase == Phase.FAILED and s.before.phase != Phase.FAILED:
            assert s.d.release == (spec.on_failure == OnFailure.UNCORDON and s.held)
            assert s.after.repair is not None and s.after.repair.last_error
            assert s.after.completion_time == s.obs.now
            assert any(e.type == "Warning" and e.on_node for e in s.d.events)


@PROPS
@given(specs(), scripts)
@example(
    NodeRepairSpec.model_validate({"nodeName": "n1", "verify": {"stableSeconds": 0}}),
    [Pass(0, "True", "none"), Pass(1, "True", "done"), Pass(1, "True", "done", lag=True)],
)
def test_succeeded_only_once_the_node_no_longer_carries_the_lock(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    for s in steps(spec, script):
        if s.after.phase == Phase.SUCCEEDED and s.before.phase != Phase.SUCCEEDED:
            assert not s.held, "Succeeded while the node still carried the lock"
            assert is_true(s.after.conditions, C.COND_UNCORDONED)


# --- attempts ---


@PROPS
@given(specs(), scripts)
def test_attempts_never_exceed_max_attempts_and_each_waits_for_its_backoff(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    most = ladder.max_attempts(ladder.current(spec, None))
    for s in steps(spec, script):
        before, after = attempts(s.before), attempts(s.after)
        assert after <= most
        assert before <= after <= before + 1, "attempts only count up, one at a time"
        if after == before + 1 and before >= 1:
            assert s.before.repair is not None
            due = s.before.repair.next_attempt_time
            assert due is not None and s.obs.now >= due, "a new attempt before its backoff"
        rs_before, rs = s.before.repair, s.after.repair
        if rs and rs.next_attempt_time and not (rs_before and rs_before.next_attempt_time):
            # A failed attempt schedules the next one after exactly its backoff.
            assert rs.next_attempt_time == s.obs.now + recovery.retry_backoff(rs.attempts)


@PROPS
@given(specs(), scripts)
@example(
    NodeRepairSpec.model_validate({"nodeName": "n1", "repair": {"strategy": "Job", "job": JOB}}),
    [Pass(0, "True", "none"), Pass(1, "True", "missing")],
)
def test_hook_actions_are_for_the_current_attempt(spec: NodeRepairSpec, script: list[Pass]) -> None:
    for s in steps(spec, script):
        n = attempts(s.after)
        if s.d.create_job is not None:
            assert ladder.current(spec, None).strategy == RepairStrategy.JOB
            assert s.d.create_job == recovery.job_name(NAME, n)
        if s.d.delete_job is not None:
            assert s.d.delete_job == recovery.job_name(NAME, n)
        if s.d.call_webhook is not None:
            assert ladder.current(spec, None).strategy == RepairStrategy.WEBHOOK
            assert s.d.call_webhook[0] == n


# --- verification ---


@PROPS
@given(specs(), scripts)
def test_verified_only_after_the_conditions_held_for_the_stable_window(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    for s in steps(spec, script):
        if is_true(s.after.conditions, C.COND_VERIFIED) and not is_true(
            s.before.conditions, C.COND_VERIFIED
        ):
            assert s.healthy_for is not None, "verified at a pass that saw the node unhealthy"
            assert s.healthy_for >= spec.verify.stable_seconds


@PROPS
@given(specs(), scripts)
def test_a_flap_restarts_the_stable_window(spec: NodeRepairSpec, script: list[Pass]) -> None:
    for s in steps(spec, script):
        vs = s.after.verify
        if s.after.phase == Phase.VERIFYING and vs is not None and vs.healthy_since is not None:
            assert s.healthy_for is not None
            assert vs.healthy_since >= s.obs.now - timedelta(seconds=s.healthy_for)


# --- timeouts ---


@PROPS
@given(specs(), scripts)
def test_an_attempt_ends_at_its_timeout_and_not_before(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    limit = timedelta(seconds=spec.repair.timeout_seconds)
    for s in steps(spec, script):
        rs = s.before.repair
        if s.before.phase != Phase.REPAIRING or rs is None or rs.attempt_start_time is None:
            continue
        running = rs.next_attempt_time is None
        if running and s.obs.now >= rs.attempt_start_time + limit:
            after = s.after.repair
            assert after is not None
            still = s.after.phase == Phase.REPAIRING and after.attempts == rs.attempts
            assert not (still and after.next_attempt_time is None), "ran past its timeout"
        last_error = s.after.repair.last_error if s.after.repair else None
        if running and last_error != rs.last_error and "timed out" in (last_error or ""):
            assert s.obs.now >= rs.attempt_start_time + limit, "timed out early"


@PROPS
@given(specs(), scripts)
def test_verification_ends_at_its_timeout_and_not_before(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    limit = timedelta(seconds=spec.verify.timeout_seconds)
    for s in steps(spec, script):
        if s.before.phase != Phase.VERIFYING:
            continue
        assert s.before.phase_start_time is not None
        deadline = s.before.phase_start_time + limit
        if s.obs.now >= deadline:
            assert s.after.phase != Phase.VERIFYING, "verifying past its timeout"
        if s.after.phase in (Phase.REPAIRING, Phase.FAILED):
            assert s.obs.now >= deadline, "verification given up before its timeout"


@PROPS
@given(specs(), scripts)
def test_a_waiting_repair_asks_to_be_woken_by_its_next_deadline(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    for s in steps(spec, script):
        status, rs = s.after, s.after.repair
        if status.phase == Phase.REPAIRING:
            assert rs is not None and rs.attempt_start_time is not None
            deadline = rs.next_attempt_time or rs.attempt_start_time + timedelta(
                seconds=spec.repair.timeout_seconds
            )
        elif status.phase == Phase.VERIFYING:
            assert status.phase_start_time is not None
            deadline = status.phase_start_time + timedelta(seconds=spec.verify.timeout_seconds)
        else:
            continue
        assert s.d.wake_at is not None and s.d.wake_at <= deadline, (s.d.wake_at, deadline)


# --- the end ---


@PROPS
@given(specs(), scripts)
def test_a_finished_repair_changes_nothing(spec: NodeRepairSpec, script: list[Pass]) -> None:
    for s in steps(spec, script):
        if s.before.phase in FINAL_PHASES:
            assert s.after == s.before
            assert not (s.d.release or s.d.create_job or s.d.call_webhook or s.d.events)


GOOD = Pass(0, "True", "done")


def woken(r: Run) -> Pass:
    """The next pass as the driver makes it when nothing else happens: at once after
    a release, else at the decision's wake-up time; the hook done, the node Ready."""
    d = r.steps[-1].d
    if d.release or d.wake_at is None:
        return GOOD
    return Pass(max(0, int((d.wake_at - r.now).total_seconds() + 0.999)), "True", "done")


@PROPS
@given(specs(), st.lists(passes, max_size=20))
@example(
    NodeRepairSpec.model_validate(
        {"nodeName": "n1", "verify": {"stableSeconds": 30, "timeoutSeconds": 60}}
    ),
    [],
)
def test_driven_by_its_wake_ups_a_repair_always_ends_and_a_good_one_succeeds(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    """Whatever happened before, from a pass on where the hook reports success and the
    node stays Ready, a repair woken only at its own wake-up times reaches a final
    phase; Succeeded, unless it had already failed or was verifying its last attempt
    (whose window may be too short for the rest of its stable time)."""
    r = run(spec, script)
    first_good = r.status.model_copy(deep=True)
    r.step(GOOD)
    for _ in range(40):  # four attempts of a few passes each, with room to spare
        if r.status.phase in FINAL_PHASES:
            break
        r.step(woken(r))
    assert r.status.phase in FINAL_PHASES, r.status
    last = ladder.max_attempts(ladder.current(spec, None))
    late = first_good.phase == Phase.VERIFYING and attempts(first_good) == last
    short = spec.verify.stable_seconds >= spec.verify.timeout_seconds
    if first_good.phase != Phase.FAILED and not late and not short:
        assert r.status.phase == Phase.SUCCEEDED, r.status
