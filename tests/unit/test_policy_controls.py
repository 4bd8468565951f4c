"""The controls on a RepairPolicy's pass (PolicyDriver.step, with the stand-in of
test_policy_driver): the per-node opt-out label, maintenance windows (creation
and admission), notifications of its pool's repairs, and its summary conditions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from pitstop.pool import notices
from tests.unit.test_policy_driver import World, events, reasons

__all__ = ["events"]  # the fixture, used by name

MON_NOON = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # a Monday


def cond(world: World, type_: str) -> dict[str, Any]:
    return next(c for c in world.body["status"]["conditions"] if c["type"] == type_)


def test_an_excluded_node_gets_no_automatic_repair(events: list[tuple[str, str]]) -> None:
    world = World()
    driver = world.driver()
    world.set_node("n1", "True")
    world.nodes["n1"]["metadata"]["labels"]["pitstop.dev/exclude-from-repair"] = "true"
    world.step(driver, MON_NOON)
    assert world.created == []
    suppressed = world.body["status"]["suppressed"]
    assert suppressed["reason"] == "NodeExcluded" and suppressed["nodes"] == ["n1"]
    assert "exclude-from-repair" in suppressed["message"]
    told = [m for r, m in events if r == "NodeExcluded"]
    assert len(told) == 1 and "KernelDeadlock" in told[0], events
    assert "NodeRepairSuppressed" not in reasons(events)  # the owner's choice, no warning
    world.step(driver, MON_NOON + timedelta(seconds=1))
    assert reasons(events).count("NodeExcluded") == 1  # told once per fault
    # A label other than "true" excludes nothing; removing it repairs the node.
    world.nodes["n1"]["metadata"]["labels"]["pitstop.dev/exclude-from-repair"] = "false"
    world.nodes["n1"]["metadata"]["resourceVersion"] = "99"
    world.step(driver, MON_NOON + timedelta(seconds=2))
    assert len(world.created) == 1


def window(start: str, end: str) -> dict[str, Any]:
    return {"maintenanceWindows": [{"days": ["Mon"], "start": start, "end": end}]}


def test_outside_its_window_a_policy_waits_and_says_until_when(
    events: list[tuple[str, str]],
) -> None:
    world = World(**window("22:00", "02:00"))
    driver = world.driver()
    world.set_node("n1", "True")
    due = asyncio.run(driver.step(MON_NOON, *world.indexes()))  # type: ignore[arg-type]
    assert world.created == []
    status = world.body["status"]
    assert status["maintenanceWindow"] == {"open": False, "nextOpenTime": "2026-01-05T22:00:00Z"}
    assert status["suppressed"]["reason"] == "OutsideMaintenanceWindow"
    assert "2026-01-05T22:00:00Z" in status["suppressed"]["message"]
    assert due == datetime(2026, 1, 5, 22, 0, tzinfo=UTC)  # wakes when it opens
    ready = cond(world, "Ready")
    assert ready["status"] == "True" and "opens at 2026-01-05T22:00:00Z" in ready["message"]
    assert any(r == "NodeRepairSuppressed" and "22:00" in m for r, m in events)

    world.step(driver, datetime(2026, 1, 5, 23, 0, tzinfo=UTC))  # inside
    assert len(world.created) == 1
    assert world.body["status"]["maintenanceWindow"] == {
        "open": True,
        "closesAt": "2026-01-06T02:00:00Z",
    }


def test_an_unknown_time_zone_stalls_the_policy(events: list[tuple[str, str]]) -> None:
    world = World(
        maintenanceWindows=[{"start": "00:00", "end": "23:59", "timeZone": "Mars/Olympus"}]
    )
    driver = world.driver()
    world.set_node("n1", "True")
    world.step(driver, MON_NOON)
    assert world.created == []
    stalled = cond(world, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidMaintenanceWindow"
    assert cond(world, "Ready")["status"] == "False"
    assert world.body["status"]["suppressed"]["reason"] == "InvalidMaintenanceWindow"


def test_summary_conditions_of_a_policy(events: list[tuple[str, str]]) -> None:
    world = World(maxUnhealthy=1)
    driver = world.driver()
    world.step(driver, MON_NOON)
    ready = cond(world, "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "True",
        "Watching",
        1,
    )
    assert ready["message"] == "3 nodes, 0 unhealthy, 0 repairs active"
    assert cond(world, "Reconciling")["status"] == "False"
    assert cond(world, "Stalled")["status"] == "False"
    world.set_node("n1", "True")
    world.set_node("n2", "True")
    world.step(driver, MON_NOON + timedelta(seconds=1))
    stalled = cond(world, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "MaxUnhealthyExceeded"
    assert cond(world, "Ready")["status"] == "False"


class Sent:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, spec: Any, notice: notices.Notice) -> None:
        self.sent.append((notice.repair.name, notice.event.value))

    async def close(self) -> None:
        pass


def repair(name: str, node: str, phase: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "node": node,
        "phase": phase,
        "deleting": False,
        "created": "",
        "policy": None,
    }


NOTIFY = {"notifications": {"webhook": {"secretRef": {"name": "chat", "key": "url"}}}}


def test_notifications_follow_the_pools_repairs(events: list[tuple[str, str]]) -> None:
    world = World(**NOTIFY)
    world.repairs["old"] = repair("old", "n2", "Evicting")
    driver = world.driver()
    sent = Sent()
    driver.notifier = sent  # type: ignore[assignment]
    world.set_node("n1", "True")
    world.step(driver, MON_NOON)
    assert sent.sent == []  # the first pass takes note: a new leader tells nothing twice
    (made,) = world.created
    world.repairs[made]["phase"] = "Cordoning"
    world.repairs["old"]["phase"] = "Failed"
    world.repairs["dry"] = {**repair("dry", "n3", None), "dryRun": True}
    world.step(driver, MON_NOON + timedelta(seconds=1))
    assert sorted(sent.sent) == [(made, "Started"), ("old", "Failed")]
    world.repairs[made]["phase"] = "Succeeded"
    world.step(driver, MON_NOON + timedelta(seconds=2))
    assert sent.sent[-1] == (made, "Succeeded") and len(sent.sent) == 3


def test_admission_holds_a_policys_own_repair_outside_its_window() -> None:
    """A repair the policy made while the window was open, still Pending when it
    closed, waits; a manual repair of the same pool does not."""
    now = datetime.now(UTC)
    later = (now + timedelta(hours=2)).strftime("%H:%M")
    after = (now + timedelta(hours=3)).strftime("%H:%M")
    world = World(maintenanceWindows=[{"start": later, "end": after}])
    world.repairs["auto"] = {
        "name": "auto",
        "node": "n1",
        "phase": None,
        "deleting": False,
        "created": "2026-01-01T00:00:00Z",
        "policy": "rp",
    }
    world.repairs["manual"] = {
        "name": "manual",
        "node": "n2",
        "phase": None,
        "deleting": False,
        "created": "2026-01-01T00:00:01Z",
        "policy": None,
    }
    nodes, repairs, policies = world.indexes()
    admission = world.pools.admission  # the run's, as the repairs' driver asks it

    def check(name: str, node: str) -> str | None:
        return asyncio.run(admission.check(name, node, "", nodes, repairs, policies))  # type: ignore[arg-type]

    refusal = check("auto", "n1")
    assert refusal is not None and refusal.startswith("OutsideMaintenanceWindow: the next")
    assert refusal.endswith("(policy rp)")
    assert check("manual", "n2") is None
    world.spec["maintenanceWindows"] = [
        {"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": later}
    ]
    assert check("auto", "n1") is None


def test_each_suppressed_node_is_told_its_own_reason(events: list[tuple[str, str]]) -> None:
    """Two nodes held back for different reasons: each Event says its own (the
    message of the last node looked at was told for every node)."""
    world = World(**window("22:00", "02:00"))
    driver = world.driver()
    world.set_node("n1", "True")  # held back by the window
    world.set_node("n2", "True")  # excluded by its owner
    world.nodes["n2"]["metadata"]["labels"]["pitstop.dev/exclude-from-repair"] = "true"
    world.step(driver, MON_NOON)
    assert world.created == []
    (n1,) = [m for r, m in events if r == "NodeRepairSuppressed"]
    assert n1.startswith("n1: the next maintenance window opens at"), n1
    (n2,) = [m for r, m in events if r == "NodeExcluded"]
    assert "n2 is labelled" in n2
    assert world.body["status"]["suppressed"]["nodes"] == ["n1", "n2"]


def test_a_policys_repairs_carry_its_require_room(events: list[tuple[str, str]]) -> None:
    """The policy's requireRoom (default true) is the one its repairs get: the
    template has no such field."""
    for policy, expected in (({}, True), ({"requireRoom": False}, False)):
        world = World(**policy)
        world.set_node("n1", "True")
        world.step(world.driver(), MON_NOON)
        (made,) = world.created
        assert world.specs[made]["requireRoom"] is expected
