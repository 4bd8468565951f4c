"""The summary conditions that generic tools judge an object by (kstatus, the
reader Flux, kpt and Argo CD's health checks follow; docs/design.md "Summary
conditions"): `Ready` (done, or working as meant), `Reconciling` (True while
the operator is still moving the object towards its spec) and `Stalled` (True
when it cannot get there without a person: a failed repair, bad input). kstatus
reads Reconciling and Stalled as abnormal-true (absent counts as False) and
status.observedGeneration against metadata.generation; pitstop writes all three,
so a person reading `kubectl get -o yaml` sees the same verdict. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pitstop import constants
from pitstop.conditions import set_condition
from pitstop.models import Condition, NodeRepairStatus, Phase

C = constants
_CAMEL = re.compile(r"[A-Z][a-z]+(?:[A-Z][a-z]*)+")
"""A CamelCase word of two parts at least (WaitingForRoom, NodeBusy)."""


@dataclass(frozen=True)
class Summary:
    """One verdict: which of the three conditions is True, and why."""

    ready: bool
    reconciling: bool
    stalled: bool
    reason: str
    """CamelCase cause, the same on all three conditions."""
    message: str


def of_repair(phase: Phase | None, message: str | None, dry_run: bool) -> Summary | None:
    """A NodeRepair's verdict from its phase; None before its first phase (no status
    yet: kstatus reads a missing observedGeneration as InProgress anyway)."""
    if phase is None:
        return None
    text = message or phase.value
    if dry_run:
        # A plan is done once reported: it is refreshed, but never acts.
        return Summary(True, False, False, C.REASON_DRY_RUN, text)
    if phase == Phase.SUCCEEDED:
        return Summary(True, False, False, phase.value, text)
    if phase == Phase.FAILED:
        # A failed repair never leaves Failed: only a person (a new NodeRepair) moves on.
        return Summary(False, False, True, phase.value, text)
    # Pending (waiting for room), the steps, and Aborted (the finalizer gives the node back).
    # A repair held Pending says why in its reason (WaitingForRoom, WaitingForCapacity,
    # NodeBusy): its message starts with that cause.
    cause = text.partition(": ")[0] if phase == Phase.PENDING else ""
    reason = cause if _CAMEL.fullmatch(cause) else phase.value
    return Summary(False, True, False, reason, text)


def of_policy(
    conflicts: list[str],
    storm: bool,
    storm_message: str,
    bad_zones: list[str],
    ready_message: str,
) -> Summary:
    """A RepairPolicy's verdict: Ready while it can repair its pool; Stalled when a
    person must act first (nodes in several pools, a storm above maxUnhealthy, a
    maintenance window in an unknown time zone). A policy is never Reconciling:
    each pass finishes its work. Paused, or outside its windows, it is Ready: it
    does what it was told."""
    if bad_zones:
        return Summary(
            False,
            False,
            True,
            C.REASON_INVALID_WINDOW,
            f"unknown time zone {', '.join(bad_zones)}: no automatic repairs",
        )
    if conflicts:
        return Summary(
            False,
            False,
            True,
            C.REASON_POOL_CONFLICT,
            f"nodes in several pools, repaired by neither: {', '.join(conflicts)}",
        )
    if storm:
        return Summary(False, False, True, C.REASON_MAX_UNHEALTHY, storm_message)
    return Summary(True, False, False, C.REASON_WATCHING, ready_message)


def of_profile(valid: bool, message: str) -> Summary:
    """An InstanceProfile's verdict: Ready while it describes pods; an invalid profile
    is stalled until its spec is fixed."""
    if valid:
        return Summary(True, False, False, C.REASON_PROFILE_VALID, message)
    return Summary(False, False, True, C.REASON_PROFILE_INVALID, message)


SUMMARY_TYPES = frozenset({C.COND_READY, C.COND_RECONCILING, C.COND_STALLED})


def apply(
    conditions: list[Condition], summary: Summary, now: datetime, generation: int | None
) -> list[Condition]:
    """`conditions` with Ready, Reconciling and Stalled set from `summary`
    (lastTransitionTime kept where a status did not change)."""
    for type_, status in (
        (C.COND_READY, summary.ready),
        (C.COND_RECONCILING, summary.reconciling),
        (C.COND_STALLED, summary.stalled),
    ):
        conditions = set_condition(
            conditions, type_, status, summary.reason, summary.message, now, generation
        )
    return conditions


def repair_conditions(
    status: NodeRepairStatus,
    dry_run: bool,
    now: datetime,
    previous: list[Condition] = (),  # type: ignore[assignment]
) -> list[Condition]:
    """A NodeRepair's conditions with its summary (of_repair) set, for the status
    about to be written; `previous` (the conditions last written) keeps the summary's
    lastTransitionTime where `status` was built without them."""
    summary = of_repair(status.phase, status.message, dry_run)
    if summary is None:
        return status.conditions
    have = {c.type for c in status.conditions}
    kept = [c for c in previous if c.type in SUMMARY_TYPES and c.type not in have]
    return apply([*status.conditions, *kept], summary, now, status.observed_generation)
