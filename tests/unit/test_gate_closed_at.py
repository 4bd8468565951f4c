"""An instance's own deregistration wait counts from when its gate closed, which the
condition's lastTransitionTime (stamped when the patch was sent, to the second) may
precede by a second and the request's latency (no cluster)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pitstop import constants as C
from pitstop.repair.daemon import Driver

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def pod(serving: str | None, stamp: str = "2024-05-01T12:00:00Z") -> dict[str, Any]:
    conds = []
    if serving is not None:
        conds.append({"type": C.CONDITION_SERVING, "status": serving, "lastTransitionTime": stamp})
    return {
        "metadata": {"namespace": "fn", "name": "a", "uid": "u1"},
        "spec": {"nodeName": "n1", "readinessGates": [{"conditionType": C.CONDITION_SERVING}]},
        "status": {"phase": "Running", "conditions": conds},
    }


def closed_since(driver: Driver, p: dict[str, Any], now: datetime) -> datetime | None:
    (i,) = driver.observe.instances(now, {"n1": [p]}, {})  # type: ignore[arg-type]
    return i.gate_closed_since


def driver() -> Driver:
    return Driver("r1", {"spec": {"nodeName": "n1"}}, None, logging.getLogger("t"))  # type: ignore[arg-type]


def test_the_wait_counts_from_the_first_sight_not_the_truncated_stamp() -> None:
    # Sent at 12:00:00.98 (stamped 12:00:00), landed at 12:00:01.7, first seen at
    # 12:00:01.8: counting from the stamp would end the wait 1.8 s short (seed 56).
    d = driver()
    first = T0 + timedelta(seconds=1.8)
    assert closed_since(d, pod("False"), first) == first
    assert closed_since(d, pod("False"), first + timedelta(seconds=30)) == first, (
        "the same closing keeps its time"
    )


def test_a_stamp_later_than_the_sight_is_kept() -> None:
    # Another process's clock ahead of ours: the later of the two.
    d = driver()
    assert closed_since(d, pod("False", "2024-05-01T12:00:09Z"), T0) == T0 + timedelta(seconds=9)


def test_a_gate_closed_again_is_seen_anew() -> None:
    d = driver()
    assert closed_since(d, pod("False"), T0 + timedelta(seconds=1)) == T0 + timedelta(seconds=1)
    assert closed_since(d, pod("True"), T0 + timedelta(seconds=5)) is None
    again = T0 + timedelta(seconds=70)
    assert closed_since(d, pod("False", "2024-05-01T12:01:09Z"), again) == again


def test_after_a_restart_the_wait_counts_from_the_new_process_first_sight() -> None:
    # A new process (nothing remembered) cannot know when the patch landed, only that
    # it had by the time it first sees it: it counts from there (longer, never short).
    restarted = T0 + timedelta(seconds=40)
    assert closed_since(driver(), pod("False"), restarted) == restarted
