"""After the drain: Repairing → Verifying → Uncordoning → Succeeded (or Failed).

Pure, like pitstop.repair.drain: it reads the repair's status, the node, and what the
driver learnt of the current attempt (the Job's state, the webhook's answer, the
human's annotation), and returns the next status and the actions to take.

Attempts: `repair.maxAttempts` covers repair-then-verify; a failed attempt (the
hook failed or timed out, or the node did not verify) starts the next one after
a backoff. Manual repairs have one attempt: the human's word is final."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from pitstop import constants
from pitstop.cluster import nodes
from pitstop.models import (
    NodeRepairSpec,
    Phase,
    RepairStatus,
    RepairStrategy,
    VerifyStatus,
)
from pitstop.repair.flow import Decision, Event, Observation, enter, fail, phase_start, set_cond

C = constants
JOB_POLL = timedelta(seconds=1)
"""Jobs live in the operator's namespace, outside its cluster-wide watches: their
state is read at this pace while one runs."""
WEBHOOK_POLL = timedelta(seconds=2)


def retry_backoff(attempt: int) -> timedelta:
    """Pause after the n-th failed attempt: 5 s doubling, at most 5 min."""
    return timedelta(seconds=min(5 * 2 ** (attempt - 1), 300))


def job_name(repair: str, attempt: int) -> str:
    """Deterministic per attempt (a restarted operator finds, never duplicates, it);
    at most 63 characters (Job names become pod labels)."""
    name = f"pitstop-{repair}-{attempt}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(repair.encode()).hexdigest()[:8]
    return f"pitstop-{repair[: 63 - len(f'pitstop--{digest}-{attempt}')]}-{digest}-{attempt}"


def repairing(d: Decision, obs: Observation) -> None:
    spec: NodeRepairSpec = obs.spec
    rs = (d.status.repair or RepairStatus()).model_copy()
    d.status.repair = rs
    strategy = spec.repair.strategy
    now = obs.now

    if rs.attempts == 0 or (rs.next_attempt_time is not None and now >= rs.next_attempt_time):
        rs.attempts += 1
        rs.attempt_start_time, rs.next_attempt_time = now, None
        rs.job_name = job_name(obs.name, rs.attempts) if strategy == RepairStrategy.JOB else None
        if strategy == RepairStrategy.WEBHOOK:
            rs.webhook_started = rs.attempts  # recorded before the call is made
            d.call_webhook = (rs.attempts, False)
        if strategy == RepairStrategy.JOB:
            d.create_job = rs.job_name
        detail = f"attempt {rs.attempts} of {_max(spec)}: {strategy.value}"
        set_cond(d, obs, C.COND_REPAIRED, False, C.REASON_REPAIR_STARTED, detail)
        d.events.append(Event("Normal", C.REASON_REPAIR_STARTED, f"Repair {detail}", True))
        d.status.message = f"Repairing: {detail}"
        if strategy == RepairStrategy.MANUAL:
            d.status.message += f" (annotate {C.ANNOTATION_REPAIRED}=true when done)"
        d.wake_by(now + timedelta(seconds=spec.repair.timeout_seconds))
        if strategy == RepairStrategy.JOB:
            d.wake_by(now + JOB_POLL)
        return

    if rs.next_attempt_time is not None:  # between attempts
        d.wake_by(rs.next_attempt_time)
        return

    assert rs.attempt_start_time is not None
    deadline = rs.attempt_start_time + timedelta(seconds=spec.repair.timeout_seconds)
    outcome, message = _outcome(d, obs, rs, strategy)
    if outcome is None and now >= deadline:
        outcome = "failed"
        message = f"attempt {rs.attempts} timed out after {spec.repair.timeout_seconds}s"
        if strategy == RepairStrategy.JOB and rs.job_name:
            d.delete_job, d.create_job = rs.job_name, None
    if outcome == "repaired":
        set_cond(d, obs, C.COND_REPAIRED, True, C.REASON_REPAIRED, message)
        d.events.append(Event("Normal", C.REASON_REPAIRED, message))
        d.status.verify = VerifyStatus()
        enter(d, obs, Phase.VERIFYING)
        verifying(d, obs)
    elif outcome == "failed":
        attempt_failed(d, obs, message)
    else:
        d.wake_by(deadline)


def _outcome(
    d: Decision, obs: Observation, rs: RepairStatus, strategy: RepairStrategy
) -> tuple[str | None, str]:
    """("repaired" | "failed" | None while running, message) for the current attempt."""
    if strategy == RepairStrategy.MANUAL:
        mark = (obs.repaired_mark or "").strip().lower()
        if mark == "true":
            return "repaired", "declared repaired by a human"
        if mark == "false":
            return "failed", "declared failed by a human"
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
    if answer is None or answer.attempt != rs.attempts:
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


def attempt_failed(d: Decision, obs: Observation, message: str) -> None:
    rs = (d.status.repair or RepairStatus()).model_copy()
    d.status.repair = rs
    rs.last_error = message
    final = obs.spec.repair.strategy == RepairStrategy.MANUAL or rs.attempts >= _max(obs.spec)
    if final:
        set_cond(d, obs, C.COND_REPAIRED, False, C.REASON_REPAIR_FAILED, message)
        fail(
            d, obs, C.REASON_REPAIR_FAILED, f"{message} (attempt {rs.attempts} of {_max(obs.spec)})"
        )
        return
    rs.next_attempt_time = obs.now + retry_backoff(rs.attempts)
    set_cond(d, obs, C.COND_REPAIRED, False, C.REASON_REPAIR_ATTEMPT_FAILED, message)
    d.events.append(Event("Warning", C.REASON_REPAIR_ATTEMPT_FAILED, message))
    if d.status.phase != Phase.REPAIRING:
        enter(d, obs, Phase.REPAIRING)
    d.status.message = f"Attempt {rs.attempts} failed: {message}; retrying"
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


def _max(spec: NodeRepairSpec) -> int:
    return 1 if spec.repair.strategy == RepairStrategy.MANUAL else spec.repair.max_attempts
