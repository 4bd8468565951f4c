"""Leader election rules (pitstop.cluster.leader), without a cluster: the pure decision,
the Lease bodies, the fence, and two electors contending on an in-memory store
that keeps the API server's optimistic-concurrency rule (a write naming a stale
resourceVersion gets 409)."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from pitstop.cluster.kube import ApiError
from pitstop.cluster.leader import (
    Action,
    ElectionConfig,
    Elector,
    Fence,
    Keeper,
    LeaseRecord,
    lease_spec,
    micro_time,
    next_step,
)

ME = "pitstop-a"


def record(holder: str = "pitstop-b", duration: float = 15, **kw: Any) -> LeaseRecord:
    return LeaseRecord(holder=holder, lease_duration=duration, renew_time="t1", **kw)


def test_absent_lease_is_created() -> None:
    assert next_step(None, 0, 0, ME).action is Action.CREATE


def test_own_lease_is_renewed_at_once_even_after_a_restart() -> None:
    # Same identity (the Pod name survives a container restart): no wait.
    step = next_step(record(holder=ME), observed_at=100, now=100, identity=ME)
    assert step.action is Action.RENEW


def test_free_lease_is_taken_at_once() -> None:
    assert next_step(record(holder=""), observed_at=100, now=100, identity=ME).action is Action.TAKE


def test_held_lease_waits_a_whole_duration_from_our_own_observation() -> None:
    step = next_step(record(), observed_at=100, now=104, identity=ME)
    assert step.action is Action.WAIT
    assert step.wait == pytest.approx(11)
    assert next_step(record(), observed_at=100, now=114.9, identity=ME).action is Action.WAIT
    assert next_step(record(), observed_at=100, now=115, identity=ME).action is Action.TAKE


def test_a_record_is_the_same_while_the_holder_writes_nothing() -> None:
    a = record(resource_version="1")
    assert a.same_record(record(resource_version="2"))  # e.g. a label edit
    assert not a.same_record(LeaseRecord(holder="pitstop-b", lease_duration=15, renew_time="t2"))
    assert not a.same_record(None)


def test_config_orders_its_durations() -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        ElectionConfig(namespace="ns", identity=ME, lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="identity"):
        ElectionConfig(namespace="ns", identity="")


def test_lease_spec_counts_a_change_of_holder_as_a_transition() -> None:
    config = ElectionConfig(namespace="ns", identity=ME)
    now = datetime(2026, 12, 2, 13, 0, 0, 123456, tzinfo=UTC)
    taken = lease_spec(config, record(transitions=4), Action.TAKE, now)
    assert taken == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-02T13:00:00.123456Z",
        "renewTime": "2026-12-02T13:00:00.123456Z",
        "leaseTransitions": 5,
    }
    mine = record(holder=ME, transitions=5, acquire_time="2026-12-02T12:00:00.000000Z")
    renewed = lease_spec(config, mine, Action.RENEW, now)
    assert renewed["leaseTransitions"] == 5
    assert renewed["acquireTime"] == "2026-12-02T12:00:00.000000Z"  # kept while renewing
    assert lease_spec(config, record(holder=""), Action.TAKE, now)["leaseTransitions"] == 0


def test_release_leaves_no_holder_and_a_short_duration() -> None:
    config = ElectionConfig(namespace="ns", identity=ME)
    released = lease_spec(config, record(holder=ME, transitions=2), Action.WAIT, datetime.now(UTC))
    assert released["holderIdentity"] is None
    assert released["leaseDurationSeconds"] == 1
    assert released["leaseTransitions"] == 2


def test_micro_time_is_utc_with_microseconds() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert micro_time(at) == "2026-01-02T03:04:05.000006Z"


def test_fence_fires_when_not_renewed_in_time() -> None:
    fired: list[str] = []
    done = threading.Event()

    def lost(why: str) -> None:
        fired.append(why)
        done.set()

    fence = Fence(0.3, lost)
    fence.start(time.monotonic())
    assert done.wait(5), "the fence never fired"
    assert fired and "not renewed within 0.3 s" in fired[0]


def test_fence_stays_quiet_while_renewed() -> None:
    fired: list[str] = []
    fence = Fence(0.5, fired.append)
    fence.start(time.monotonic())
    for _ in range(8):
        time.sleep(0.1)
        fence.renewed(time.monotonic())
    fence.stop()
    assert fired == []


class LeaseStore:
    """One Lease with the API server's conditional-write rule."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.no_namespace = False
        self.before_put: list[Callable[[dict[str, Any]], None]] = []
        """Edits made to the stored Lease just before the next PUTs arrive, one per PUT
        (what another writer did between the elector's read and its write)."""
        self.puts = 0

    def client(self) -> Any:
        store = self

        class Client:
            async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
                await asyncio.sleep(0)  # let contenders interleave
                if store.down:
                    raise ApiError(503, "the API server is down")
                if method == "GET":
                    if store.lease is None:
                        raise ApiError(404, "not found")
                    return copy.deepcopy(store.lease)
                if method == "POST":
                    if store.no_namespace:  # what the API server answers then
                        raise ApiError(
                            404,
                            'namespaces "pitstop-system" not found',
                            {"reason": "NotFound", "details": {"kind": "namespaces"}},
                        )
                    if store.lease is not None:
                        raise ApiError(409, "already exists")
                    return store.write(body)
                if method == "PUT":
                    assert store.lease is not None
                    store.puts += 1
                    if store.before_put:
                        store.before_put.pop(0)(store.lease)
                        store.bump()
                    given = body["metadata"].get("resourceVersion")
                    if given != store.lease["metadata"]["resourceVersion"]:
                        raise ApiError(409, "the object has been modified")
                    return store.write(body)
                raise AssertionError(method)

        return Client()

    def bump(self) -> None:
        """A change by another writer: the resourceVersion moves."""
        assert self.lease is not None
        self.version += 1
        self.lease["metadata"]["resourceVersion"] = str(self.version)

    def write(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        lease = copy.deepcopy(body)
        lease["metadata"]["resourceVersion"] = str(self.version)
        self.lease = lease
        return copy.deepcopy(lease)


def elector(store: LeaseStore, identity: str, **kw: float) -> Elector:
    config = ElectionConfig(namespace="pitstop-system", identity=identity, **kw)
    return Elector(store.client(), config)


def test_two_candidates_never_both_win_a_round() -> None:
    async def scenario() -> list[bool]:
        store = LeaseStore()
        a, b = elector(store, "a"), elector(store, "b")
        results = await asyncio.gather(a.try_once(), b.try_once())
        return [won for won, _ in results]

    assert sorted(asyncio.run(scenario())) == [False, True]


def test_standby_takes_over_only_after_the_lease_duration() -> None:
    async def scenario() -> float:
        store = LeaseStore()
        leader = elector(store, "a", lease_duration=0.6, renew_deadline=0.4, retry_period=0.1)
        assert (await leader.try_once())[0]
        standby = elector(store, "b", lease_duration=0.6, renew_deadline=0.4, retry_period=0.1)
        start = time.monotonic()
        sent = await standby.acquire(asyncio.Event())  # the leader never renews again
        assert sent is not None
        return time.monotonic() - start

    waited = asyncio.run(scenario())
    assert waited >= 0.6  # never before the holder's lease duration passed


def test_release_hands_over_without_waiting() -> None:
    async def scenario() -> tuple[float, str]:
        store = LeaseStore()
        leader = elector(store, "a", lease_duration=30, renew_deadline=20, retry_period=0.2)
        assert (await leader.try_once())[0]
        standby = elector(store, "b", lease_duration=30, renew_deadline=20, retry_period=0.2)
        await standby.try_once()  # sees "a" holding it
        await leader.release()
        start = time.monotonic()
        assert await standby.acquire(asyncio.Event()) is not None
        assert store.lease is not None
        return time.monotonic() - start, store.lease["spec"]["holderIdentity"]

    waited, holder = asyncio.run(scenario())
    assert holder == "b"
    assert waited < 5  # well under the 30 s lease duration


def test_keep_deposes_the_leader_when_another_holds_the_lease() -> None:
    async def scenario() -> list[str]:
        store = LeaseStore()
        leader = elector(store, "a", lease_duration=3, renew_deadline=2, retry_period=0.1)
        _, sent = await leader.try_once()
        assert store.lease is not None
        store.lease["spec"]["holderIdentity"] = "b"  # e.g. an admin moved it
        store.version += 1
        store.lease["metadata"]["resourceVersion"] = str(store.version)
        lost: list[str] = []
        fence = Fence(2, lost.append)
        fence.renewed(sent)
        await asyncio.wait_for(leader.keep(fence), 5)
        return lost

    assert asyncio.run(scenario()) == ["the Lease is held by b"]


def test_keep_lets_the_fence_fire_while_the_api_is_down() -> None:
    async def scenario() -> list[str]:
        store = LeaseStore()
        leader = elector(store, "a", lease_duration=1.5, renew_deadline=0.5, retry_period=0.1)
        _, sent = await leader.try_once()
        store.down = True
        lost: list[str] = []
        fence = Fence(0.5, lost.append)
        fence.start(sent)
        keeper = asyncio.create_task(leader.keep(fence))
        for _ in range(50):
            if lost:
                break
            await asyncio.sleep(0.1)
        keeper.cancel()
        fence.stop()
        return lost

    lost = asyncio.run(scenario())
    assert lost and "not renewed within 0.5 s" in lost[0]


def label_edit(lease: dict[str, Any]) -> None:
    """What `kubectl label lease` or a GitOps tool does: metadata only."""
    lease["metadata"].setdefault("labels", {})["team"] = "platform"


def taken_by_b(lease: dict[str, Any]) -> None:
    lease["spec"]["holderIdentity"] = "b"
    lease["spec"]["renewTime"] = "t-b"


def test_keep_survives_a_label_edit_between_its_read_and_its_write() -> None:
    """The edit moves the resourceVersion, so the renewal gets 409; the Lease still
    names us, so we read again and renew instead of deposing ourselves."""

    async def scenario() -> tuple[list[str], str, int]:
        store = LeaseStore()
        leader = elector(store, "a", lease_duration=3, renew_deadline=2, retry_period=0.05)
        _, sent = await leader.try_once()
        store.before_put = [label_edit, label_edit]  # the next two renewals collide
        lost: list[str] = []
        fence = Fence(2, lost.append)
        fence.renewed(sent)
        keeper = asyncio.create_task(leader.keep(fence))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if lost or (store.puts >= 5 and not store.before_put):
                break
        keeper.cancel()
        assert store.lease is not None
        return lost, store.lease["spec"]["holderIdentity"], store.puts

    lost, holder, puts = asyncio.run(scenario())
    assert lost == []
    assert holder == "a"
    assert puts >= 5  # it went on renewing after the conflicts


def test_a_conflict_from_another_holder_deposes_at_once() -> None:
    async def scenario() -> list[str]:
        store = LeaseStore()
        leader = elector(store, "a", lease_duration=3, renew_deadline=2, retry_period=0.05)
        _, sent = await leader.try_once()
        store.before_put = [taken_by_b]
        lost: list[str] = []
        fence = Fence(2, lost.append)
        fence.renewed(sent)
        await asyncio.wait_for(leader.keep(fence), 5)
        return lost

    assert asyncio.run(scenario()) == ["the Lease is held by b"]


def test_conflicts_until_the_deadline_fence_the_leader_before_the_lease_can_pass() -> None:
    """Every renewal collides with an edit: the leader never renews, never names
    itself as another holder, and its fence fires within the renew deadline of its
    last renewal, before a standby could take the Lease (the lease duration)."""

    async def scenario() -> tuple[list[str], float, int]:
        store = LeaseStore()
        leader = elector(store, "a", lease_duration=1.5, renew_deadline=0.6, retry_period=0.05)
        _, sent = await leader.try_once()
        store.before_put = [label_edit] * 10_000
        lost: list[str] = []
        fence = Fence(0.6, lost.append)
        fence.start(sent)
        keeper = asyncio.create_task(leader.keep(fence))
        for _ in range(500):
            if lost:
                break
            await asyncio.sleep(0.01)
        fired = time.monotonic()
        keeper.cancel()
        fence.stop()
        assert store.lease is not None
        assert store.lease["spec"]["holderIdentity"] == "a"
        return lost, fired - sent, store.puts

    lost, after, puts = asyncio.run(scenario())
    assert len(lost) == 1 and "not renewed within 0.6 s" in lost[0], lost
    assert after < 1.5  # fenced before the lease duration from its last renewal
    assert puts > 3  # the conflicts were retried, not given up on


def test_a_missing_namespace_is_said_once_with_what_to_do(caplog: pytest.LogCaptureFixture) -> None:
    """`pitstop run` on a cluster without pitstop-system warned every second for ever."""

    async def scenario() -> float | None:
        store = LeaseStore()
        store.no_namespace = True
        e = elector(store, "a", lease_duration=0.6, renew_deadline=0.4, retry_period=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(e.acquire(stop))
        await asyncio.sleep(0.5)  # about ten rounds
        store.no_namespace = False  # the admin installs pitstop
        return await asyncio.wait_for(task, 5)

    with caplog.at_level("DEBUG", logger="pitstop.cluster.leader"):
        assert asyncio.run(scenario()) is not None, "the Lease is taken once the namespace exists"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "namespace pitstop-system does not exist" in warnings[0]
    assert "--lease-namespace" in warnings[0] and "--no-leader-elect" in warnings[0]


class Closable:
    """The store's client, with the close() a Keeper calls on its own client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        return await self.client.request(method, path, body)  # type: ignore[no-any-return]

    async def close(self) -> None:
        return None


def test_the_keeper_renews_while_kopf_keeps_the_operator_loop_busy() -> None:
    # A new leader at 1,000 nodes / 20,000 pods: kopf's start-up held the loop past
    # the renew deadline, and the renewal, a task on that loop, came too late: the
    # fence fired again and again (bench gate --full). Renewed from its own thread,
    # the Lease is kept while the loop is busy (it still beats between handlers).
    async def scenario() -> tuple[list[str], int]:
        store = LeaseStore()
        leader = elector(store, "a", lease_duration=1.5, renew_deadline=0.5, retry_period=0.1)
        _, sent = await leader.try_once()
        lost: list[str] = []
        fence = Fence(0.5, lost.append)
        fence.start(sent)
        keeper = Keeper(leader, fence, Closable(store.client()), stuck_after=5)  # type: ignore[arg-type]
        keeper.start()
        beat = asyncio.create_task(keeper.beating())
        before = store.puts
        for _ in range(3):
            time.sleep(0.7)  # noqa: ASYNC251  # a handler holding the loop past the deadline
            await asyncio.sleep(0)  # between handlers the loop runs the beat
        beat.cancel()
        await asyncio.to_thread(keeper.stop, 2)
        fence.stop()
        return lost, store.puts - before

    lost, renewals = asyncio.run(scenario())
    assert lost == [] and renewals >= 10


def test_the_keeper_lets_the_fence_fire_when_the_operator_loop_is_stuck() -> None:
    # A loop that is stuck, not busy, must not keep the Lease from its thread.
    store = LeaseStore()

    async def first() -> float:
        leader = elector(store, "a", lease_duration=1.5, renew_deadline=0.5, retry_period=0.1)
        _, sent = await leader.try_once()
        return sent

    sent = asyncio.run(first())
    leader = elector(store, "a", lease_duration=1.5, renew_deadline=0.5, retry_period=0.1)
    asyncio.run(leader.read())
    lost: list[str] = []
    fence = Fence(0.5, lost.append)
    fence.start(sent)
    keeper = Keeper(leader, fence, Closable(store.client()), stuck_after=0.2)  # type: ignore[arg-type]
    keeper.start()  # and no beat: the operator's loop never runs again
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.05)
    keeper.stop(2)
    fence.stop()
    assert lost == ["the Lease was not renewed within 0.5 s"]
