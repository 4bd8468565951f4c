"""Polls the task sources of the instances of nodes being drained, and sends their
httpPost drain signals: the only I/O of the task sources (their rules are pure,
in the other modules of pitstop.instances.sources).

Polling happens only where it matters: a repair daemon hands over the instances
of its node while the node waits for tasks (and evicts), and takes them back
when it leaves that step. Every request goes through one shared aiohttp session
(connections are reused, their number bounded) under one semaphore (requests in
flight bounded across all nodes), each with the profile's timeout.

Each poll is recorded with the time it *started*, so the trust rule of
pitstop.instances.sources.trust can tell a count read after the drain signal took effect
from one that may predate it. Readings are kept per pod and profile fingerprint:
a profile changed mid-drain starts from nothing (signal sent again, count read
again). Nothing is persisted: an operator restarted while polling sends the
signal again (runtimes must treat it as idempotent) and reads every count anew
before any of them is trusted."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp

from pitstop.instances.sources.addressing import Request
from pitstop.instances.sources.answers import check_status, parse_answer
from pitstop.instances.sources.errors import UNREACHABLE, SourceError
from pitstop.instances.sources.profiles import Profile
from pitstop.instances.sources.trust import Reading, SignalState, answer_lag, signal_failed

MAX_ANSWER = 4 * 1024 * 1024
"""Bytes read of one answer at most (a metrics page of a busy runtime is far smaller)."""
CONCURRENCY = 32
"""Requests in flight at once, across every node."""
CONNECTIONS = 64
"""Open connections kept at most (aiohttp's pool, shared)."""
ACCEPT = "text/plain;version=0.0.4;q=1, application/json;q=0.9, */*;q=0.1"
"""The Prometheus text format first: never OpenMetrics or protobuf."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Target:
    """One instance to poll and/or signal, resolved against its pod."""

    key: str
    """namespace/name"""
    node: str
    profile: Profile
    poll: Request | None = None
    """The GET of its polled source; None for the annotation source."""
    signal: Request | None = None
    """The POST of its httpPost drain signal, if the profile has one."""
    error: SourceError | None = None
    """Why it cannot be addressed (no IP, no such port): reported as its reading."""

    @property
    def ident(self) -> tuple[str, str]:
        return (self.key, self.profile.fingerprint)


class TaskPoller:
    """The shared poller of one operator process."""

    def __init__(
        self,
        *,
        concurrency: int = CONCURRENCY,
        connections: int = CONNECTIONS,
        on_change: Callable[[str], None] = lambda node: None,
        clock: Callable[[], datetime] = utcnow,
    ):
        self._concurrency = concurrency
        self._connections = connections
        self._on_change = on_change
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(concurrency)
        self._targets: dict[str, dict[tuple[str, str], Target]] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._kicks: dict[str, asyncio.Event] = {}
        self._readings: dict[tuple[str, str], Reading] = {}
        self._signals: dict[tuple[str, str], SignalState] = {}
        self._due: dict[tuple[str, str], datetime] = {}
        self.requests = 0
        """Requests sent (polls and signals), for tests and benchmarks."""

    # --- what the repair daemons call ---

    def watch(self, node: str, targets: Iterable[Target]) -> None:
        """Polls (and signals) exactly these instances of `node` from now on."""
        wanted = {t.ident: t for t in targets}
        before = self._targets.get(node, {})
        for ident in set(before) - set(wanted):
            self._drop(ident)
        self._targets[node] = wanted
        if node not in self._loops or self._loops[node].done():
            self._kicks[node] = asyncio.Event()
            self._loops[node] = asyncio.create_task(self._run(node), name=f"tasks:{node}")
        if set(wanted) != set(before):
            self._kicks[node].set()

    def forget(self, node: str) -> None:
        """Stops polling `node` and drops what was read there."""
        for ident in self._targets.pop(node, {}):
            self._drop(ident)
        loop = self._loops.pop(node, None)
        self._kicks.pop(node, None)
        if loop is not None:
            loop.cancel()

    def nodes(self) -> list[str]:
        return sorted(self._targets)

    def failing(self) -> dict[tuple[str, ...], float]:
        """Instances polled now whose last poll failed, by profile (for
        pitstop_task_source_failing_instances); each polled profile reported, 0 or more."""
        counts: dict[tuple[str, ...], float] = {}
        for targets in list(self._targets.values()):
            for ident, t in list(targets.items()):
                if t.poll is None and t.error is None:
                    continue  # a drain signal only: nothing is polled
                reading = self._readings.get(ident)
                failed = reading is not None and reading.error is not None
                counts[(t.profile.name,)] = counts.get((t.profile.name,), 0) + failed
        return counts

    def reading(self, key: str, profile: Profile) -> Reading | None:
        """The last poll of this pod under this profile."""
        return self._readings.get((key, profile.fingerprint))

    def signal_state(self, key: str, profile: Profile) -> SignalState | None:
        """Progress of this pod's httpPost drain signal under this profile."""
        return self._signals.get((key, profile.fingerprint))

    async def read_once(self, targets: Sequence[Target]) -> dict[str, Reading]:
        """One poll of each target, concurrently (for `pitstop plan`); no signal."""
        found = await asyncio.gather(*(self._read(t) for t in targets))
        return {t.key: r for t, r in zip(targets, found, strict=True)}

    async def close(self) -> None:
        for node in list(self._targets):
            self.forget(node)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the loop of one node ---

    def _drop(self, ident: tuple[str, str]) -> None:
        self._readings.pop(ident, None)
        self._signals.pop(ident, None)
        self._due.pop(ident, None)

    async def _run(self, node: str) -> None:
        while node in self._targets:
            kick = self._kicks[node]
            kick.clear()
            targets = list(self._targets[node].values())
            now = self._clock()
            due = [t for t in targets if self._due.get(t.ident, now) <= now]
            if due:
                changed = await asyncio.gather(*(self._tick(t) for t in due))
                if any(changed) and node in self._targets:
                    self._on_change(node)
            if node not in self._targets:
                return
            pending = [
                self._due[t.ident] for t in self._targets[node].values() if t.ident in self._due
            ]
            wait = (min(pending) - self._clock()).total_seconds() if pending else 60.0
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kick.wait(), timeout=wait)

    async def _tick(self, t: Target) -> bool:
        """Signals and/or polls one target; True when what it says changed."""
        changed = False
        interval = timedelta(seconds=t.profile.spec.poll_interval_seconds)
        if t.signal is not None:
            state = self._signals.setdefault(t.ident, SignalState())
            if state.acked_at is None:
                changed = await self._send_signal(t.signal, state)
                if t.ident not in self._targets.get(t.node, {}):
                    return False
                if state.acked_at is None and state.reported_at is None:
                    # Not acknowledged: no count can be trusted yet, so do not poll.
                    self._due[t.ident] = state.next_at or self._clock() + interval
                    return changed
        if t.poll is None and t.error is None:
            self._due[t.ident] = self._clock() + timedelta(days=1)  # signal only: done
            return changed
        before = self._readings.get(t.ident)
        reading = await self._read(t)
        if t.ident not in self._targets.get(t.node, {}):
            return False  # no longer wanted: forgotten, or its profile changed meanwhile
        self._readings[t.ident] = reading
        self._due[t.ident] = reading.started + interval
        if before is None or (before.count, before.error) != (reading.count, reading.error):
            changed = True
        return changed

    async def _send_signal(self, request: Request, state: SignalState) -> bool:
        """One attempt of the drain signal; True when it was acknowledged or is now
        reported as not acknowledged."""
        try:
            status, raw = await self._request(request)
            check_status(status, raw.decode("utf-8", errors="replace"))
        except SourceError as e:
            return signal_failed(state, self._clock(), e.message)
        state.acked_at = self._clock()  # the answer came: anything polled from now is after it
        state.last_error = None
        return True

    async def _read(self, t: Target) -> Reading:
        started = self._clock()
        if t.error is not None:
            return Reading(started, error=t.error)
        assert t.poll is not None
        try:
            status, raw = await self._request(t.poll)
            check_status(status, raw.decode("utf-8", errors="replace"))
            count = parse_answer(t.profile, raw)
            return Reading(started, count=count, lag=answer_lag(t.profile))
        except SourceError as e:
            return Reading(started, error=e)

    # --- HTTP ---

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._connections, keepalive_timeout=30, force_close=False
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"Accept": ACCEPT, "User-Agent": "pitstop-taskpoller"},
                trust_env=False,  # pod addresses: never through a proxy
                auto_decompress=True,
            )
        return self._session

    async def _request(self, request: Request) -> tuple[int, bytes]:
        """(status, body) of one request; SourceError(Unreachable) when there is none."""
        timeout = aiohttp.ClientTimeout(total=request.timeout)
        async with self._semaphore:
            self.requests += 1
            try:
                async with self.session().request(
                    request.method, request.url, timeout=timeout, allow_redirects=False
                ) as answer:
                    raw = await answer.content.read(MAX_ANSWER + 1)
                    if len(raw) > MAX_ANSWER:
                        raise SourceError(UNREACHABLE, f"answer larger than {MAX_ANSWER} bytes")
                    return answer.status, raw
            except TimeoutError:
                raise SourceError(
                    UNREACHABLE,
                    f"{request.method} {request.url}: no answer in {request.timeout:g}s",
                ) from None
            except aiohttp.ClientConnectorError as e:
                code = e.os_error.errno if e.os_error is not None else None
                why = os.strerror(code).lower() if code else str(e)
                raise SourceError(UNREACHABLE, f"{request.method} {request.url}: {why}") from None
            except aiohttp.ClientError as e:
                raise SourceError(
                    UNREACHABLE, f"{request.method} {request.url}: {type(e).__name__}: {e}"
                ) from None
