"""Kubernetes-style status conditions: set one, keeping lastTransitionTime when
the status does not change (API conventions)."""

from __future__ import annotations

from datetime import datetime

from pitstop.models import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    old = find(conditions, type_)
    since = old.last_transition_time if old and old.status == status else now
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    cond = find(conditions, type_)
    return cond is not None and cond.status == ConditionStatus.TRUE
