"""The repair ladder (pitstop.repair.ladder; repair.steps) as properties: the pure
step-advance rule alone, then ladders of every strategy driven through
`machine.decide` as the driver makes its passes, with restarts (the status read back
from its wire form, the driver's memory lost) between any two passes.

- a step is retried until its maxAttempts (Manual: one), then the next one starts
  at once, with its attempts from 1; the ladder never goes back;
- a step that cannot run here (Skipped) is not retried;
- the repair fails only on the last step, once it is used up;
- one RepairStepStarted Event per step a ladder of several enters;
- every hook action is the running step's (its Job name, its webhook attempt), and
  a webhook call is sent once per step and attempt, restarts or not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pitstop import constants as C
from pitstop.models import (
    NodeRepairSpec,
    NodeRepairStatus,
    Phase,
    RepairStatus,
    RepairStrategy,
    ReplaceStatus,
)
from pitstop.repair import ladder, recovery
from pitstop.repair.flow import JobState, Observation, StepState, WebhookAnswer
from pitstop.repair.machine import decide
from tests.unit.test_recovery_props import JOB, NAME, T0, allowed, locked_node

PROPS = settings(deadline=None, max_examples=200)
EXTERNAL = {
    "templateRef": {
        "apiVersion": "remediation.example.com/v1alpha1",
        "kind": "RebootTemplate",
        "namespace": "remediators",
        "name": "reboot",
    }
}


def step_of(strategy: RepairStrategy, attempts: int, timeout: int) -> dict[str, Any]:
    step: dict[str, Any] = {
        "strategy": strategy.value,
        "maxAttempts": attempts,
        "timeoutSeconds": timeout,
    }
    if strategy == RepairStrategy.JOB:
        step["job"] = JOB
    if strategy == RepairStrategy.WEBHOOK:
        step["webhook"] = {"url": "https://repair.example/nodes"}
    if strategy == RepairStrategy.EXTERNAL:
        step["external"] = EXTERNAL
    return step


@st.composite
def ladders(draw: st.DrawFn) -> NodeRepairSpec:
    rungs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(list(RepairStrategy)), st.integers(1, 3), st.integers(1, 120)
            ),
            min_size=1,
            max_size=4,
        )
    )
    return NodeRepairSpec.model_validate(
        {
            "nodeName": "n1",
            "repair": {"steps": [step_of(*r) for r in rungs]},
            "verify": {"stableSeconds": 0, "timeoutSeconds": draw(st.integers(1, 120))},
        }
    )


# --- the pure rule ---


@given(ladders(), st.lists(st.booleans(), min_size=1, max_size=20))
def test_failures_walk_the_ladder_in_order_and_end_after_the_last_step(
    spec: NodeRepairSpec, finals: list[bool]
) -> None:
    steps = ladder.steps(spec)
    rs = ladder.entered(steps, RepairStatus(attempts=1), T0)
    seen: list[tuple[int, int]] = []
    for final in finals:
        i = ladder.index(steps, rs)
        seen.append((i, rs.attempts))
        assert 1 <= rs.attempts <= ladder.max_attempts(steps[i])
        nxt = ladder.after_failure(steps, rs, T0, final)
        if isinstance(nxt, ladder.GiveUp):
            assert i == len(steps) - 1, "gave up before the last step"
            assert final or rs.attempts == ladder.max_attempts(steps[i])
            break
        if isinstance(nxt, ladder.MoveOn):
            assert nxt.to == i + 1, "a ladder moves one step at a time, forward"
            assert final or rs.attempts == ladder.max_attempts(steps[i])
            rs = ladder.moved_on(steps, rs, nxt.to, T0, "failed")
            assert rs.attempts == 0 and rs.moved_on and f"step {i + 1} of" in rs.moved_on
            rs = rs.model_copy(update={"attempts": 1})
        else:
            assert not final, "a step that cannot run here is retried"
            assert nxt.at == T0 + ladder.retry_backoff(rs.attempts)
            rs = rs.model_copy(update={"attempts": rs.attempts + 1})
    assert seen == sorted(seen), "the ladder never goes back"


def test_a_one_step_ladder_is_the_strategy() -> None:
    spec = NodeRepairSpec.model_validate(
        {"nodeName": "n", "repair": {"strategy": "Job", "job": JOB, "maxAttempts": 2}}
    )
    (only,) = ladder.steps(spec)
    assert (only.strategy, only.max_attempts, only.job) == (
        RepairStrategy.JOB,
        2,
        spec.repair.job,
    )
    assert ladder.steps(NodeRepairSpec.model_validate({"nodeName": "n"}))[0].strategy == (
        RepairStrategy.MANUAL
    )


def test_a_status_from_before_the_ladder_runs_its_first_step() -> None:
    """A repair that was Repairing under an older pitstop has no step in status."""
    spec = NodeRepairSpec.model_validate(
        {"nodeName": "n", "repair": {"steps": [{"strategy": "Manual"}, {"strategy": "Manual"}]}}
    )
    old = RepairStatus(attempts=1)
    assert ladder.index(ladder.steps(spec), old) == 0
    assert ladder.entered(ladder.steps(spec), old, T0).step == 1


def test_a_shortened_ladder_keeps_its_last_step() -> None:
    spec = NodeRepairSpec.model_validate(
        {"nodeName": "n", "repair": {"steps": [{"strategy": "Manual"}]}}
    )
    assert ladder.index(ladder.steps(spec), RepairStatus(step=3, attempts=1)) == 0


# --- through decide(), with restarts ---

OUTCOMES = ["none", "running", "done", "failed", "skip", "stale"]


@dataclass(frozen=True)
class Pass:
    dt: int
    outcome: str
    restart: bool
    gone: bool
    """The node has vanished (a Replace step's Machine took it along)."""


passes = st.builds(
    Pass,
    dt=st.one_of(st.integers(0, 5), st.integers(0, 200)),
    outcome=st.sampled_from([*OUTCOMES, "failed", "failed"]),
    restart=st.sampled_from([False, False, False, True]),
    gone=st.booleans(),
)


@dataclass(frozen=True)
class Seen:
    before: NodeRepairStatus
    after: NodeRepairStatus
    d: Any
    obs: Observation


def walk(spec: NodeRepairSpec, script: list[Pass]) -> list[Seen]:
    status, now = allowed(), T0
    webhook: WebhookAnswer | None = None
    seen: list[Seen] = []
    steps = ladder.steps(spec)
    for p in script:
        now += timedelta(seconds=p.dt)
        if p.restart:  # a new process: the status as stored, nothing remembered
            status = NodeRepairStatus.model_validate(status.wire())
            webhook = webhook
        rs = status.repair
        i = ladder.index(steps, rs)
        number, attempt = i + 1, rs.attempts if rs else 0
        strategy = steps[i].strategy
        job, remedy, mark = None, None, None
        started = status.phase == Phase.REPAIRING and attempt and not (rs and rs.next_attempt_time)
        if strategy == RepairStrategy.MANUAL:
            mark = {"done": "true", "failed": "false"}.get(p.outcome)
        elif strategy == RepairStrategy.JOB and started and p.outcome != "none":
            name = recovery.job_name(NAME, attempt, number)
            if p.outcome == "stale":
                name = recovery.job_name(NAME, attempt, number + 1)
            state = {"done": "Complete", "failed": "Failed"}.get(p.outcome, "Running")
            job = JobState(name, state, "BackoffLimitExceeded")
        elif strategy in (RepairStrategy.REPLACE, RepairStrategy.EXTERNAL) and started:
            state = {"done": "Succeeded", "failed": "Failed", "skip": "Skipped"}.get(
                p.outcome, "Running"
            )
            if p.outcome != "none":
                stale = p.outcome == "stale"
                remedy = StepState(number, attempt + stale, state, "what it says")
        elif strategy == RepairStrategy.WEBHOOK and webhook is not None and p.outcome != "none":
            state = {"done": "Succeeded", "failed": "Failed"}.get(p.outcome, "Running")
            webhook = WebhookAnswer(webhook.attempt, state, "", now, webhook.step)
        replaced = rs is not None and strategy == RepairStrategy.REPLACE and attempt > 0
        node = (
            None
            if (p.gone and replaced and status.phase == Phase.REPAIRING)
            else locked_node("True")
        )
        obs = Observation(
            now=now,
            name=NAME,
            generation=1,
            spec=spec,
            status=status,
            node=node,
            holder_active=False,
            instances=[],
            repaired_mark=mark,
            job=job,
            webhook=webhook,
            remedy=remedy,
        )
        if node is None and status.repair is not None and status.repair.replace is None:
            # What the driver records before it deletes the Machine.
            obs = Observation(**{**obs.__dict__, "status": _with_machine(status)})
        d = decide(obs)
        seen.append(Seen(obs.status, d.status, d, obs))
        if d.call_webhook is not None:  # the service answers Running at first
            a = d.call_webhook[0]
            webhook = WebhookAnswer(a, "Running", "", now, ladder.index(steps, d.status.repair) + 1)
        status = d.status
        if status.phase in (Phase.UNCORDONING,):
            status = status.model_copy(update={"phase": Phase.SUCCEEDED})
    return seen


def _with_machine(status: NodeRepairStatus) -> NodeRepairStatus:
    assert status.repair is not None
    record = ReplaceStatus(machine="ns/m1", machine_uid="u1", pool="set=a")
    return status.model_copy(
        update={"repair": status.repair.model_copy(update={"replace": record})}
    )


def step_no(status: NodeRepairStatus) -> int:
    return (status.repair.step or 1) if status.repair else 1


scripts = st.lists(passes, min_size=1, max_size=40)


@PROPS
@given(ladders(), scripts)
def test_the_ladder_only_goes_forward_and_each_step_starts_at_attempt_one(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    steps = ladder.steps(spec)
    for s in walk(spec, script):
        before, after = step_no(s.before), step_no(s.after)
        assert before <= after <= len(steps)
        rs = s.after.repair
        if rs is not None:
            assert rs.attempts <= ladder.max_attempts(steps[after - 1])
        if after > before:
            assert after == before + 1, "one step at a time"
            assert rs is not None and rs.attempts == 1, "the next step starts at once"
            assert rs.moved_on and f"step {before} of {len(steps)}" in rs.moved_on
            assert s.after.phase == Phase.REPAIRING
            assert [e.reason for e in s.d.events].count(C.REASON_STEP_STARTED) == 1
            assert any(
                e.reason in (C.REASON_STEP_FAILED, C.REASON_STEP_SKIPPED) for e in s.d.events
            )


@PROPS
@given(ladders(), scripts)
def test_a_repair_fails_only_once_its_last_step_is_used_up(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    steps = ladder.steps(spec)
    for s in walk(spec, script):
        if s.after.phase == Phase.FAILED and s.before.phase != Phase.FAILED:
            assert step_no(s.after) == len(steps)
            rs = s.after.repair
            assert rs is not None and rs.last_error
            last = steps[-1]
            skipped = s.obs.remedy is not None and s.obs.remedy.state == "Skipped"
            assert rs.attempts == ladder.max_attempts(last) or skipped


@PROPS
@given(ladders(), scripts)
def test_hook_actions_are_the_running_steps_and_a_call_is_sent_once(
    spec: NodeRepairSpec, script: list[Pass]
) -> None:
    steps = ladder.steps(spec)
    sent: Counter[tuple[int, int]] = Counter()
    for s in walk(spec, script):
        rs = s.after.repair
        number = step_no(s.after)
        if s.d.create_job is not None:
            assert rs is not None and steps[number - 1].strategy == RepairStrategy.JOB
            assert s.d.create_job == recovery.job_name(NAME, rs.attempts, number)
        if s.d.call_webhook is not None:
            assert rs is not None and steps[number - 1].strategy == RepairStrategy.WEBHOOK
            attempt, poll = s.d.call_webhook
            assert attempt == rs.attempts
            if not poll:
                sent[(number, attempt)] += 1
        if s.after.phase == Phase.SUCCEEDED and s.before.phase == Phase.REPAIRING:
            assert steps[number - 1].strategy == RepairStrategy.REPLACE
            assert s.obs.node is None, "replaced only once the old node is gone"
    assert all(n == 1 for n in sent.values()), sent


def test_three_steps_walk_to_manual() -> None:
    """The e2e ladder, pass by pass: a failing Job, a Webhook that times out, Manual."""
    spec = NodeRepairSpec.model_validate(
        {
            "nodeName": "n1",
            "repair": {
                "steps": [
                    {"name": "reset", **step_of(RepairStrategy.JOB, 1, 60)},
                    {"name": "reboot", **step_of(RepairStrategy.WEBHOOK, 1, 5)},
                    {"strategy": "Manual"},
                ]
            },
        }
    )
    seen = walk(
        spec,
        [
            Pass(0, "none", False, False),
            Pass(1, "failed", False, False),  # the Job fails: step 2 starts
            Pass(1, "running", False, False),
            Pass(10, "running", True, False),  # past the webhook step's 5 s
        ],
    )
    assert [step_no(s.after) for s in seen] == [1, 2, 2, 3]
    last = seen[-1].after
    assert last.repair is not None
    assert last.repair.step_name == "Manual" and last.repair.attempts == 1
    assert (
        last.repair.moved_on == "step 2 of 3: reboot (Webhook) failed: attempt 1 timed out after 5s"
    )
    assert "step 3 of 3: Manual" in (last.message or "")


def test_a_failed_external_attempt_deletes_its_cr_and_the_next_makes_its_own() -> None:
    """Without forgetting the CR, the retry would take the old CR's deletion (its
    own doing) for the remediator's success."""
    from pitstop.models import RemediationRef

    spec = NodeRepairSpec.model_validate(
        {"nodeName": "n1", "repair": {"steps": [step_of(RepairStrategy.EXTERNAL, 2, 60)]}}
    )
    ref = RemediationRef(
        api_version="remediation.example.com/v1alpha1",
        kind="Reboot",
        resource="reboots",
        namespace="remediators",
        name="n1",
    )
    status = allowed()
    status.repair = RepairStatus(
        step=1, steps=1, step_name="External", attempts=1, attempt_start_time=T0, external=ref
    )
    obs = Observation(
        now=T0 + timedelta(seconds=5),
        name=NAME,
        generation=1,
        spec=spec,
        status=status,
        node=locked_node("True"),
        holder_active=False,
        instances=[],
        remedy=StepState(1, 1, "Failed", "Reboot n1 failed"),
    )
    d = decide(obs)
    assert d.delete_external == ref
    assert d.status.repair is not None and d.status.repair.external is None
    assert d.status.repair.next_attempt_time is not None


@given(
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,60}[a-z0-9])?", fullmatch=True),
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,60}[a-z0-9])?", fullmatch=True),
    st.integers(1, 16),
    st.integers(1, 16),
    st.integers(1, 20),
    st.integers(1, 20),
)
@example("r-s2", "r", 1, 2, 1, 1)
def test_job_names_of_two_repairs_never_meet(
    a: str, b: str, step_a: int, step_b: int, attempt_a: int, attempt_b: int
) -> None:
    """A Job of that name that exists is taken for this attempt's (409): another
    repair's, or another step's, must never have it."""
    if (a, step_a, attempt_a) != (b, step_b, attempt_b):
        assert recovery.job_name(a, attempt_a, step_a) != recovery.job_name(b, attempt_b, step_b)
    assert len(recovery.job_name(a, attempt_a, step_a)) <= 63
