"""The trust rule's clock: when the driver first saw a pod's drain mark (no cluster)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pitstop import constants as C
from pitstop.repair.daemon import Driver

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def pod(mark: str | None) -> dict[str, Any]:
    notes = {C.ANNOTATION_DRAINING: mark} if mark is not None else {}
    return {
        "metadata": {"namespace": "fn", "name": "a", "uid": "u1", "annotations": notes},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running"},
    }


def seen(driver: Driver, mark: str | None, now: datetime) -> datetime | None:
    driver.observe.instances(now, {"n1": [pod(mark)]}, {})  # type: ignore[arg-type]
    entry = driver.state.marked_at.get("fn/a")
    return entry[1] if entry is not None else None


def test_a_new_mark_is_first_seen_when_its_value_changes() -> None:
    # The view showed another repair's mark (taken off by its give-back since); this
    # repair's own mark replaces it: a count polled in between predates the new mark
    # and must not be trusted, so the new mark's sighting starts the trust clock again.
    driver = Driver("r1", {"spec": {"nodeName": "n1"}}, None, logging.getLogger("t"))  # type: ignore[arg-type]
    old = "2024-05-01T11:40:00Z"
    assert seen(driver, old, T0) == T0
    assert seen(driver, old, T0 + timedelta(seconds=5)) == T0, "the same mark keeps its time"
    new = "2024-05-01T12:00:07.000000Z"
    assert seen(driver, new, T0 + timedelta(seconds=9)) == T0 + timedelta(seconds=9)
    assert seen(driver, None, T0 + timedelta(seconds=10)) is None


def test_a_pod_made_again_under_its_name_is_seen_anew() -> None:
    # Same name, same mark value, a new uid: a count polled from the old pod says
    # nothing of the new one, so its trust clock starts at its own sighting.
    driver = Driver("r1", {"spec": {"nodeName": "n1"}}, None, logging.getLogger("t"))  # type: ignore[arg-type]
    mark = "2024-05-01T11:40:00Z"
    assert seen(driver, mark, T0) == T0
    again = pod(mark)
    again["metadata"]["uid"] = "u2"
    driver.observe.instances(T0 + timedelta(seconds=5), {"n1": [again]}, {})  # type: ignore[arg-type]
    assert driver.state.marked_at["fn/a"][1] == T0 + timedelta(seconds=5)


def test_a_pod_made_again_under_its_name_is_not_taken_as_evicted() -> None:
    # The old pod's eviction was accepted; a new pod under its name, pinned to the
    # node, is not leaving: it is drained and evicted in its turn, not waited on
    # until the eviction timeout.
    driver = Driver("r1", {"spec": {"nodeName": "n1"}}, None, logging.getLogger("t"))  # type: ignore[arg-type]
    driver.observe.instances(T0, {"n1": [pod(None)]}, {})  # type: ignore[arg-type]
    driver.state.sent |= {("drain", "fn/a"), ("evict", "fn/a")}
    again = pod(None)
    again["metadata"]["uid"] = "u2"
    found = driver.observe.instances(T0, {"n1": [again]}, {})  # type: ignore[arg-type]
    evicted, _ = driver.pod_steps.evictions_in_flight(found)
    assert "fn/a" not in evicted and ("drain", "fn/a") not in driver.state.sent
