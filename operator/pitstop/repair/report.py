"""Every step reports the same way: the status subresource (phase and condition
changes at once, counter-only changes coalesced), Events (each once), and the
repair metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import kopf

from pitstop import constants, kstatus, logs, metrics
from pitstop.cluster.kube import ApiError, Gone, StatusChanged, guard_holds, guarded_status
from pitstop.models import (
    FINAL_PHASES,
    NodeRepairStatus,
    Phase,
)
from pitstop.repair import flow
from pitstop.repair.flow import Event
from pitstop.repair.state import RepairState, parse_status

C = constants


STATUS_COALESCE = timedelta(seconds=1)
"""Status changes of counters and messages alone are written at most this often
(phase, condition status or reason, repair and completion are written at once): a
drain under a budget changes its counts with every pod, and each write is a PATCH."""

WAITING_COALESCE = timedelta(seconds=5)
"""The same for a repair still Pending: a queue's detail (which older repair starts
first, how many are active) changes with every repair of the pool that moves, and
a burst of N waiting repairs would rewrite N statuses each time."""


class Report:
    """Status, Events and the invalid-spec failure of one repair; its fields in the
    RepairState: status, written, written_at, unconfirmed, posted."""

    def __init__(self, state: RepairState) -> None:
        self.state = state

    async def write_status(
        self,
        status: NodeRepairStatus,
        now: datetime,
        wake_at: datetime | None,
        passed: Sequence[Phase] = (),
    ) -> datetime | None:
        st = self.state
        metrics.PASSES.labels(st.name).inc()  # every decided pass reports here, once
        dry_run = bool((st.body.get("spec") or {}).get("dryRun"))
        status.conditions = kstatus.repair_conditions(status, dry_run, now, st.status.conditions)
        wire = status.wire()
        if wire == st.written:
            return wake_at
        significant = _shape(wire) != _shape(st.written or {})
        window = WAITING_COALESCE if status.phase == Phase.PENDING else STATUS_COALESCE
        if not significant and now - st.written_at < window:
            due = st.written_at + window  # counters or detail only: write a bit later
            return due if wake_at is None else min(wake_at, due)
        try:
            # Guarded by the phase it was decided from (invariant 6): refused, the
            # status is read back here and the pass decides again (Driver.step).
            ops = guarded_status(st.written, wire)
            await st.kube.patch_status_ops(C.NODEREPAIR_PLURAL, st.name, ops)
        except StatusChanged as e:
            # Another writer came first: decide again from what it wrote.
            tested = st.written
            await self.read_back()
            if guard_holds(tested, st.written):  # not the guard: an invalid status, say
                raise ApiError(e.status, e.message, e.body) from e
            raise
        except ApiError as e:
            if e.status == 404:
                raise Gone(f"NodeRepair {st.name} is gone") from e
            st.unconfirmed = e.status >= 500  # the server may have written it all the same
            raise
        except BaseException:
            st.unconfirmed = True  # no answer (lost, timed out, cancelled): it may have landed
            raise
        old_phase = st.status.phase
        if old_phase != status.phase and old_phase is not None and st.status.phase_start_time:
            spent = (now - st.status.phase_start_time).total_seconds()
            metrics.PHASE_DURATION.labels(old_phase.value).observe(spent)
            # Phases gone through within this one pass took no time of their own.
            for phase in passed[:-1]:
                if phase != old_phase:
                    metrics.PHASE_DURATION.labels(phase.value).observe(0.0)
        st.status, st.written, st.written_at = status, wire, now
        if old_phase != status.phase and status.phase in FINAL_PHASES:
            metrics.COMPLETED.labels(status.phase.value).inc()
        deadline = flow.phase_deadline(st.spec, status) if st.spec else None
        st.phases.record(st.name, status.phase, deadline)
        return wake_at

    async def read_back(self) -> None:
        """After a status write whose answer never came, or that another writer's
        change refused (StatusChanged), the status the API server has: deciding again
        from the one held before would take back a phase that write or the other
        writer already recorded (invariant 6: e.g. Uncordoning written back to
        Verifying, Succeeded to Uncordoning)."""
        st = self.state
        path = f"/apis/{C.GROUP}/{C.VERSION}/{C.NODEREPAIR_PLURAL}/{st.name}"
        try:
            current = await st.kube.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                raise Gone(f"NodeRepair {st.name} is gone") from e
            raise
        raw = current.get("status")
        # An empty status is one still: the next write's guard tests its phase.
        st.status, st.written = parse_status(raw), None if raw is None else dict(raw)
        st.unconfirmed = False

    def post(self, events: list[Event], node: Mapping[str, Any] | None) -> None:
        st = self.state
        for e in events:
            key = (e.reason, "" if e.once else e.message)
            if key in st.posted:
                continue
            st.posted.add(key)
            kopf.event(st.body, type=e.type, reason=e.reason, message=e.message)
            logs.event("NodeRepair", st.name, e.type, e.reason, e.message)
            if e.on_node and node is not None:
                kopf.event(
                    cast(kopf.Body, node),
                    type=e.type,
                    reason=e.reason,
                    message=f"{st.name}: {e.message}",
                )

    async def fail_invalid(self, now: datetime, message: str) -> None:
        status = self.state.status.model_copy(deep=True)
        status.phase, status.completion_time = Phase.FAILED, now
        status.message = f"InvalidSpec: {message}"
        await self.write_status(status, now, None)
        self.post([Event("Warning", "InvalidSpec", message)], None)


def forget_gauge(node: str) -> None:
    with contextlib.suppress(KeyError):  # never set for this node
        metrics.INFLIGHT_TASKS.remove(node)


def _shape(wire: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes a status change significant: phase, conditions, repair, completion,
    and a canary's pod and result (recorded before the pod is created)."""
    conds = tuple(
        (c.get("type"), c.get("status"), c.get("reason")) for c in wire.get("conditions") or []
    )
    canary = (wire.get("verify") or {}).get("canary") or {}
    return (
        wire.get("phase"),
        conds,
        wire.get("repair"),
        wire.get("completionTime"),
        (canary.get("pod"), canary.get("startTime"), canary.get("result")),
    )
