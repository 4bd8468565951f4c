"""The Repairing step: the current attempt's Job, Machine or remediation CR, and the
Job, webhook and CR actions of a Decision (pitstop.repair.hooks and
pitstop.repair.remediator_calls make the calls); and, before the node is
touched, the refusal of a repair that asks for what the platform admin has not
allowed (docs/security.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

from pitstop import constants
from pitstop.cluster.kube import ApiError
from pitstop.conditions import set_condition
from pitstop.models import (
    CanaryResult,
    NodeRepairSpec,
    Phase,
    RemediationRef,
    RemediationTemplateRef,
    RepairStrategy,
    ReplaceStatus,
)
from pitstop.repair import flow, hooks, ladder, remediator_calls, remediators
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
            or ladder.current(spec, rs).strategy != RepairStrategy.JOB
            or rs is None
            or rs.job_name is None
            or rs.next_attempt_time is not None
        ):
            return None
        if st.job_refused is not None and st.job_refused.name == rs.job_name:
            return st.job_refused
        return await hooks.read_job(st.kube, rs.job_name)

    async def current_canary(self) -> flow.CanaryState | None:
        """The current attempt's canary pod (verify.canary), read while it runs (it
        lives in the operator's namespace; its node's pod events wake the repair)."""
        st = self.state
        vs = st.status.verify
        if st.status.phase != Phase.VERIFYING or vs is None or vs.canary is None:
            return None
        if vs.canary.result != CanaryResult.RUNNING:
            return None
        if st.canary_refused is not None and st.canary_refused.name == vs.canary.pod:
            return st.canary_refused
        return await hooks.read_canary(st.kube, vs.canary.pod)

    async def run_hooks(self, d: Decision, spec: NodeRepairSpec) -> bool:
        """Job, webhook, remediation CR and canary actions; True when the outcome is
        known at once."""
        st = self.state
        rs = d.status.repair
        step = ladder.current(spec, rs)
        number = ladder.index(ladder.steps(spec), rs) + 1
        if d.delete_canary:
            await hooks.delete_canary(st.kube, d.delete_canary)
        if d.create_canary:
            not_made = await hooks.create_canary(st.kube, st.body, spec, d.create_canary)
            if not_made is not None:
                st.canary_refused = not_made
                return True  # decide on the refusal right away: the canary failed
        if d.delete_job:
            await hooks.delete_job(st.kube, d.delete_job)
        if d.delete_external:
            await remediator_calls.delete_remediation(st.kube, d.delete_external)
        if d.create_job:
            job = step.job or spec.repair.job
            refused = await hooks.create_job(st.kube, st.body, spec, d.create_job, job)
            if refused is not None:
                st.job_refused = refused
                return True  # decide on the refusal right away: the attempt failed
        if d.call_webhook:
            attempt, poll = d.call_webhook
            answer = await hooks.call_webhook(
                st.kube, st.body, spec, attempt, poll, step.webhook, number
            )
            st.webhook_answer = dataclasses.replace(answer, at=datetime.now(UTC), step=number)
            return True  # decide on the answer right away
        return False

    # --- Replace and External: read (and started) before each pass decides ---

    async def current_remedy(
        self, now: datetime, spec: NodeRepairSpec, ready: Callable[[], set[str]]
    ) -> flow.StepState | None:
        """What the running Replace or External attempt stands at. It does what the
        attempt needs first: deletes the Machine (recorded in status before), creates
        the remediation CR (recorded in status once made). `ready()`: the Ready nodes."""
        st = self.state
        rs = st.status.repair
        if st.status.phase != Phase.REPAIRING or rs is None or rs.attempts == 0:
            return None
        if rs.next_attempt_time is not None:
            return None
        steps = ladder.steps(spec)
        i = ladder.index(steps, rs)
        step = steps[i]
        try:
            if step.strategy == RepairStrategy.REPLACE:
                state = await self._replace(now, ready)
            elif step.strategy == RepairStrategy.EXTERNAL and step.external is not None:
                state = await self._external(now, spec, step.external.template_ref, i + 1)
            else:
                return None
        except ApiError as e:
            if e.status != 403:
                raise
            reason = (
                C.REASON_REPLACE_NOT_ALLOWED
                if step.strategy == RepairStrategy.REPLACE
                else C.REASON_EXTERNAL_NOT_ALLOWED
            )
            state = flow.StepState(0, 0, "Skipped", f"{e.message}", reason)
        return dataclasses.replace(state, step=i + 1, attempt=rs.attempts)

    async def _record(self, now: datetime, **fields: object) -> None:
        status = self.state.status.model_copy(deep=True)
        assert status.repair is not None
        status.repair = status.repair.model_copy(update=fields)
        await self.report.write_status(status, now, None)

    async def _replace(self, now: datetime, ready: Callable[[], set[str]]) -> flow.StepState:
        st = self.state
        rs = st.status.repair
        assert rs is not None
        if rs.replace is None:
            state, message, machine = await remediator_calls.find_machine(st.kube, st.node_name)
            if machine is None:
                return flow.StepState(0, 0, state, message)
            meta = machine["metadata"]
            pool = remediators.pool_of(machine)
            if pool is None:
                return flow.StepState(
                    0, 0, "Skipped", f"Machine {meta['name']} belongs to no MachineSet or Cluster"
                )
            record = ReplaceStatus(
                machine=f"{meta['namespace']}/{meta['name']}",
                machine_uid=meta["uid"],
                pool=pool,
            )
            await self._record(now, replace=record)  # before the delete: never looked up again
        rs = st.status.repair
        assert rs is not None and rs.replace is not None
        await remediator_calls.delete_machine(st.kube, rs.replace)
        new = await remediator_calls.find_replacement(
            # Since the step began: a retried attempt still counts the Machine it made.
            st.kube,
            rs.replace,
            rs.step_start_time or now,
            ready() - {st.node_name},
        )
        if new is None:
            return flow.StepState(
                0,
                0,
                "Running",
                f"Machine {rs.replace.machine} deleted; waiting for a new Ready node"
                f" of {rs.replace.pool}",
            )
        if rs.replace.replacement != new:
            await self._record(now, replace=rs.replace.model_copy(update={"replacement": new}))
        return flow.StepState(
            0, 0, "Succeeded", f"Machine {rs.replace.machine} replaced: node {new} is Ready"
        )

    async def _external(
        self, now: datetime, spec: NodeRepairSpec, ref: RemediationTemplateRef, number: int
    ) -> flow.StepState:
        st = self.state
        rs = st.status.repair
        assert rs is not None
        resource = await remediator_calls.resource(st.kube, ref)
        kind = remediators.remediation_kind(ref)
        if resource is None:
            return flow.StepState(0, 0, "Skipped", f"{kind} is not installed ({ref.api_version})")
        target = RemediationRef(
            api_version=ref.api_version,
            kind=kind,
            resource=resource,
            namespace=ref.namespace,
            name=st.node_name,
        )
        key = f"{number}/{rs.attempts}"
        state, found = await remediator_calls.observe_remediation(
            st.kube, target, st.name, key, created=rs.external == target
        )
        if state is None:
            why = await remediator_calls.create_remediation(
                st.kube,
                ref,
                target,
                st.node_name,
                st.body,
                key,
                hooks.label_value(st.name),
            )
            if why == "":
                return flow.StepState(0, 0, "Running", f"{kind} {target.name} exists already")
            if why is not None:
                reason = C.REASON_EXTERNAL_NOT_ALLOWED if "NotAllowed" in why else ""
                return flow.StepState(0, 0, "Skipped", why, reason)
            await self._record(now, external=target)
            return flow.StepState(
                0, 0, "Running", f"created {kind} {target.namespace}/{target.name}"
            )
        if (
            found is not None
            and rs.external != target
            and remediators.made_by(found) == (st.name, key)
        ):
            await self._record(now, external=target)  # made before a restart
        return state
