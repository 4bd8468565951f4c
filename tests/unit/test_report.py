"""The status writer (no cluster): phase and condition changes go out at once,
changes of counters and messages alone are coalesced into one PATCH a second (five
while the repair waits in Pending)."""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pitstop import constants as C
from pitstop import metrics
from pitstop.cluster.kube import ApiError
from pitstop.conditions import set_condition
from pitstop.models import InstanceCounts, NodeRepairStatus, Phase
from pitstop.repair.flow import Event
from pitstop.repair.report import STATUS_COALESCE, WAITING_COALESCE, Report
from pitstop.repair.state import RepairState

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def sent_fields(ops: list[dict[str, Any]]) -> dict[str, Any]:
    """What a guarded status patch sets, as a merge patch would (removals as None);
    for the fakes that only record or merge what is written."""
    out: dict[str, Any] = {}
    for op in ops:
        if op["op"] == "add" and op["path"] == "/status":
            out.update(op["value"])
        elif op["op"] in ("add", "remove"):
            out[op["path"].removeprefix("/status/")] = op.get("value")
    return out


class FakeKube:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        self.patches.append(status)

    async def patch_status_ops(self, plural: str, name: str, ops: list[dict[str, Any]]) -> None:
        await self.patch_status(plural, name, sent_fields(ops))


def evicting(remaining: int, reason: str = C.REASON_EVICTING) -> NodeRepairStatus:
    conds = set_condition([], C.COND_INSTANCES_OFFLINE, False, reason, f"{remaining} left", NOW, 1)
    return NodeRepairStatus(
        phase=Phase.EVICTING,
        conditions=conds,
        instances=InstanceCounts(total=20, remaining=remaining),
        message=f"Evicting: {remaining} instances left",
    )


def test_counter_and_message_changes_are_coalesced_phase_changes_are_not() -> None:
    kube = FakeKube()
    report = Report(RepairState("r1", {"spec": {"nodeName": "n1"}}, kube, logging.getLogger()))  # type: ignore[arg-type]

    def write(status: NodeRepairStatus, at: datetime) -> datetime | None:
        return asyncio.run(report.write_status(status, at, None))

    write(evicting(20), NOW)
    assert len(kube.patches) == 1
    soon = NOW + STATUS_COALESCE / 4
    due = write(evicting(19), soon)
    assert len(kube.patches) == 1, "a count and a message alone wait"
    assert due == NOW + STATUS_COALESCE, "... and the pass comes back when they are due"
    write(evicting(18), soon + timedelta(milliseconds=1))
    assert len(kube.patches) == 1
    write(evicting(18), NOW + STATUS_COALESCE)
    assert len(kube.patches) == 2
    assert kube.patches[-1]["instances"]["remaining"] == 18
    write(evicting(18), NOW + STATUS_COALESCE * 2)
    assert len(kube.patches) == 2, "nothing changed: nothing written"
    later = NOW + STATUS_COALESCE * 2 + timedelta(milliseconds=1)
    write(evicting(18, C.REASON_EVICTION_BLOCKED), later)
    assert len(kube.patches) == 3, "a condition's reason goes out at once"


def test_a_waiting_repairs_changing_detail_is_written_at_most_every_five_seconds() -> None:
    """A burst queue: the older repair that starts first changes with every admission."""
    kube = FakeKube()
    report = Report(RepairState("r1", {"spec": {"nodeName": "n1"}}, kube, logging.getLogger()))  # type: ignore[arg-type]

    def waiting(older: str) -> NodeRepairStatus:
        return NodeRepairStatus(
            phase=Phase.PENDING, message=f"WaitingForCapacity: {older} (older) starts first"
        )

    def write(status: NodeRepairStatus, at: datetime) -> datetime | None:
        return asyncio.run(report.write_status(status, at, None))

    write(waiting("a"), NOW)
    for i, older in enumerate("bcd", start=1):
        due = write(waiting(older), NOW + STATUS_COALESCE * i)
    assert len(kube.patches) == 1, "past the drain's window, the queue's detail still waits"
    assert due == NOW + WAITING_COALESCE
    write(waiting("d"), NOW + WAITING_COALESCE)
    assert [p.get("message") for p in kube.patches][-1].startswith("WaitingForCapacity: d")
    cordoning = NodeRepairStatus(phase=Phase.CORDONING, message="Cordoning n1")
    write(cordoning, NOW + WAITING_COALESCE + timedelta(milliseconds=1))
    assert len(kube.patches) == 3, "leaving the queue goes out at once"


