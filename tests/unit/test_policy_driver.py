"""A RepairPolicy's pass (PolicyDriver.step) against an in-memory stand-in of the
few API calls it makes (create a NodeRepair, patch its own status) and of the
indexes it reads: what it remembers across passes and across a restart (a new
driver made from the status the old one wrote), and which Events it posts.

Found in review: an alert's fault forgotten after 10 minutes (before Alertmanager's
hourly repeat) and by a new leader; Events of a node's next fault swallowed; a
deleted automatic repair made again at once for the same fault."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest

from pitstop import metrics
from pitstop.cluster.indexes import Wakeups
from pitstop.cluster.kube import ApiError
from pitstop.pool import alerts, daemon

POLICY = "rp"
T0 = "2026-01-01T00:00:00Z"


def node(name: str, rv: int, deadlock: str = "False", since: str = T0) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": str(rv), "labels": {"pool": "a"}},
        "spec": {},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": T0},
                {"type": "KernelDeadlock", "status": deadlock, "lastTransitionTime": since},
            ]
        },
    }


def apply_merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            apply_merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class World:
    """The policy object (kopf's live body), its nodes and the NodeRepairs."""

    def __init__(self, **spec: Any) -> None:
        self.spec = {
            "nodeSelector": {"matchLabels": {"pool": "a"}},
            "unhealthyConditions": [{"type": "KernelDeadlock", "status": "True", "duration": "0s"}],
            "maxUnhealthy": "100%",
            "minAvailable": 0,
            "maxConcurrentRepairs": 10,
            "repairTemplate": {"spec": {}},
            **spec,
        }
        self.body: dict[str, Any] = {
            "metadata": {"name": POLICY, "generation": 1},
            "spec": self.spec,
        }
        self.rv = 1
        self.nodes = {n: node(n, 1) for n in ("n1", "n2", "n3")}
        self.repairs: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.specs: dict[str, dict[str, Any]] = {}
        """The spec each NodeRepair was created with."""
        self.unshown: set[str] = set()
        """Repairs that exist but the index does not show yet."""
        self.pools = daemon.Pools.waking(Wakeups())
        """The operator run's (its alert inbox)."""

    def set_node(self, name: str, deadlock: str, since: str = T0) -> None:
        self.rv += 1
        self.nodes[name] = node(name, self.rv, deadlock, since)

    # the Kube the driver calls
    async def request(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert method == "POST" and path.endswith("/noderepairs"), (method, path)
        name = body["metadata"]["name"]
        if name in self.repairs:
            raise ApiError(409, f"noderepairs {name!r} already exists")
        self.repairs[name] = {
            "name": name,
            "node": body["spec"]["nodeName"],
            "phase": None,
            "deleting": False,
            "created": f"2026-01-01T00:00:{len(self.created):02d}Z",
            "policy": POLICY,
            "dryRun": False,
        }
        self.created.append(name)
        self.specs[name] = body["spec"]
        return body

    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        assert (plural, name) == ("repairpolicies", POLICY)
        status = self.body.setdefault("status", {})
        apply_merge_patch(status, patch)

    # the indexes the driver reads
    def indexes(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        by_node: dict[str, list[dict[str, Any]]] = {}
        for r in self.repairs.values():
            if r["name"] in self.unshown:
                continue
            by_node.setdefault(r["node"], []).append(dict(r))
        nodes = {n: [body] for n, body in self.nodes.items()}
        return nodes, by_node, {POLICY: [self.spec]}

    def driver(self) -> daemon.PolicyDriver:
        """A new driver, as a restarted or new leader makes it (from the stored body)."""
        return daemon.PolicyDriver(POLICY, self.body, self, None, self.pools)  # type: ignore[arg-type]

    def step(self, driver: daemon.PolicyDriver, now: datetime) -> None:
        asyncio.run(driver.step(now, *self.indexes()))  # type: ignore[arg-type]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    posted: list[tuple[str, str]] = []

    def event(body: Any, *, type: str, reason: str, message: str) -> None:
        posted.append((reason, message))

    monkeypatch.setattr(kopf, "event", event)
    yield posted


def reasons(events: list[tuple[str, str]]) -> list[str]:
    return [reason for reason, _ in events]


# --- a deleted automatic repair is not made again for the same fault ---


def test_a_deleted_repair_is_not_made_again_for_the_same_fault(
    events: list[tuple[str, str]],
) -> None:
    world = World()
    driver = world.driver()
    now = datetime.now(UTC)
    world.set_node("n1", "True")
    world.step(driver, now)
    assert len(world.created) == 1
    first = world.created[0]
    world.step(driver, now + timedelta(seconds=1))  # the index shows it now

    del world.repairs[first]  # kubectl delete noderepair
    world.step(driver, now + timedelta(seconds=2))
    world.step(driver, now + timedelta(seconds=3))
    assert world.created == [first], "the same fault got a second repair"
    declined = [m for r, m in events if r == "NodeRepairDeclined"]
    assert len(declined) == 1 and first in declined[0] and "until" in declined[0], events

    # A restarted (or new) leader reads the decline from the status.
    world.step(world.driver(), now + timedelta(seconds=4))
    assert world.created == [first]
    record = world.body["status"]["repairs"]
    assert [(r["node"], r["repair"]) for r in record] == [("n1", first)]
    assert record[0]["declinedUntil"]


def test_a_deleted_repair_being_deleted_declines_at_once(events: list[tuple[str, str]]) -> None:
    """Seen with its deletionTimestamp (the finalizer still runs): declined then, so
    that a leader which never sees it gone still knows."""
    world = World()
    driver = world.driver()
    now = datetime.now(UTC)
    world.set_node("n1", "True")
    world.step(driver, now)
    (first,) = world.created
    world.repairs[first]["deleting"] = True
    world.step(driver, now + timedelta(seconds=1))
    assert "NodeRepairDeclined" in reasons(events)
    del world.repairs[first]
    world.step(world.driver(), now + timedelta(seconds=2))
    assert world.created == [first]


def test_a_finished_repair_deleted_later_is_not_made_again(events: list[tuple[str, str]]) -> None:
    world = World()
    driver = world.driver()
    now = datetime.now(UTC)
    world.set_node("n1", "True")
    world.step(driver, now)
    (first,) = world.created
    world.repairs[first]["phase"] = "Succeeded"  # Ready again; the condition stays True
    world.step(driver, now + timedelta(seconds=1))
    assert world.created == [first]
    # Cleaned up after a restart of the operator.
    driver = world.driver()
    del world.repairs[first]
    world.step(driver, now + timedelta(seconds=2))
    assert world.created == [first]


def test_a_declined_fault_is_repaired_when_it_changes_or_its_time_ends(
    events: list[tuple[str, str]],
) -> None:
    world = World()
    driver = world.driver()
    now = datetime.now(UTC)
    world.set_node("n1", "True")
    world.set_node("n2", "True")
    world.step(driver, now)
    first, second = world.created
    world.step(driver, now + timedelta(seconds=1))
    del world.repairs[first], world.repairs[second]
    world.step(driver, now + timedelta(seconds=2))
    assert len(world.created) == 2

    # n1's condition changes (a new transition): a new fault, repaired at once.
    world.set_node("n1", "True", since="2026-01-02T00:00:00Z")
    world.step(driver, now + timedelta(seconds=3))
    assert len(world.created) == 3 and world.repairs[world.created[2]]["node"] == "n1"
    # n2's fault held on: repaired again once the decline ends (24 h).
    world.step(driver, now + timedelta(hours=23))
    assert len(world.created) == 3
    world.step(driver, now + timedelta(hours=24, seconds=3))
    assert len(world.created) == 4 and world.created[3] == second


def test_a_repair_not_yet_in_the_index_is_not_taken_for_deleted(
    events: list[tuple[str, str]],
) -> None:
    world = World()
    driver = world.driver()
    now = datetime.now(UTC)
    world.set_node("n1", "True")
    world.step(driver, now)
    (first,) = world.created
    world.unshown.add(first)  # created, but the watch has not shown it yet
    world.step(driver, now + timedelta(seconds=1))
    assert "NodeRepairDeclined" not in reasons(events)
    world.unshown.clear()
    world.step(driver, now + timedelta(seconds=2))
    assert world.created == [first] and "NodeRepairDeclined" not in reasons(events)


# --- Events: told once per fault, and again for the node's next fault ---


def test_the_next_fault_of_a_node_is_told_again(events: list[tuple[str, str]]) -> None:
    world = World(paused=True)
    driver = world.driver()
    now = datetime.now(UTC)
    world.set_node("n1", "True")
    world.step(driver, now)
    world.step(driver, now + timedelta(seconds=1))
    assert reasons(events).count("UnhealthyNodeDetected") == 1, events
    world.set_node("n1", "False", since="2026-01-02T00:00:00Z")
    world.step(driver, now + timedelta(seconds=2))
    # The same condition next week: the same words, a new fault.
    world.set_node("n1", "True", since="2026-01-09T00:00:00Z")
    world.step(driver, now + timedelta(seconds=3))
    assert reasons(events).count("UnhealthyNodeDetected") == 2, events
    assert not driver.posted.get("n2") and "n1" in driver.posted


def test_event_memory_is_forgotten_with_the_fault(events: list[tuple[str, str]]) -> None:
    world = World(paused=True)
    driver = world.driver()
    now = datetime.now(UTC)
    for i, n in enumerate(("n1", "n2", "n3")):
        world.set_node(n, "True", since=f"2026-01-0{i + 1}T00:00:00Z")
    world.step(driver, now)
    for n in ("n1", "n2", "n3"):
        world.set_node(n, "False")
    world.step(driver, now + timedelta(seconds=1))
    assert not driver.posted


# --- alert faults: kept until resolved, also across a restart ---


def alert_policy(**spec: Any) -> World:
    return World(unhealthyConditions=[], alerts={"names": ["NodeDiskFailing"]}, **spec)


def fire(world: World, node_name: str, firing: bool = True) -> None:
    labels = {"alertname": "NodeDiskFailing", "node": node_name}
    world.pools.alerts.add("NodeDiskFailing", labels, "2026-01-01T00:00:00Z", firing)


def test_an_alert_fault_outlives_ten_minutes_while_the_policy_is_paused(
    events: list[tuple[str, str]],
) -> None:
    """Alertmanager repeats a firing alert only every repeat_interval (1h)."""
    world = alert_policy(paused=True)
    driver = world.driver()
    now = datetime.now(UTC)
    fire(world, "n1")
    world.step(driver, now)
    assert world.body["status"]["unhealthyNodes"] == 1
    world.spec["paused"] = False
    world.step(driver, now + timedelta(minutes=30))
    assert [world.repairs[n]["node"] for n in world.created] == ["n1"]


def test_an_alert_fault_survives_a_restart(events: list[tuple[str, str]]) -> None:
    world = alert_policy(paused=True)
    now = datetime.now(UTC)
    fire(world, "n1")
    world.step(world.driver(), now)
    kept = world.body["status"]["alerts"]
    assert [(a["node"], a["alertname"]) for a in kept] == [("n1", "NodeDiskFailing")]

    world.pools = daemon.Pools.waking(Wakeups())  # another process: its inbox is empty
    world.spec["paused"] = False
    world.step(world.driver(), now + timedelta(seconds=1))
    assert [world.repairs[n]["node"] for n in world.created] == ["n1"]


def test_an_alert_fault_ends_when_resolved_or_stale(events: list[tuple[str, str]]) -> None:
    world = alert_policy(paused=True)
    driver = world.driver()
    now = datetime.now(UTC)
    fire(world, "n1")
    fire(world, "n2")
    world.step(driver, now)
    assert world.body["status"]["unhealthyNodes"] == 2
    fire(world, "n1", firing=False)
    world.step(driver, now + timedelta(seconds=1))
    assert [a["node"] for a in world.body["status"]["alerts"]] == ["n2"]
    world.step(driver, now + timedelta(hours=2, minutes=59))
    assert world.body["status"]["unhealthyNodes"] == 1
    world.step(driver, now + timedelta(hours=3, minutes=1))
    assert world.body["status"]["unhealthyNodes"] == 0
    assert not world.body["status"].get("alerts")


def test_an_alert_fault_ends_at_its_ends_at(events: list[tuple[str, str]]) -> None:
    """A sender that says when the alert ends is taken at its word (Alertmanager
    sends year 1, i.e. none, while an alert fires: see the receiver's parse)."""
    world = alert_policy(paused=True)
    driver = world.driver()
    now = datetime.now(UTC)
    labels = {"alertname": "NodeDiskFailing", "node": "n1"}
    ends = now + timedelta(minutes=5)
    world.pools.alerts.add("NodeDiskFailing", labels, "2026-01-01T00:00:00Z", True, ends)
    world.step(driver, now)
    assert world.body["status"]["unhealthyNodes"] == 1
    world.step(driver, now + timedelta(minutes=6))
    assert world.body["status"]["unhealthyNodes"] == 0


def test_the_receiver_reads_ends_at() -> None:
    def one(ends_at: object) -> object:
        body = {
            "version": "4",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "A"},
                    "startsAt": "",
                    "endsAt": ends_at,
                }
            ],
        }
        return alerts.parse(json.dumps(body).encode())[0][4]

    assert one("0001-01-01T00:00:00Z") is None
    assert one("soon") is None and one(7) is None
    assert one("2026-01-01T00:05:00.5Z") == datetime(2026, 1, 1, 0, 5, 0, 500000, tzinfo=UTC)


