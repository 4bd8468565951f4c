"""After the drain: Repairing → Verifying → Uncordoning → Succeeded (or Failed).

Pure, like pitstop.repair.drain: it reads the repair's status, the node, and what the
driver learnt of the current attempt (the Job's state, the webhook's answer, the
human's annotation), and returns the next status and the actions to take.

Attempts: each step of the ladder (pitstop.repair.ladder; `repair.strategy` is a
ladder of one) has `maxAttempts` of repair-then-verify; a failed attempt (the hook
failed or timed out, or the node did not verify) starts the next one after a
backoff, and a step out of attempts hands over to the next step at once. Manual
steps have one attempt: the human's word is final."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from pitstop import constants
from pitstop.cluster import nodes
from pitstop.models import (
    CanaryResult,
    CanaryStatus,
    NodeRepairStatus,
    Phase,
    RepairStatus,
    RepairStrategy,
    VerifyStatus,
)
from pitstop.repair import ladder
from pitstop.repair.flow import Decision, Event, Observation, enter, fail, phase_start, set_cond

C = constants
JOB_POLL = timedelta(seconds=1)
"""Jobs live in the operator's namespace, outside its cluster-wide watches: their
state is read at this pace while one runs."""
WEBHOOK_POLL = timedelta(seconds=2)
REMEDY_POLL = timedelta(seconds=2)
"""A Replace step's Machines and an External step's CR are read at this pace."""
retry_backoff = ladder.retry_backoff


def job_name(repair: str, attempt: int, step: int = 1) -> str:
    """Deterministic per step and attempt (a restarted operator finds, never
    duplicates, it); at most 63 characters (Job names become pod labels). The first
    step's Jobs keep the names they had before the ladder; later steps' end in
    `s<step>a<attempt>`, never a number alone, so no two repairs' Jobs share a name
    (repair `r-s2` and step 2 of repair `r` would, with `s2-1`)."""
    tail = f"{attempt}" if step == 1 else f"s{step}a{attempt}"
    name = f"pitstop-{repair}-{tail}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(repair.encode()).hexdigest()[:8]
    return f"pitstop-{repair[: 63 - len(f'pitstop--{digest}-{tail}')]}-{digest}-{tail}"


def canary_name(uid: str, attempt: int, step: int = 1) -> str:
    """The canary pod of one attempt: deterministic per repair (its uid: a repair made
    again under the same name never adopts the old one's pod), ladder step and
    attempt, so a restarted operator finds it and never makes a second."""
    tail = f"s{step}a{attempt}"
    name = f"pitstop-canary-{uid}-{tail}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(uid.encode()).hexdigest()[:16]
    return f"pitstop-canary-{digest}-{tail}"


def replacing(status: NodeRepairStatus) -> bool:
    """A Replace step deleted the node's Machine: the node is expected to vanish."""
    rs = status.repair
    return status.phase == Phase.REPAIRING and rs is not None and rs.replace is not None


def repairing(d: Decision, obs: Observation) -> None:
    ladder_ = ladder.steps(obs.spec)
    now = obs.now
    rs = ladder.entered(ladder_, (d.status.repair or RepairStatus()).model_copy(), now)
    d.status.repair = rs
    i = ladder.index(ladder_, rs)
    step = ladder_[i]
    strategy = step.strategy
    where = f", {ladder.describe(ladder_, i)}" if len(ladder_) > 1 else ""

    if rs.attempts == 0 or (rs.next_attempt_time is not None and now >= rs.next_attempt_time):
        if rs.attempts == 0 and len(ladder_) > 1:
            started = f"Repair {ladder.describe(ladder_, i)}"
            if rs.moved_on:
                started += f" (after {rs.moved_on})"
            d.events.append(Event("Normal", C.REASON_STEP_STARTED, started, True))
        rs.attempts += 1
        rs.attempt_start_time, rs.next_attempt_time = now, None
        rs.job_name = (
            job_name(obs.name, rs.attempts, i + 1) if strategy == RepairStrategy.JOB else None
        )
        if strategy == RepairStrategy.WEBHOOK:
            rs.webhook_started = rs.attempts  # recorded before the call is made
            d.call_webhook = (rs.attempts, False)
        if strategy == RepairStrategy.JOB:
            d.create_job = rs.job_name
        detail = f"attempt {rs.attempts} of {ladder.max_attempts(step)}: {strategy.value}{where}"
        set_cond(d, obs, C.COND_REPAIRED, False, C.REASON_REPAIR_STARTED, detail)
        d.events.append(Event("Normal", C.REASON_REPAIR_STARTED, f"Repair {detail}", True))
        d.status.message = f"Repairing: {detail}"
        if strategy == RepairStrategy.MANUAL:
            d.status.message += f" (annotate {C.ANNOTATION_REPAIRED}=true when done)"
        d.wake_by(now + timedelta(seconds=step.timeout_seconds))
        if strategy in (RepairStrategy.JOB, RepairStrategy.REPLACE, RepairStrategy.EXTERNAL):
            d.wake_by(now + JOB_POLL)  # the driver reads (and starts) them from the next pass
        return

    if rs.next_attempt_time is not None:  # between attempts
        d.wake_by(rs.next_attempt_time)
        return

    assert rs.attempt_start_time is not None
    deadline = rs.attempt_start_time + timedelta(seconds=step.timeout_seconds)
    outcome, message = _outcome(d, obs, rs, strategy, i + 1)
    final = outcome == "skipped"
    if outcome is None and now >= deadline:
        outcome = "failed"
        message = f"attempt {rs.attempts} timed out after {step.timeout_seconds}s"
        if strategy == RepairStrategy.JOB and rs.job_name:
            d.delete_job, d.create_job = rs.job_name, None
        # A poll _outcome asked of the timed-out attempt is not sent: the ladder may
        # move on in this pass, and the call would go out as the next step's.
        d.call_webhook = None
    if outcome is not None and rs.external:
        d.delete_external = rs.external  # the remediator's work on the node ends here
    if outcome == "repaired" and strategy == RepairStrategy.REPLACE:
        replaced(d, obs, message)
    elif outcome == "repaired":
        set_cond(d, obs, C.COND_REPAIRED, True, C.REASON_REPAIRED, message)
        d.events.append(Event("Normal", C.REASON_REPAIRED, message))
        d.status.verify = VerifyStatus()
        enter(d, obs, Phase.VERIFYING)
        verifying(d, obs)
    elif outcome in ("failed", "skipped"):
        attempt_failed(d, obs, message, final)
    else:
        if obs.remedy is not None and obs.remedy.message:
            d.status.message = f"Repairing: {obs.remedy.message}{where}"
        d.wake_by(deadline)


def _outcome(
    d: Decision, obs: Observation, rs: RepairStatus, strategy: RepairStrategy, step: int
) -> tuple[str | None, str]:
    """("repaired" | "failed" | "skipped" | None while running, message) for the
    current attempt."""
    if strategy == RepairStrategy.MANUAL:
        mark = (obs.repaired_mark or "").strip().lower()
        if mark == "true":
            return "repaired", "declared repaired by a human"
        if mark == "false":
            return "failed", "declared failed by a human"
        return None, ""
    if strategy in (RepairStrategy.REPLACE, RepairStrategy.EXTERNAL):
        got = obs.remedy
        if got is None or (got.step, got.attempt) != (step, rs.attempts):
            d.wake_by(obs.now + JOB_POLL)
            return None, ""
        if got.state == "Succeeded":
            return "repaired", got.message
        if got.state in ("Failed", "Skipped"):
            reason = f"{got.reason}: " if got.reason else ""
            return ("skipped" if got.state == "Skipped" else "failed"), reason + got.message
        d.wake_by(obs.now + REMEDY_POLL)
        return None, ""
    if strategy == RepairStrategy.JOB:
        job = obs.job
        if job is None or job.name != rs.job_name:
            d.wake_by(obs.now + JOB_POLL)
            return None, ""
        if job.state == "Complete":
            return "repaired", f"Job {job.name} completed"
        if job.state == "Failed":
            refused = job.message.startswith("cannot create")
            return "failed", job.message if refused else f"Job {job.name} failed: {job.message}"
        if job.state == "Missing":
            d.create_job = job.name  # deleted by someone: run it again (same name)
        d.wake_by(obs.now + JOB_POLL)
        return None, ""
    answer = obs.webhook
    if answer is None or answer.attempt != rs.attempts or answer.step != step:
        # Sent before a restart (or not answered yet): ask again, as a poll.
        d.call_webhook = (rs.attempts, rs.webhook_started == rs.attempts)
        return None, ""
    if answer.state == "Succeeded":
        return "repaired", "webhook reported Succeeded"
    if answer.state in ("Failed", "Error"):
        return "failed", answer.message or f"webhook reported {answer.state}"
    due = (answer.at or obs.now) + WEBHOOK_POLL  # Running: ask again after a pause
    if obs.now >= due:
        d.call_webhook = (rs.attempts, True)
    else:
        d.wake_by(due)
    return None, ""


def replaced(d: Decision, obs: Observation, message: str) -> None:
    """A Replace step's Machine is gone and the pool has a new Ready node: the node
    under repair no longer exists, so there is nothing to verify or give back. Until
    the old Node object is gone (Cluster API deletes it with its Machine), wait."""
    if obs.node is not None:
        d.status.message = f"Repairing: {message}; waiting for node {obs.spec.node_name} to go"
        d.wake_by(obs.now + REMEDY_POLL)
        return
    for cond in (C.COND_REPAIRED, C.COND_VERIFIED, C.COND_UNCORDONED):
        set_cond(d, obs, cond, True, C.REASON_NODE_REPLACED, message)
    d.events.append(Event("Normal", C.REASON_NODE_REPLACED, message))
    d.events.append(Event("Normal", C.REASON_SUCCEEDED, f"Node replaced: {message}"))
    enter(d, obs, Phase.SUCCEEDED)
    d.status.completion_time = obs.now
    d.status.message = f"Replaced: {message}"


def attempt_failed(d: Decision, obs: Observation, message: str, final: bool = False) -> None:
    """The running attempt failed: the same step again after a backoff, the next step
    of the ladder at once, or, with no step left, the repair fails. `final`: the step
    cannot run on this node, so it is not retried."""
    ladder_ = ladder.steps(obs.spec)
    rs = ladder.entered(ladder_, (d.status.repair or RepairStatus()).model_copy(), obs.now)
    d.status.repair = rs
    rs.last_error = message
    i = ladder.index(ladder_, rs)
    step = ladder_[i]
    where = f", {ladder.describe(ladder_, i)}" if len(ladder_) > 1 else ""
    nxt = ladder.after_failure(ladder_, rs, obs.now, final)
    if isinstance(nxt, ladder.GiveUp):
        set_cond(d, obs, C.COND_REPAIRED, False, C.REASON_REPAIR_FAILED, message)
        fail(
            d,
            obs,
            C.REASON_REPAIR_FAILED,
            f"{message} (attempt {rs.attempts} of {ladder.max_attempts(step)}{where})",
        )
        return
    if d.status.phase != Phase.REPAIRING:
        enter(d, obs, Phase.REPAIRING)
    if isinstance(nxt, ladder.MoveOn):
        why = f"{ladder.describe(ladder_, i)} failed: {message}"
        d.status.repair = ladder.moved_on(ladder_, rs, nxt.to, obs.now, message)
        set_cond(d, obs, C.COND_REPAIRED, False, C.REASON_STEP_FAILED, why)
        d.events.append(
            Event(
                "Warning",
                C.REASON_STEP_SKIPPED if final else C.REASON_STEP_FAILED,
                f"{why}; next: {ladder.describe(ladder_, nxt.to)}",
            )
        )
        repairing(d, obs)  # the next step starts in this pass
        return
    rs.next_attempt_time = nxt.at
    rs.external = None  # deleted with its attempt: the next attempt makes its own CR
    set_cond(d, obs, C.COND_REPAIRED, False, C.REASON_REPAIR_ATTEMPT_FAILED, message)
    d.events.append(Event("Warning", C.REASON_REPAIR_ATTEMPT_FAILED, message + where))
    d.status.message = f"Attempt {rs.attempts} failed: {message}; retrying{where}"
    d.wake_by(rs.next_attempt_time)


def _unmet(type_: str, seen: str | None, want: str) -> str:
    """One unmet verify condition; one the node does not report is said so (a
    detector may have stopped reporting it), never as `None`."""
    if seen is None:
        return f"{type_} not reported by the node (want {want})"
    return f"{type_}={seen} (want {want})"


def verifying(d: Decision, obs: Observation) -> None:
    assert obs.node is not None
    want = obs.spec.verify.conditions
    wrong = [
        _unmet(c.type, nodes.condition_status(obs.node, c.type), c.status.value)
        for c in want
        if nodes.condition_status(obs.node, c.type) != c.status.value
    ]
    vs = (d.status.verify or VerifyStatus()).model_copy()
    d.status.verify = vs
    stable = timedelta(seconds=obs.spec.verify.stable_seconds)
    if not wrong:
        vs.healthy_since = vs.healthy_since or obs.now
        if obs.now - vs.healthy_since >= stable:
            held = ", ".join(f"{c.type}={c.status.value}" for c in want)
            message = f"{held} held for {stable.seconds}s"
            if obs.spec.verify.canary is not None:
                passed = _canary(d, obs, vs)
                if passed is None:
                    return  # running, or failed (the attempt with it)
                message += f"; {passed}"
            set_cond(d, obs, C.COND_VERIFIED, True, C.REASON_VERIFIED, message)
            d.events.append(Event("Normal", C.REASON_VERIFIED, f"Node healthy: {message}"))
            enter(d, obs, Phase.UNCORDONING)
            d.release = True
            d.status.message = "Uncordoning"
            return
        d.wake_by(vs.healthy_since + stable)
        message = f"healthy since {vs.healthy_since:%H:%M:%S}, needs {stable.seconds}s"
        set_cond(d, obs, C.COND_VERIFIED, False, C.REASON_STABILIZING, message)
    else:
        vs.healthy_since = None  # a flap restarts the stable window
        set_cond(d, obs, C.COND_VERIFIED, False, C.REASON_NODE_UNHEALTHY, ", ".join(wrong))
    deadline = phase_start(d, obs) + timedelta(seconds=obs.spec.verify.timeout_seconds)
    if obs.now >= deadline:
        detail = ", ".join(wrong) or "not stable long enough"
        attempt_failed(
            d, obs, f"node not healthy after {obs.spec.verify.timeout_seconds}s: {detail}"
        )
        if d.status.phase == Phase.FAILED:
            d.status.message = f"{C.REASON_VERIFY_TIMEOUT}: {detail}"
        return
    d.status.message = f"Verifying: {', '.join(wrong) or 'stabilizing'}"
    d.wake_by(deadline)


def _canary(d: Decision, obs: Observation, vs: VerifyStatus) -> str | None:
    """The node's conditions held: verify.canary's pod must now succeed on it. Starts
    it (recorded in status before the driver creates it), reads it, and returns what
    it did once it passed; None while it runs, or once it failed, which fails the
    attempt as a verification that timed out does (attempt_failed)."""
    spec = obs.spec.verify.canary
    assert spec is not None
    rs = d.status.repair or RepairStatus()
    step = ladder.index(ladder.steps(obs.spec), rs) + 1
    name = canary_name(obs.uid, max(rs.attempts, 1), step)
    cs = vs.canary
    if cs is None or cs.pod != name:
        message = f"canary pod {name} started on {obs.spec.node_name}"
        vs.canary = CanaryStatus(
            pod=name, start_time=obs.now, reason=C.REASON_CANARY_RUNNING, message=message
        )
        d.create_canary = name
        d.events.append(Event("Normal", C.REASON_CANARY_STARTED, message))
        set_cond(d, obs, C.COND_VERIFIED, False, C.REASON_CANARY_RUNNING, message)
        d.status.message = f"Verifying: {message}"
        d.wake_by(obs.now + JOB_POLL)
        d.wake_by(obs.now + timedelta(seconds=spec.timeout_seconds))
        return None
    cs = vs.canary = cs.model_copy()
    if cs.result == CanaryResult.PASSED:
        return cs.message or f"canary pod {name} succeeded"
    if cs.result == CanaryResult.FAILED:
        return None  # its attempt has failed already
    got = obs.canary if obs.canary is not None and obs.canary.name == name else None
    if got is not None and got.state == "Succeeded":
        cs.result, cs.reason = CanaryResult.PASSED, C.REASON_CANARY_PASSED
        cs.message = f"canary pod {name} succeeded"
        d.delete_canary = name
        d.events.append(Event("Normal", C.REASON_CANARY_PASSED, cs.message))
        return cs.message
    deadline = cs.start_time + timedelta(seconds=spec.timeout_seconds)
    why = None
    if got is not None and got.state == "Failed":
        why = got.message or f"canary pod {name} failed"
    elif obs.now >= deadline:
        why = f"canary pod {name} did not succeed within {spec.timeout_seconds}s"
        if got is not None and got.message:
            why += f" ({got.message})"
    if why is not None:
        cs.result, cs.reason, cs.message = CanaryResult.FAILED, C.REASON_CANARY_FAILED, why
        d.delete_canary = name
        set_cond(d, obs, C.COND_VERIFIED, False, C.REASON_CANARY_FAILED, why)
        d.events.append(Event("Warning", C.REASON_CANARY_FAILED, why))
        attempt_failed(d, obs, f"{C.REASON_CANARY_FAILED}: {why}")
        return None
    if got is not None and got.state == "Missing":
        d.create_canary = name  # deleted by someone, or its creation lost: again, same name
    message = f"canary pod {name} running on {obs.spec.node_name}"
    if got is not None and got.message:
        message += f": {got.message}"
    cs.reason, cs.message = C.REASON_CANARY_RUNNING, message
    set_cond(d, obs, C.COND_VERIFIED, False, C.REASON_CANARY_RUNNING, message)
    d.status.message = f"Verifying: {message}"
    d.wake_by(min(deadline, obs.now + JOB_POLL))
    return None


def leftover_canary(d: Decision, obs: Observation) -> None:
    """A canary still running when its repair leaves Verifying another way (the
    conditions' timeout, a lost lock, a vanished node) is deleted with its attempt."""
    before = obs.status.verify.canary if obs.status.verify else None
    if (
        before is not None
        and before.result == CanaryResult.RUNNING
        and d.status.phase != Phase.VERIFYING
        and d.delete_canary is None
    ):
        d.delete_canary = before.pod
        if d.status.verify is not None and d.status.verify.canary is not None:
            d.status.verify.canary = d.status.verify.canary.model_copy(
                update={
                    "result": CanaryResult.FAILED,
                    "reason": C.REASON_CANARY_FAILED,
                    "message": f"canary pod {before.pod} stopped: its attempt ended first",
                }
            )


def uncordoning(d: Decision, obs: Observation) -> None:
    """The release is done once the node no longer carries our lock."""
    if obs.node is not None and nodes.lock_holder(obs.node) == obs.name:
        d.release = True
        return
    prior = d.status.node.was_unschedulable if d.status.node else False
    message = "node stays cordoned: it was before the repair" if prior else "node schedulable again"
    set_cond(d, obs, C.COND_UNCORDONED, True, C.REASON_UNCORDONED, message)
    d.events.append(
        Event("Normal", C.REASON_SUCCEEDED, f"Node repaired and returned: {message}", True)
    )
    enter(d, obs, Phase.SUCCEEDED)
    d.status.completion_time = obs.now
    d.status.message = f"Repaired; {message}"
