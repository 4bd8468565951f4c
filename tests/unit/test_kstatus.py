"""The pure mapping from a NodeRepair's phase, a policy's state and a profile's
validity to the summary conditions generic tools read (Ready, Reconciling,
Stalled: kstatus)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pitstop import conditions, kstatus
from pitstop.models import ConditionStatus, NodeRepairStatus, Phase

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STEPS = [
    Phase.PENDING,
    Phase.CORDONING,
    Phase.DEREGISTERING,
    Phase.WAITING_FOR_TASKS,
    Phase.EVICTING,
    Phase.REPAIRING,
    Phase.VERIFYING,
    Phase.UNCORDONING,
    Phase.ABORTED,
]


def verdict(summary: kstatus.Summary | None) -> tuple[bool, bool, bool] | None:
    return None if summary is None else (summary.ready, summary.reconciling, summary.stalled)


@pytest.mark.parametrize("phase", STEPS)
def test_a_repair_under_way_is_reconciling(phase: Phase) -> None:
    summary = kstatus.of_repair(phase, f"{phase.value}: 3 instances left", dry_run=False)
    assert verdict(summary) == (False, True, False)
    assert summary is not None and summary.reason == phase.value
    assert summary.message == f"{phase.value}: 3 instances left"


def test_a_succeeded_repair_is_ready_and_a_failed_one_stalled() -> None:
    assert verdict(kstatus.of_repair(Phase.SUCCEEDED, "done", False)) == (True, False, False)
    failed = kstatus.of_repair(Phase.FAILED, "InvalidSpec: bad", False)
    assert verdict(failed) == (False, False, True)
    assert failed is not None and failed.message == "InvalidSpec: bad"


def test_every_phase_has_exactly_one_verdict() -> None:
    """No phase is left unmapped, and none is both in progress and stalled."""
    for phase in Phase:
        v = verdict(kstatus.of_repair(phase, None, False))
        assert v is not None and sum(v) == 1, (phase, v)


def test_a_repair_without_a_phase_gets_no_summary_and_a_dry_run_is_ready() -> None:
    assert kstatus.of_repair(None, None, False) is None
    plan = kstatus.of_repair(Phase.PENDING, "Dry run: would cordon n1", dry_run=True)
    assert verdict(plan) == (True, False, False)
    assert plan is not None and plan.reason == "DryRun"
    # No message at all: the phase stands in (never Python's None in a message).
    assert kstatus.of_repair(Phase.EVICTING, None, False).message == "Evicting"  # type: ignore[union-attr]


def test_apply_sets_three_conditions_and_keeps_transition_times() -> None:
    summary = kstatus.of_repair(Phase.CORDONING, "Cordoning n1", False)
    assert summary is not None
    first = kstatus.apply([], summary, T0, 3)
    assert {c.type: c.status for c in first} == {
        "Ready": ConditionStatus.FALSE,
        "Reconciling": ConditionStatus.TRUE,
        "Stalled": ConditionStatus.FALSE,
    }
    assert all(c.observed_generation == 3 and c.last_transition_time == T0 for c in first)
    later = T0 + timedelta(minutes=5)
    moved = kstatus.of_repair(Phase.EVICTING, "Evicting 2 instances", False)
    assert moved is not None
    second = kstatus.apply(first, moved, later, 3)
    reconciling = conditions.find(second, "Reconciling")
    assert reconciling is not None
    assert reconciling.last_transition_time == T0  # still True: not a transition
    assert reconciling.reason == "Evicting" and reconciling.message == "Evicting 2 instances"
    done = kstatus.of_repair(Phase.SUCCEEDED, "Succeeded", False)
    assert done is not None
    third = kstatus.apply(second, done, later, 3)
    ready = conditions.find(third, "Ready")
    assert ready is not None and ready.status == ConditionStatus.TRUE
    assert ready.last_transition_time == later


def test_repair_conditions_use_the_status_generation_and_keep_the_step_conditions() -> None:
    status = NodeRepairStatus(phase=Phase.FAILED, message="VerifyTimeout", observed_generation=2)
    status.conditions = conditions.set_condition([], "Verified", False, "VerifyTimeout", "x", T0, 2)
    found = kstatus.repair_conditions(status, False, T0)
    assert [c.type for c in found] == ["Verified", "Ready", "Reconciling", "Stalled"]
    stalled = conditions.find(found, "Stalled")
    assert stalled is not None and stalled.status == ConditionStatus.TRUE
    assert stalled.observed_generation == 2
    assert kstatus.repair_conditions(NodeRepairStatus(), False, T0) == []


def test_a_policy_is_ready_unless_a_person_must_act() -> None:
    ok = kstatus.of_policy([], False, "", [], "3 nodes")
    assert verdict(ok) == (True, False, False) and ok.message == "3 nodes"
    conflict = kstatus.of_policy(["n1", "n2"], False, "", [], "3 nodes")
    assert verdict(conflict) == (False, False, True)
    assert conflict.reason == "PoolConflict" and "n1, n2" in conflict.message
    storm = kstatus.of_policy([], True, "3 of 4 nodes unhealthy", [], "")
    assert verdict(storm) == (False, False, True) and storm.reason == "MaxUnhealthyExceeded"
    zone = kstatus.of_policy([], False, "", ["Mars/Olympus"], "")
    assert verdict(zone) == (False, False, True) and zone.reason == "InvalidMaintenanceWindow"
    assert "Mars/Olympus" in zone.message


def test_an_invalid_profile_is_stalled() -> None:
    assert verdict(kstatus.of_profile(True, "describes 3 instances")) == (True, False, False)
    bad = kstatus.of_profile(False, "bad regex")
    assert verdict(bad) == (False, False, True) and bad.reason == "InvalidSpec"