def test_storm_active_is_told_once_per_storm(events: list[tuple[str, str]]) -> None:
    world = World(maxUnhealthy="1")
    driver = world.driver()
    now = datetime.now(UTC)
    world.set_node("n1", "True")
    world.set_node("n2", "True")
    world.step(driver, now)
    world.body.pop("status")  # kopf's body has not caught up with the write yet
    world.step(driver, now + timedelta(seconds=1))
    assert reasons(events).count("StormActive") == 1, events
    world.set_node("n2", "False")
    world.step(driver, now + timedelta(seconds=2))
    world.set_node("n2", "True", since="2026-01-02T00:00:00Z")  # the next storm
    world.step(driver, now + timedelta(seconds=3))
    assert reasons(events).count("StormActive") == 2, events


# --- the pool's metrics ---


def pool_sample(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, {"policy": POLICY})


def test_pool_health_is_exported_per_policy_and_goes_with_its_daemon(
    events: list[tuple[str, str]],
) -> None:
    world = World(maxUnhealthy=1, minAvailable="50%")
    driver = world.driver()
    world.set_node("n1", "True")
    world.step(driver, datetime(2026, 1, 1, 0, 1, tzinfo=UTC))
    assert pool_sample("pitstop_pool_nodes") == 3
    assert pool_sample("pitstop_pool_min_available_nodes") == 2  # 50% of 3, rounded up
    assert pool_sample("pitstop_pool_unhealthy_nodes") == 1
    assert pool_sample("pitstop_pool_max_unhealthy_nodes") == 1
    assert pool_sample("pitstop_pool_storm_active") == 0
    assert pool_sample("pitstop_pool_active_repairs") == 0  # made, not yet running

    world.set_node("n2", "True")  # two unhealthy, maxUnhealthy 1: the storm guard
    world.step(driver, datetime(2026, 1, 1, 0, 2, tzinfo=UTC))
    assert pool_sample("pitstop_pool_unhealthy_nodes") == 2
    assert pool_sample("pitstop_pool_storm_active") == 1
    assert pool_sample("pitstop_pool_available_nodes") == 3  # faulty, yet Ready and schedulable

    daemon.forget_pool(POLICY)
    assert pool_sample("pitstop_pool_nodes") is None
    assert pool_sample("pitstop_pool_storm_active") is None
