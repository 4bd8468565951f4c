"""Leader election on a coordination.k8s.io/v1 Lease: of the operator's replicas,
only the holder of the Lease runs kopf (and so changes anything); the others wait.

The rules, as client-go's leaderelection keeps them:
- a candidate takes the Lease when it has no holder, or when the holder's record
  has not changed for `leaseDurationSeconds` *as measured on the candidate's own
  clock* from the moment it saw the last change (no trust in other clocks);
- the holder renews every `retry_period`; every write is conditional on the
  resourceVersion read, so two candidates can never both win one round;
- a write refused with 409 is decided again on a fresh read: an edit of the Lease's
  labels or annotations moves the resourceVersion too, and only a read that shows
  another holder deposes the holder;
- fencing: the holder stops acting (the process exits) once `renew_deadline` has
  passed since it sent its last successful renewal. That deadline is shorter than
  the lease duration, so the holder is gone before another candidate may take over.
- on a clean stop the holder releases the Lease (empty holder), so a standby takes
  over at its next poll instead of after a whole lease duration.

`next_step` is the pure decision; `Elector` does the API calls; `Fence` is a
watchdog thread, so a stalled event loop cannot keep a deposed leader acting.
Imports: the API client (pitstop.cluster.kube) only; no kopf."""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pitstop.cluster.kube import ApiError, Kube

logger = logging.getLogger(__name__)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
CONFLICT_ATTEMPTS = 5
"""Writes one round makes while each is refused with 409 and a fresh read still lets
it write (an edit of the Lease's metadata, not another candidate's claim)."""


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    identity: str
    name: str = "pitstop"
    lease_duration: float = 15.0
    """How long a record must stay unchanged before a candidate may take the Lease."""
    renew_deadline: float = 10.0
    """The holder stops acting when it has not renewed for this long."""
    retry_period: float = 2.0
    """How often the holder renews and a candidate looks again."""

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs an identity")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, "
                f"not {self.retry_period:g} s, {self.renew_deadline:g} s, "
                f"{self.lease_duration:g} s"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The spec of a Lease, and the resourceVersion it was read at."""

    holder: str = ""
    lease_duration: float = 0.0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0
    resource_version: str = ""

    @classmethod
    def parse(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration=float(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
        )

    def same_record(self, other: LeaseRecord | None) -> bool:
        """Whether nothing the holder writes changed (the resourceVersion may move
        for other reasons, such as a label edit, without the holder being alive)."""
        return other is not None and (
            self.holder,
            self.renew_time,
            self.acquire_time,
            self.transitions,
            self.lease_duration,
        ) == (
            other.holder,
            other.renew_time,
            other.acquire_time,
            other.transitions,
            other.lease_duration,
        )


class Action(enum.Enum):
    CREATE = "create"
    """No Lease exists: create it, holding it."""
    TAKE = "take"
    """The Lease is free or expired: write ourselves in as holder."""
    RENEW = "renew"
    """We hold it (also after our own restart under the same identity): renew."""
    WAIT = "wait"
    """Another candidate holds a valid Lease: look again later."""


@dataclass(frozen=True)
class Step:
    action: Action
    wait: float = 0.0
    """For WAIT: seconds until the Lease can have expired (capped by the caller)."""


def next_step(record: LeaseRecord | None, observed_at: float, now: float, identity: str) -> Step:
    """What a candidate does, given the Lease as read (None: absent) and the time
    (on its own monotonic clock) it first saw this record unchanged."""
    if record is None:
        return Step(Action.CREATE)
    if record.holder == identity:
        return Step(Action.RENEW)
    if not record.holder:
        return Step(Action.TAKE)
    expires = observed_at + record.lease_duration
    if now >= expires:
        return Step(Action.TAKE)
    return Step(Action.WAIT, wait=expires - now)


def micro_time(at: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    config: ElectionConfig, record: LeaseRecord | None, action: Action, now: datetime
) -> dict[str, Any]:
    """The spec to write for CREATE, TAKE or RENEW (and, with action WAIT, a release)."""
    stamp = micro_time(now)
    if action is Action.WAIT:  # release: no holder, so the next candidate need not wait
        return {
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": record.transitions if record else 0,
        }
    taking = action is not Action.RENEW
    transitions = record.transitions if record else 0
    if taking and record is not None and record.holder:
        transitions += 1  # a change of holder (a free Lease taken is not a transition)
    return {
        "holderIdentity": config.identity,
        "leaseDurationSeconds": max(1, round(config.lease_duration)),
        "acquireTime": stamp if taking or record is None else record.acquire_time or stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }


class Fence:
    """A watchdog thread: calls `on_lost` once the last renewal is older than the
    renew deadline, even if the event loop is stuck in a long handler."""

    def __init__(self, deadline: float, on_lost: Callable[[str], None]) -> None:
        self.deadline = deadline
        self._on_lost = on_lost
        self._renewed = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="lease-fence", daemon=True)

    def start(self, renewed: float) -> None:
        self.renewed(renewed)
        self._thread.start()

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at `sent_at` (monotonic) succeeded. The send time, not the
        answer's, is what the other candidates' clocks can have started from."""
        with self._lock:
            self._renewed = max(self._renewed, sent_at)

    def remaining(self) -> float:
        with self._lock:
            return self._renewed + self.deadline - time.monotonic()

    def lose(self, why: str) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._on_lost(why)

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(min(0.2, max(self.remaining(), 0.01))):
            if self.remaining() <= 0:
                self.lose(f"the Lease was not renewed within {self.deadline:g} s")
                return


