"""The Repairing step: the current attempt's Job, and the Job and webhook actions
of a Decision (pitstop.repair.hooks makes the calls)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from pitstop import constants
from pitstop.models import (
    NodeRepairSpec,
    Phase,
    RepairStrategy,
)
from pitstop.repair import drain, flow, hooks
from pitstop.repair.state import DriverState

C = constants


class RepairSteps(DriverState):
    """Runs the repair hooks; their outcome is decided on in the same pass."""

    async def current_job(self, spec: NodeRepairSpec) -> flow.JobState | None:
        """The current attempt's Job, read while one may be running (Jobs live in the
        operator's namespace, outside the cluster-wide watches)."""
        rs = self.status.repair
        if (
            self.status.phase != Phase.REPAIRING
            or spec.repair.strategy != RepairStrategy.JOB
            or rs is None
            or rs.job_name is None
            or rs.next_attempt_time is not None
        ):
            return None
        if self.job_refused is not None and self.job_refused.name == rs.job_name:
            return self.job_refused
        return await hooks.read_job(self.kube, rs.job_name)

    async def run_hooks(self, d: drain.Decision, spec: NodeRepairSpec) -> bool:
        """Job and webhook actions; True when the outcome is known at once."""
        if d.delete_job:
            await hooks.delete_job(self.kube, d.delete_job)
        if d.create_job:
            refused = await hooks.create_job(self.kube, self.body, spec, d.create_job)
            if refused is not None:
                self.job_refused = refused
                return True  # decide on the refusal right away: the attempt failed
        if d.call_webhook:
            attempt, poll = d.call_webhook
            answer = await hooks.call_webhook(self.kube, self.body, spec, attempt, poll)
            self.webhook_answer = dataclasses.replace(answer, at=datetime.now(UTC))
            return True  # decide on the answer right away
        return False
