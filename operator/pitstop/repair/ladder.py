"""The repair ladder (`repair.steps`): which step runs, and where a failed attempt
leads: the same step again after a backoff, the next step at once, or the end of
the repair. Pure: the ladder's position lives in the repair's status (step,
attempts), so a restarted operator resumes at the same step and attempt
(invariant 6). `repair.strategy` is a ladder of one step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pitstop.models import NodeRepairSpec, RepairStatus, RepairStep, RepairStrategy


def steps(spec: NodeRepairSpec) -> list[RepairStep]:
    """The ladder of a repair: its steps, or its strategy as the only step."""
    r = spec.repair
    if r.steps:
        return list(r.steps)
    return [
        RepairStep(
            strategy=r.strategy or RepairStrategy.MANUAL,
            job=r.job,
            webhook=r.webhook,
            external=r.external,
            timeout_seconds=r.timeout_seconds,
            max_attempts=r.max_attempts,
        )
    ]


def index(ladder: list[RepairStep], rs: RepairStatus | None) -> int:
    """The running step (0-based). A ladder shortened since (the spec was edited)
    keeps its last step."""
    number = (rs.step if rs is not None else None) or 1
    return min(number, len(ladder)) - 1


def current(spec: NodeRepairSpec, rs: RepairStatus | None) -> RepairStep:
    ladder = steps(spec)
    return ladder[index(ladder, rs)]


def max_attempts(step: RepairStep) -> int:
    """Manual steps have one attempt: the human's word is final."""
    return 1 if step.strategy == RepairStrategy.MANUAL else step.max_attempts


def label(step: RepairStep) -> str:
    """How status and Events name a step: "reboot (Job)", or its strategy alone."""
    if step.name:
        return f"{step.name} ({step.strategy.value})"
    return step.strategy.value


def describe(ladder: list[RepairStep], i: int) -> str:
    """ "step 2 of 3: reboot (Job)" """
    return f"step {i + 1} of {len(ladder)}: {label(ladder[i])}"


def retry_backoff(attempt: int) -> timedelta:
    """Pause after the n-th failed attempt of a step: 5 s doubling, at most 5 min."""
    return timedelta(seconds=min(5 * 2 ** (attempt - 1), 300))


def entered(ladder: list[RepairStep], rs: RepairStatus, now: datetime) -> RepairStatus:
    """`rs` with the running step recorded (a status from before the ladder, or a
    repair entering Repairing, names none yet)."""
    i = index(ladder, rs)
    if rs.step == i + 1 and rs.step_name is not None and rs.step_start_time is not None:
        return rs
    return rs.model_copy(
        update={
            "step": i + 1,
            "steps": len(ladder),
            "step_name": label(ladder[i]),
            "step_start_time": rs.step_start_time or now,
        }
    )


@dataclass(frozen=True)
class Retry:
    """The same step again, from `at`."""

    at: datetime


@dataclass(frozen=True)
class MoveOn:
    """The next step (0-based `to`), at once."""

    to: int


@dataclass(frozen=True)
class GiveUp:
    """No step left: the repair fails."""


Next = Retry | MoveOn | GiveUp


def after_failure(
    ladder: list[RepairStep], rs: RepairStatus, now: datetime, final: bool = False
) -> Next:
    """Where the failed attempt `rs.attempts` of the running step leads. `final`: the
    step cannot succeed on this node whatever its attempts (a Replace without a
    Machine, a remediator not installed, a refusal), so it is not retried."""
    i = index(ladder, rs)
    if not final and rs.attempts < max_attempts(ladder[i]):
        return Retry(now + retry_backoff(rs.attempts))
    if i + 1 < len(ladder):
        return MoveOn(i + 1)
    return GiveUp()


def moved_on(
    ladder: list[RepairStep], rs: RepairStatus, to: int, now: datetime, why: str
) -> RepairStatus:
    """The status of step `to` before its first attempt: its attempts start from 0,
    and nothing of the previous step's attempt (Job, webhook call, CR) carries over,
    only why it was left."""
    return RepairStatus(
        step=to + 1,
        steps=len(ladder),
        step_name=label(ladder[to]),
        step_start_time=now,
        moved_on=f"{describe(ladder, index(ladder, rs))} failed: {why}",
        attempts=0,
        last_error=rs.last_error,
    )