def test_a_wait_is_one_event_whatever_its_message_and_only_the_story_goes_on_the_node(
    monkeypatch: Any,
) -> None:
    posted: list[tuple[str, str, str]] = []
    monkeypatch.setattr(
        "pitstop.repair.report.kopf.event",
        lambda body, type, reason, message: posted.append((body["kind"], reason, message)),
    )
    body = {"kind": "NodeRepair", "spec": {"nodeName": "n1"}}
    report = Report(RepairState("r1", body, FakeKube(), logging.getLogger()))  # type: ignore[arg-type]
    node = {"kind": "Node", "metadata": {"name": "n1"}}
    report.post([Event("Normal", "WaitingForCapacity", "3 active", once=True)], node)
    report.post([Event("Normal", "WaitingForCapacity", "2 active", once=True)], node)
    report.post([Event("Warning", "TaskTimeout", "a"), Event("Warning", "TaskTimeout", "b")], node)
    report.post([Event("Normal", "Cordoned", "Node cordoned", on_node=True)], node)
    report.post([Event("Normal", "Cordoned", "Node cordoned", on_node=True)], node)
    assert posted == [
        ("NodeRepair", "WaitingForCapacity", "3 active"),
        ("NodeRepair", "TaskTimeout", "a"),
        ("NodeRepair", "TaskTimeout", "b"),
        ("NodeRepair", "Cordoned", "Node cordoned"),
        ("Node", "Cordoned", "r1: Node cordoned"),
    ]


def test_every_posted_event_is_a_log_line_too(
    monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """`kubectl logs` said nothing at INFO of a repair cordoning or waiting."""
    monkeypatch.setattr("pitstop.repair.report.kopf.event", lambda *a, **kw: None)
    body = {"kind": "NodeRepair", "spec": {"nodeName": "n1"}}
    report = Report(RepairState("r1", body, FakeKube(), logging.getLogger()))  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="pitstop"):
        report.post([Event("Normal", "Cordoned", "Node cordoned and tainted")], None)
        report.post([Event("Warning", "TaskTimeout", "2 tasks in flight")], None)
        report.post([Event("Normal", "Cordoned", "Node cordoned and tainted")], None)  # told
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "NodeRepair r1: Cordoned: Node cordoned and tainted"),
        ("WARNING", "NodeRepair r1: TaskTimeout: 2 tasks in flight"),
    ]