class Elector:
    """One candidate's view of the Lease, and the calls that read and write it."""

    def __init__(self, kube: Kube, config: ElectionConfig) -> None:
        self.kube = kube
        self.config = config
        self.path = LEASES.format(namespace=config.namespace) + f"/{config.name}"
        self.record: LeaseRecord | None = None
        self.observed_at = time.monotonic()
        self.holder = ""
        """The holder last seen ("" when unknown or free)."""

    async def read(self) -> LeaseRecord | None:
        try:
            lease = await self.kube.request("GET", self.path)
        except ApiError as e:
            if e.status == 404:
                self._observe(None)
                return None
            raise
        self._observe(LeaseRecord.parse(lease))
        return self.record

    def _observe(self, record: LeaseRecord | None) -> None:
        if record is None or not record.same_record(self.record):
            self.observed_at = time.monotonic()
        self.record = record
        self.holder = record.holder if record else ""

    async def try_once(self) -> tuple[bool, float]:
        """One round: (whether we hold the Lease now, when our winning write was sent).

        A write refused with 409 is not yet a lost round: the resourceVersion also
        moves when someone edits the Lease's labels or annotations. So it reads again
        and decides anew: another holder (or its valid claim) ends the round, our own
        name or a free Lease is written again. After CONFLICT_ATTEMPTS conflicts in a
        row the last 409 is raised, as any failed renewal: the fence, not this loop,
        decides when the leader stops (keep also bounds a round by the fence)."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            record = await self.read()
            step = next_step(record, self.observed_at, time.monotonic(), self.config.identity)
            if step.action is Action.WAIT:
                return False, 0.0
            sent = time.monotonic()
            try:
                written = await self._write(record, step.action)
            except ApiError as e:
                if e.status != 409 or attempt == CONFLICT_ATTEMPTS:
                    raise
                logger.info(
                    f"Leader election: the Lease changed under our write ({e}); reading again."
                )
                continue
            self._observe(LeaseRecord.parse(written))
            return True, sent
        raise AssertionError("unreachable")

    async def _write(self, record: LeaseRecord | None, action: Action) -> dict[str, Any]:
        """CREATE, TAKE or RENEW, conditional on the record read (409 if it moved)."""
        spec = lease_spec(self.config, record, action, datetime.now(UTC))
        if action is Action.CREATE:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                "spec": spec,
            }
            return await self.kube.request(
                "POST", LEASES.format(namespace=self.config.namespace), body
            )
        assert record is not None
        return await self.kube.request("PUT", self.path, self._put(record, spec))

    def _put(self, record: LeaseRecord, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.config.name,
                "namespace": self.config.namespace,
                "resourceVersion": record.resource_version,  # conditional: 409 if changed
            },
            "spec": spec,
        }

    async def acquire(self, stop: asyncio.Event) -> float | None:
        """Waits until this candidate holds the Lease; returns when the winning write
        was sent (monotonic), or None if `stop` was set first."""
        said = ""
        while not stop.is_set():
            try:
                won, sent = await self.try_once()
            except (ApiError, OSError, TimeoutError) as e:
                # Said once while it lasts, not every round: a standby may wait for hours.
                problem = self._explain(e)
                (logger.debug if problem == said else logger.warning)(f"Leader election: {problem}")
                said, won, sent = problem, False, 0.0
            if won:
                return sent
            await _wait(stop, self.config.retry_period / 2)
        return None

    def _explain(self, error: Exception) -> str:
        ns = self.config.namespace
        body = error.body if isinstance(error, ApiError) and error.status == 404 else {}
        if (body.get("details") or {}).get("kind") == "namespaces":
            return (
                f"namespace {ns} does not exist, so the Lease cannot be made there:"
                " install pitstop (kubectl apply -k manifests/ creates it), choose"
                " another with --lease-namespace, or run a single replica with"
                " --no-leader-elect; waiting for it"
            )
        return f"cannot read or write the Lease {ns}/{self.config.name}: {error}"

    async def keep(self, fence: Fence) -> None:
        """Renews every retry period until cancelled; deposes us through the fence
        when another candidate holds the Lease or the deadline passes."""
        while True:
            await asyncio.sleep(self.config.retry_period)
            if not await self.renew_once(fence):
                return

    async def renew_once(self, fence: Fence) -> bool:
        """One renewal, bounded by the fence; False once another candidate holds the
        Lease (the fence is told: we stop)."""
        try:
            async with asyncio.timeout(max(fence.remaining(), 0.1)):
                held, sent = await self.try_once()
        except (ApiError, OSError, TimeoutError) as e:
            logger.warning(
                f"Leader election: renewal failed ({e}); "
                f"{max(fence.remaining(), 0):.1f} s left before this replica stops."
            )
            return True
        if held:
            fence.renewed(sent)
            return True
        fence.lose(f"the Lease is held by {self.holder or 'another candidate'}")
        return False

    async def release(self) -> None:
        """Gives the Lease up if we still hold it (a clean stop), so a standby takes
        over at once. Best effort: on failure the Lease simply expires."""
        try:
            record = await self.read()
            if record is None or record.holder != self.config.identity:
                return
            spec = lease_spec(self.config, record, Action.WAIT, datetime.now(UTC))
            await self.kube.request("PUT", self.path, self._put(record, spec))
            logger.info(f"Released the Lease {self.config.namespace}/{self.config.name}.")
        except (ApiError, OSError, TimeoutError) as e:
            logger.warning(f"Could not release the Lease (it will expire): {e}")

    def twin(self, kube: Kube) -> Elector:
        """This candidate's view of the Lease, with another client (another loop's)."""
        other = Elector(kube, self.config)
        other.record, other.observed_at, other.holder = self.record, self.observed_at, self.holder
        return other


class Keeper:
    """Renews the Lease from a thread of its own, with its own event loop and client.

    kopf's start-up into a large cluster keeps the operator's event loop busy for
    longer than the renew deadline: a new leader taking over 1,000 nodes / 20,000
    pods, renewing on that loop, fenced itself again and again and never acted
    (bench/README.md, the serving gate). A loop that is busy is working; one that is
    stuck is not, and must still lose the Lease: the keeper renews only while the
    operator's loop has run its beat (`beating`) within `stuck_after` seconds; then
    it stops renewing and the fence fires one renew deadline later."""

    def __init__(
        self, elector: Elector, fence: Fence, kube: Kube, stuck_after: float = 60.0
    ) -> None:
        self.elector = elector.twin(kube)
        self.fence = fence
        self.kube = kube
        self.stuck_after = stuck_after
        self._beat = time.monotonic()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._main, name="lease-keeper", daemon=True)

    def beat(self) -> None:
        with self._lock:
            self._beat = time.monotonic()

    def silent_for(self) -> float:
        with self._lock:
            return time.monotonic() - self._beat

    async def beating(self) -> None:
        """Runs on the operator's loop: shows the keeper that loop still runs."""
        while True:
            self.beat()
            await asyncio.sleep(1.0)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """No renewal after this returns (or the thread is stuck in one for `timeout`)."""
        self._halt.set()
        self._thread.join(timeout)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while not self._halt.wait(self.elector.config.retry_period):
                silent = self.silent_for()
                if silent > self.stuck_after:
                    logger.warning(
                        f"Leader election: the operator's event loop has not run for"
                        f" {silent:.0f} s; not renewing, this replica stops in"
                        f" {max(self.fence.remaining(), 0):.1f} s."
                    )
                    continue
                if not loop.run_until_complete(self.elector.renew_once(self.fence)):
                    return
        finally:
            loop.run_until_complete(self.kube.close())
            loop.close()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass


__all__ = [
    "Action",
    "ElectionConfig",
    "Elector",
    "Fence",
    "Keeper",
    "LeaseRecord",
    "Step",
    "lease_spec",
    "next_step",
]
