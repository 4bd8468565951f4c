"""The Repairing step: the current attempt's Job, and the Job and webhook actions
of a Decision (pitstop.repair.hooks makes the calls); and, before the node is
touched, the refusal of a repair that asks for what the platform admin has not
allowed (docs/security.md)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from pitstop import constants
from pitstop.conditions import set_condition
from pitstop.models import (
    NodeRepairSpec,
    Phase,
    RepairStrategy,
)
from pitstop.repair import flow, hooks
from pitstop.repair.flow import Decision, Event
from pitstop.repair.report import Report
from pitstop.repair.state import RepairState

C = constants


class RepairSteps:
    """Runs the repair hooks; their outcome is decided on in the same pass
    (RepairState: checked_generation, webhook_answer, job_refused)."""

    def __init__(self, state: RepairState, report: Report) -> None:
        self.state, self.report = state, report

    async def refuse_untrusted(self, now: datetime, spec: NodeRepairSpec) -> bool:
        """While the repair is Pending: if its Job or webhook asks for what the platform
        admin has not allowed (pitstop.repair.hooks.refusal), it fails at once with that
        reason in the Repaired condition, before the node is touched. True when it did.
        (The same check runs again when the Job is created or the call made.)"""
        st = self.state
        generation = st.body.get("metadata", {}).get("generation")
        if st.status.phase not in (None, Phase.PENDING) or generation == st.checked_generation:
            return False
        found = await hooks.refusal(st.kube, spec)
        if found is None:
            st.checked_generation = generation
            return False
        reason, message = found
        status = st.status.model_copy(deep=True)
        status.conditions = set_condition(
            status.conditions, C.COND_REPAIRED, False, reason, message, now, generation
        )
        status.phase, status.completion_time = Phase.FAILED, now
        status.phase_start_time, status.observed_generation = now, generation
        status.message = f"{reason}: {message}"
        await self.report.write_status(status, now, None)
        self.report.post([Event("Warning", reason, message)], None)
        return True

    async def current_job(self, spec: NodeRepairSpec) -> flow.JobState | None:
        """The current attempt's Job, read while one may be running (Jobs live in the
        operator's namespace, outside the cluster-wide watches)."""
        st = self.state
        rs = st.status.repair
        if (
            st.status.phase != Phase.REPAIRING
            or spec.repair.strategy != RepairStrategy.JOB
            or rs is None
            or rs.job_name is None
            or rs.next_attempt_time is not None
        ):
            return None
        if st.job_refused is not None and st.job_refused.name == rs.job_name:
            return st.job_refused
        return await hooks.read_job(st.kube, rs.job_name)

    async def run_hooks(self, d: Decision, spec: NodeRepairSpec) -> bool:
        """Job and webhook actions; True when the outcome is known at once."""
        st = self.state
        if d.delete_job:
            await hooks.delete_job(st.kube, d.delete_job)
        if d.create_job:
            refused = await hooks.create_job(st.kube, st.body, spec, d.create_job)
            if refused is not None:
                st.job_refused = refused
                return True  # decide on the refusal right away: the attempt failed
        if d.call_webhook:
            attempt, poll = d.call_webhook
            answer = await hooks.call_webhook(st.kube, st.body, spec, attempt, poll)
            st.webhook_answer = dataclasses.replace(answer, at=datetime.now(UTC))
            return True  # decide on the answer right away
        return False
