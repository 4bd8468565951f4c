"""Kubernetes-style status conditions: lastTransitionTime and order (no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pitstop.conditions import find, is_true, set_condition
from pitstop.models import Condition, ConditionStatus

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def cond(type_: str, status: ConditionStatus, at: datetime = T0) -> Condition:
    return Condition(type=type_, status=status, reason="R", message="m", last_transition_time=at)


def test_new_condition_is_appended_with_now() -> None:
    out = set_condition([], "Cordoned", True, "NodeCordoned", "done", T0, 3)
    assert out == [
        Condition(
            type="Cordoned",
            status=ConditionStatus.TRUE,
            reason="NodeCordoned",
            message="done",
            last_transition_time=T0,
            observed_generation=3,
        )
    ]


def test_unchanged_status_keeps_last_transition_time() -> None:
    old = [cond("Cordoned", ConditionStatus.TRUE, T0)]
    out = set_condition(old, "Cordoned", True, "Other", "new message", T1, 2)
    assert out[0].last_transition_time == T0
    assert (out[0].reason, out[0].message, out[0].observed_generation) == (
        "Other",
        "new message",
        2,
    )


def test_changed_status_moves_last_transition_time() -> None:
    old = [cond("TasksDrained", ConditionStatus.FALSE, T0)]
    out = set_condition(old, "TasksDrained", True, "TasksDrained", "no tasks", T1, None)
    assert out[0].status == ConditionStatus.TRUE
    assert out[0].last_transition_time == T1


def test_bool_false_maps_to_status_false() -> None:
    out = set_condition([], "Deregistered", False, "Deregistering", "m", T0, None)
    assert out[0].status == ConditionStatus.FALSE


def test_explicit_unknown_status_is_kept() -> None:
    out = set_condition([], "Verified", ConditionStatus.UNKNOWN, "R", "m", T0, None)
    assert out[0].status == ConditionStatus.UNKNOWN


def test_update_keeps_list_order() -> None:
    old = [
        cond("Cordoned", ConditionStatus.TRUE),
        cond("Deregistered", ConditionStatus.FALSE),
        cond("TasksDrained", ConditionStatus.FALSE),
    ]
    out = set_condition(old, "Deregistered", True, "R", "m", T1, None)
    assert [c.type for c in out] == ["Cordoned", "Deregistered", "TasksDrained"]
    assert out[0] == old[0] and out[2] == old[2]


def test_input_list_is_not_mutated() -> None:
    old = [cond("Cordoned", ConditionStatus.FALSE)]
    set_condition(old, "Cordoned", True, "R", "m", T1, None)
    set_condition(old, "Deregistered", True, "R", "m", T1, None)
    assert old == [cond("Cordoned", ConditionStatus.FALSE)]


def test_find_and_is_true() -> None:
    conds = [cond("Cordoned", ConditionStatus.TRUE), cond("Verified", ConditionStatus.FALSE)]
    assert find(conds, "Verified") == conds[1]
    assert find(conds, "Repaired") is None
    assert is_true(conds, "Cordoned")
    assert not is_true(conds, "Verified")
    assert not is_true(conds, "Repaired")