def passes(repair: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("pitstop_repair_passes_total", {"repair": repair})


def test_every_decided_pass_is_counted_also_one_that_writes_nothing() -> None:
    """The barrier of tests that assert that nothing happened: a pass counted after a
    change decided with the change in view."""
    kube = FakeKube()
    report = Report(
        RepairState("r-passes", {"spec": {"nodeName": "n1"}}, kube, logging.getLogger())
    )  # type: ignore[arg-type]
    for i in range(3):
        asyncio.run(report.write_status(evicting(20), NOW + STATUS_COALESCE * i, None))
    assert len(kube.patches) == 1, "one write"
    assert passes("r-passes") == 3, "three passes"
    report.state.phases.record("r-passes", Phase.EVICTING)
    assert passes("r-passes") == 3
    report.state.phases.record("r-passes", None)
    assert passes("r-passes") is None, "a repair gone takes its series along"


class LostAnswers(FakeKube):
    """A server that applies every status patch (merge) but whose answers are lost
    while `lose` is set; a GET returns the repair as stored."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, Any] = {}
        self.lose = False

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        await super().patch_status(plural, name, status)
        self.stored.update({k: v for k, v in status.items() if v is not None})
        if self.lose:
            raise TimeoutError("the answer was lost")

    async def request(self, method: str, path: str, *a: Any, **kw: Any) -> dict[str, Any]:
        assert method == "GET" and path.endswith("/r1")
        return {"status": dict(self.stored)}


def test_a_status_write_whose_answer_was_lost_is_read_back() -> None:
    """Long-run seed 20071: the write of Uncordoning landed, its answer was lost, and
    the driver decided again from Verifying, writing the repair back to Verifying
    (invariant 6). A write with no answer is unconfirmed; the next pass reads it."""
    kube = LostAnswers()
    state = RepairState("r1", {"spec": {"nodeName": "n1"}}, kube, logging.getLogger())  # type: ignore[arg-type]
    report = Report(state)
    asyncio.run(report.write_status(NodeRepairStatus(phase=Phase.VERIFYING), NOW, None))
    kube.lose = True
    with pytest.raises(TimeoutError):
        asyncio.run(report.write_status(NodeRepairStatus(phase=Phase.UNCORDONING), NOW, None))
    assert state.unconfirmed and state.status.phase == Phase.VERIFYING
    kube.lose = False
    asyncio.run(report.read_back())
    assert state.status.phase == Phase.UNCORDONING, "decides from what the server has"
    assert (state.written or {})["phase"] == "Uncordoning" and not state.unconfirmed


def test_a_refused_status_write_is_not_read_back() -> None:
    """A 4xx changed nothing: the status held is still the server's."""

    class Refusing(FakeKube):
        async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
            raise ApiError(422, "invalid")

    state = RepairState("r1", {"spec": {"nodeName": "n1"}}, Refusing(), logging.getLogger())  # type: ignore[arg-type]
    with pytest.raises(ApiError):
        asyncio.run(Report(state).write_status(NodeRepairStatus(phase=Phase.PENDING), NOW, None))
    assert not state.unconfirmed


class OtherLeader(FakeKube):
    """An API server as it treats status writes: a merge patch lands whatever the
    status is now, a JSON Patch only if its `test`s hold (422 otherwise). `stored`
    is the repair; the other leader writes to it directly."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, Any] = {"metadata": {"name": "r1"}}

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        await super().patch_status(plural, name, status)
        self.stored["status"] = {**self.stored.get("status", {}), **status}

    async def patch_status_ops(self, plural: str, name: str, ops: list[dict[str, Any]]) -> None:
        from pitstop.cluster.kube import StatusChanged
        from tests.unit.test_nodes import Refused, apply

        try:
            self.stored = apply(self.stored, ops)
        except Refused as e:
            raise StatusChanged(422, f"the server rejected our request: {e}") from e
        await FakeKube.patch_status(self, plural, name, sent_fields(ops))

    async def request(self, method: str, path: str, *a: Any, **kw: Any) -> dict[str, Any]:
        assert method == "GET" and path.endswith("/r1")
        return copy.deepcopy(self.stored)


def test_a_deposed_leaders_late_write_does_not_take_a_repair_out_of_its_final_phase() -> None:
    """Long-run seed 60076: both leaders decided Repairing → Uncordoning; the new one
    released the node and wrote Succeeded, then the deposed one's Uncordoning landed
    (a merge patch, no precondition) and the phase went backwards (invariant 6). The
    write tests the phase it was decided from: refused, it is read back instead."""
    kube = OtherLeader()
    state = RepairState("r1", {"spec": {"nodeName": "n1"}}, kube, logging.getLogger())  # type: ignore[arg-type]
    report = Report(state)
    repairing = NodeRepairStatus(phase=Phase.REPAIRING, phase_start_time=NOW)
    asyncio.run(report.write_status(repairing, NOW, None))
    assert kube.stored["status"]["phase"] == "Repairing"
    # Meanwhile the new leader took it to Uncordoning and then Succeeded.
    kube.stored["status"] = {**kube.stored["status"], "phase": "Succeeded"}
    uncordoning = NodeRepairStatus(phase=Phase.UNCORDONING, phase_start_time=NOW)
    with pytest.raises(ApiError):  # StatusChanged: the pass decides again
        asyncio.run(report.write_status(uncordoning, NOW + timedelta(seconds=1), None))
    assert kube.stored["status"]["phase"] == "Succeeded", "a final phase stays final"
    assert state.status.phase == Phase.SUCCEEDED, "read back: the next decision starts there"
    assert not state.unconfirmed


def test_a_status_refused_for_another_reason_is_not_taken_for_a_race() -> None:
    """A 422 whose tests held (an invalid status, say) is the pass's failure, retried
    later, not another writer's change to decide again from at once."""
    from pitstop.cluster.kube import StatusChanged

    class Invalid(OtherLeader):
        async def patch_status_ops(self, plural: str, name: str, ops: Any) -> None:
            if self.stored.get("status"):
                raise StatusChanged(422, "status.message: Too long")
            await super().patch_status_ops(plural, name, ops)

    kube = Invalid()
    state = RepairState("r1", {"spec": {"nodeName": "n1"}}, kube, logging.getLogger())  # type: ignore[arg-type]
    report = Report(state)
    asyncio.run(report.write_status(NodeRepairStatus(phase=Phase.PENDING), NOW, None))
    with pytest.raises(ApiError) as refused:
        asyncio.run(report.write_status(NodeRepairStatus(phase=Phase.CORDONING), NOW, None))
    assert not isinstance(refused.value, StatusChanged)
    assert state.status.phase == Phase.PENDING


def test_a_guarded_write_lands_on_the_status_it_was_decided_from() -> None:
    """The guard refuses only a status another writer moved: the repair's own
    writes, from none at all to the next phase, each land (one PATCH each)."""
    kube = OtherLeader()
    state = RepairState("r1", {"spec": {"nodeName": "n1"}}, kube, logging.getLogger())  # type: ignore[arg-type]
    report = Report(state)
    for i, phase in enumerate((Phase.PENDING, Phase.CORDONING, Phase.EVICTING)):
        at = NOW + timedelta(seconds=i)
        asyncio.run(
            report.write_status(NodeRepairStatus(phase=phase, phase_start_time=at), at, None)
        )
    assert kube.stored["status"]["phase"] == "Evicting" and len(kube.patches) == 3
    asyncio.run(report.write_status(evicting(3), NOW + timedelta(seconds=5), None))
    assert kube.stored["status"]["instances"]["remaining"] == 3
    assert "phaseStartTime" not in kube.stored["status"], "a field gone is removed"
