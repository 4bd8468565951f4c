"""A load generator that routes like a FaaS router, and is the judge of its own
requests.

It keeps the ready endpoints of one Service from its EndpointSlices (label
`kubernetes.io/service-name`), sends each request to one of them round robin, at
a fixed rate (open loop) or a fixed concurrency (closed loop), bounded in count
and in time (it always stops by itself), and records every request: the target
pod (the endpoint's targetRef), when it was sent and ended, and its outcome:

- `ok`: a 200 whose body ends with the function's end marker (`END\\n`);
- `failed`, by cause: `refused` (connection refused), `connect` (another connect
  error), `reset` (connection reset), `disconnected` (closed before an answer),
  `timeout`, `http_5xx`, `http_4xx`, `other: <error>`;
- `cut`: the answer started (200) but the connection ended before the end marker.

"Sent after leaving" is judged from the generator's own record, as a router
would see it: a request whose send time lies after the moment the generator
itself saw its target leave the ready set (and before it came back). A correct
router never does that, so it must be 0; it catches a router that picks from a
stale view. Requests sent in the watch lag (after the EndpointSlice changed in
the API, before the watch delivered it) are not counted as such: the generator
cannot see them, the function must serve them, and `cut`/`failed` judge that.
Only endpoints in `LoadConfig.allowed_networks` (loopback unless the caller adds
the pod network of the project's own nodes) get requests; a pick outside them
is counted as `blocked` and is a defect of the setup (e.g. kwok pod IPs, which
route nowhere). The history keeps each slice's `endpoints.kubernetes.io/last-change-trigger-time`
beside the moment the generator saw the change, for measuring that lag.

Ready means `conditions.ready` true (nil counts as true, as the API documents)
and not `terminating`: `serving` endpoints that are terminating get no requests.

Run `python -m tests.e2e.loadgen --help`. Synchronous callers (e2e tests, the
demo, benchmarks) use `BackgroundLoad`. Tests route to loopback processes with
`ReadySet.set_endpoints` (EndpointSlices cannot hold loopback addresses);
`SliceWatch` follows a real Service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import itertools
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

END_MARKER = b"END\n"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
SERVICE_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, order=True)
class Endpoint:
    pod: str
    address: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class Change:
    """The generator saw `pod` join or leave its ready set at `at` (run clock)."""

    at: float
    pod: str
    event: str  # "joined" | "left"
    trigger_time: str | None = None  # the slice's last-change-trigger-time, if any


class ReadySet:
    """The router's view: the ready endpoints of one Service, by pod.

    Fed with EndpointSlice objects (as JSON dicts, the API's camelCase) by
    `apply`/`replace`, or directly with `set_endpoints`. Every change of the
    union over all slices is kept in `history` with the run clock `clock()`.
    """

    def __init__(self, port_name: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.port_name = port_name
        self.clock = clock
        self._slices: dict[str, dict[str, Endpoint]] = {}
        self._ready: dict[str, Endpoint] = {}
        self._order: list[str] = []
        self._next = 0
        self.history: list[Change] = []

    def __contains__(self, pod: object) -> bool:
        return pod in self._ready

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def pods(self) -> list[str]:
        return list(self._order)

    def pick(self) -> Endpoint | None:
        """Round robin over the ready pods (in name order)."""
        if not self._order:
            return None
        self._next %= len(self._order)
        pod = self._order[self._next]
        self._next += 1
        return self._ready[pod]

    # --- feeding it ---

    def set_endpoints(self, endpoints: Iterable[Endpoint], trigger_time: str | None = None) -> None:
        """Replace everything by these endpoints (tests: loopback processes)."""
        self._slices = {"direct": {e.pod: e for e in endpoints}}
        self._recompute(trigger_time)

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) of an EndpointSlice."""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name"))
        if event_type == "DELETED":
            self._slices.pop(name, None)
        else:
            self._slices[name] = self._ready_in(obj)
        self._recompute((meta.get("annotations") or {}).get(TRIGGER_TIME))

    def replace(self, slices: Iterable[Mapping[str, Any]]) -> None:
        """A full list (the watch's start or re-list after 410)."""
        self._slices = {}
        trigger: str | None = None
        for obj in slices:
            meta = obj.get("metadata") or {}
            self._slices[str(meta.get("name"))] = self._ready_in(obj)
            trigger = max(trigger or "", (meta.get("annotations") or {}).get(TRIGGER_TIME) or "")
        self._recompute(trigger or None)

    def _ready_in(self, obj: Mapping[str, Any]) -> dict[str, Endpoint]:
        port = self._port(obj.get("ports") or [])
        out: dict[str, Endpoint] = {}
        if port is None:
            return out
        for ep in obj.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            conditions = ep.get("conditions") or {}
            addresses = ep.get("addresses") or []
            if ref.get("kind", "Pod") != "Pod" or not ref.get("name") or not addresses:
                continue
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            out[ref["name"]] = Endpoint(ref["name"], addresses[0], port)
        return out

    def _port(self, ports: list[Mapping[str, Any]]) -> int | None:
        for p in ports:
            if p.get("protocol", "TCP") != "TCP" or p.get("port") is None:
                continue
            if self.port_name is None or p.get("name") == self.port_name:
                return int(p["port"])
        return None

    def _recompute(self, trigger_time: str | None) -> None:
        now = self.clock()
        ready: dict[str, Endpoint] = {}
        for endpoints in self._slices.values():
            for pod, ep in endpoints.items():
                ready.setdefault(pod, ep)
        for pod in sorted(self._ready.keys() - ready.keys()):
            self.history.append(Change(now, pod, "left", trigger_time))
        for pod in sorted(ready.keys() - self._ready.keys()):
            self.history.append(Change(now, pod, "joined", trigger_time))
        self._ready = ready
        self._order = sorted(ready)


class SliceWatch:
    """Feeds a ReadySet from the EndpointSlices of one Service, from a thread
    (the official client is synchronous) into the ReadySet's event loop."""

    def __init__(
        self,
        api: Any,  # kubernetes.client.ApiClient
        namespace: str,
        service: str,
        ready: ReadySet,
        loop: asyncio.AbstractEventLoop,
    ):
        from kubernetes import client

        self.discovery = client.DiscoveryV1Api(api)
        self.namespace = namespace
        self.selector = f"{SERVICE_LABEL}={service}"
        self.ready = ready
        self.loop = loop
        self.synced = threading.Event()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"slices-{service}", daemon=True)

    def start(self) -> SliceWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def wait_synced(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while not self.synced.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no EndpointSlice list within {within}s: {self.errors[-3:]}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0)  # let the queued replace() run

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            try:
                answer = self.discovery.list_namespaced_endpoint_slice(
                    self.namespace, label_selector=self.selector, _preload_content=False
                )
                listed = json.loads(answer.data)
                self.loop.call_soon_threadsafe(self.ready.replace, listed.get("items") or [])
                self.synced.set()
                rv = listed["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    w = watch.Watch()
                    for event in w.stream(
                        self.discovery.list_namespaced_endpoint_slice,
                        self.namespace,
                        label_selector=self.selector,
                        resource_version=rv,
                        allow_watch_bookmarks=True,
                        timeout_seconds=2,  # short: stop() waits for the stream to end
                    ):
                        # The raw JSON: the client's deserialize=False path breaks on
                        # ERROR events (it looks for raw_object), so take it from here.
                        obj = event["raw_object"]
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self.loop.call_soon_threadsafe(self.ready.apply, event["type"], obj)
                        if self._stop.is_set():
                            w.stop()
            except ApiException as e:
                if e.status != 410:  # 410 Gone: re-list
                    self.errors.append(f"{e.status}: {e.reason}")
                    self._stop.wait(0.5)
            except Exception as e:  # a hiccup must not end the router
                self.errors.append(f"{type(e).__name__}: {e}")
                self._stop.wait(0.5)


@dataclass
class Record:
    """One request, as the generator saw it. Times are seconds on the run clock."""

    id: int
    pod: str
    address: str
    ms: int
    sent: float
    ready_at_send: bool
    ended: float = 0.0
    outcome: str = ""  # ok | failed | cut
    cause: str = ""  # for failed and cut
    status: int | None = None
    answered_by: str | None = None  # the answer's X-Pod header
    left_while_in_flight: bool = False


@dataclass
class LoadConfig:
    rate: float | None = None  # requests per second (open loop) ...
    concurrency: int | None = None  # ... or this many requests at all times (closed loop)
    count: int = 1000  # at most this many requests
    duration: float = 60.0  # and no new request after this many seconds
    ms: tuple[int, int] = (100, 100)  # each request's work, uniform in [lo, hi] ms
    path: str = "/"
    timeout: float | None = None  # per request; default: the longest ms + 10 s
    keepalive: bool = True  # reuse connections, as a router's pool does
    max_in_flight: int = 1000  # open loop: no more than this many at once (then: overload)
    seed: int = 1
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """Send only to endpoints in these networks (add the pod network of the project's
    own nodes); another address is never a target: it is counted as `blocked`."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        init=False, repr=False, default_factory=list
    )

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("give exactly one of rate and concurrency")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be above 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.count < 1 or not 0 < self.duration < math.inf:
            raise ValueError("count and duration bound the run: both must be positive and finite")
        if not 0 <= self.ms[0] <= self.ms[1]:
            raise ValueError("ms: want 0 <= lo <= hi")
        self.networks = [ipaddress.ip_network(n) for n in self.allowed_networks]

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in n for n in self.networks)

    @property
    def request_timeout(self) -> float:
        return self.timeout if self.timeout is not None else self.ms[1] / 1000 + 10


class LoadGenerator:
    """Sends requests to the ready set until `count` or `duration` is reached,
    then waits for the requests still in flight (each bounded by its timeout)."""

    def __init__(self, ready: ReadySet, config: LoadConfig):
        self.ready = ready
        self.config = config
        self.records: list[Record] = []
        self.no_endpoint = 0
        self.blocked = 0
        self.overload = 0
        self._rand = random.Random(config.seed)
        self._ids = itertools.count(1)
        self._in_flight: dict[int, Record] = {}
        self._stop = asyncio.Event()
        self._history_seen = 0
        self.t0 = ready.clock()
        self.started_unix = time.time()

    def now(self) -> float:
        return self.ready.clock() - self.t0

    def stop(self) -> None:
        """No new requests from now on (those in flight still end)."""
        self._stop.set()

    def in_flight(self, pod: str | None = None) -> int:
        return sum(1 for r in self._in_flight.values() if pod is None or r.pod == pod)

    @property
    def sent(self) -> int:
        return len(self.records) + len(self._in_flight)

    async def run(self) -> Summary:
        cfg = self.config
        connector = aiohttp.TCPConnector(limit=0, force_close=not cfg.keepalive)
        timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            deadline = self.ready.clock() + cfg.duration
            if cfg.rate is not None:
                await self._open_loop(session, tasks, deadline, cfg.rate)
            else:
                workers = [
                    asyncio.create_task(self._worker(session, deadline))
                    for _ in range(cfg.concurrency or 1)
                ]
                await asyncio.gather(*workers)
            if tasks:
                await asyncio.wait(tasks, timeout=cfg.request_timeout + 5)
        return self.summary()

    def _more(self, deadline: float) -> bool:
        return (
            not self._stop.is_set()
            and self.sent < self.config.count
            and self.ready.clock() < deadline
        )

    async def _open_loop(
        self,
        session: aiohttp.ClientSession,
        tasks: set[asyncio.Task[None]],
        deadline: float,
        rate: float,
    ) -> None:
        start = self.ready.clock()
        for i in itertools.count():
            if not self._more(deadline):
                return
            delay = start + i / rate - self.ready.clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if not self._more(deadline):
                    return
            if len(self._in_flight) >= self.config.max_in_flight:
                self.overload += 1
                continue
            target = self.ready.pick()
            if target is None:
                self.no_endpoint += 1
                continue
            if not self.config.allows(target.address):
                self.blocked += 1
                continue
            task = asyncio.create_task(self._request(session, target))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _worker(self, session: aiohttp.ClientSession, deadline: float) -> None:
        while self._more(deadline):
            target = self.ready.pick()
            if target is None or not self.config.allows(target.address):
                if target is None:
                    self.no_endpoint += 1  # each 50 ms without a ready endpoint counts once
                else:
                    self.blocked += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.05)
                continue
            await self._request(session, target)

    async def _request(self, session: aiohttp.ClientSession, target: Endpoint) -> None:
        lo, hi = self.config.ms
        ms = self._rand.randint(lo, hi)
        rec = Record(
            id=next(self._ids),
            pod=target.pod,
            address=f"{target.address}:{target.port}",
            ms=ms,
            sent=self.now(),
            ready_at_send=target.pod in self.ready,
        )
        self._in_flight[rec.id] = rec
        body = b""
        got_answer = False
        try:
            async with session.get(f"{target.url}{self.config.path}", params={"ms": ms}) as resp:
                got_answer = True
                rec.status = resp.status
                rec.answered_by = resp.headers.get("X-Pod")
                if resp.status >= 500:
                    rec.outcome, rec.cause = "failed", "http_5xx"
                elif resp.status != 200:
                    rec.outcome, rec.cause = "failed", "http_4xx" if resp.status >= 400 else "other"
                async for chunk in resp.content.iter_any():
                    body += chunk
        except aiohttp.ClientConnectorError as e:
            refused = getattr(e, "os_error", None)
            refused_errno = getattr(refused, "errno", None) == errno.ECONNREFUSED
            rec.outcome, rec.cause = "failed", "refused" if refused_errno else "connect"
        except TimeoutError:
            rec.outcome, rec.cause = "failed", "timeout"
        except (
            aiohttp.ClientPayloadError,
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError,
        ) as e:
            if not got_answer:
                reset = isinstance(e, aiohttp.ClientOSError) and e.errno == errno.ECONNRESET
                rec.outcome, rec.cause = "failed", "reset" if reset else "disconnected"
            elif not rec.outcome:
                rec.cause = type(e).__name__
        except aiohttp.ClientError as e:
            rec.outcome, rec.cause = "failed", f"other: {type(e).__name__}"
        finally:
            rec.ended = self.now()
            del self._in_flight[rec.id]
            self.records.append(rec)
        if not rec.outcome:  # a 200: complete only with the end marker
            if body.endswith(END_MARKER):
                rec.outcome, rec.cause = "ok", ""
            else:
                rec.outcome, rec.cause = "cut", rec.cause or "no_end_marker"

    def summary(self) -> Summary:
        return summarize(
            self.records,
            self.ready.history,
            t0=self.t0,
            no_endpoint=self.no_endpoint,
            blocked=self.blocked,
            overload=self.overload,
            started_unix=self.started_unix,
        )


def _nearest_rank(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


@dataclass
class Summary:
    sent: int
    ok: int
    failed: dict[str, int]
    cut: int
    sent_after_leaving: int
    wrong_pod: int
    no_endpoint: int
    blocked: int
    """picks not sent: the endpoint is outside LoadConfig.allowed_networks"""
    overload: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    duration_s: float
    per_pod: dict[str, dict[str, int]]
    left: dict[str, list[float]]
    """pod → the run times the generator saw it leave the ready set"""
    in_flight_at_leave: dict[str, int]
    """pod → requests to it that were in flight when it left (what a drain waits for)"""
    started_unix: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def defects(self) -> list[str]:
        """What hurt a user; empty for a clean run."""
        out = []
        if self.failed_total:
            out.append(f"{self.failed_total} failed {dict(sorted(self.failed.items()))}")
        if self.cut:
            out.append(f"{self.cut} cut mid-flight")
        if self.sent_after_leaving:
            out.append(f"{self.sent_after_leaving} sent after their pod left the ready endpoints")
        if self.wrong_pod:
            out.append(f"{self.wrong_pod} answered by another pod than the target")
        if self.blocked:
            out.append(f"{self.blocked} not sent: their endpoint is outside the allowed networks")
        return out

    @property
    def clean(self) -> bool:
        return not self.defects()

    def text(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f} ms"

        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "none"
        lines = [
            f"requests sent                 {self.sent} in {self.duration_s:.1f} s",
            f"ok                            {self.ok}",
            f"failed                        {self.failed_total} ({failed})",
            f"cut mid-flight                {self.cut}",
            f"sent after leaving ready set  {self.sent_after_leaving}",
            f"answered by another pod       {self.wrong_pod}",
            f"no ready endpoint / overload  {self.no_endpoint} / {self.overload}",
            f"blocked (not allowed network) {self.blocked}",
            f"latency of ok p50 / p99       {ms(self.latency_p50_ms)} / {ms(self.latency_p99_ms)}",
        ]
        for pod, n in sorted(self.in_flight_at_leave.items()):
            lines.append(f"left the ready set: {pod} with {n} request(s) in flight")
        verdict = "clean" if self.clean else "; ".join(self.defects())
        lines.append(f"verdict                       {verdict}")
        return "\n".join(lines)

    def to_json(self, with_records: bool = True) -> dict[str, Any]:
        out = asdict(self)
        out["failed_total"] = self.failed_total
        out["defects"] = self.defects()
        if not with_records:
            out.pop("records")
            out.pop("history")
        return out


def summarize(
    records: list[Record],
    history: list[Change],
    *,
    t0: float = 0.0,
    no_endpoint: int = 0,
    blocked: int = 0,
    overload: int = 0,
    started_unix: float = 0.0,
) -> Summary:
    """The judge: everything here comes from the generator's own record."""
    # Each pod's intervals outside the ready set, from what the generator saw.
    out_since: dict[str, float | None] = {}
    outside: dict[str, list[tuple[float, float]]] = {}
    left: dict[str, list[float]] = {}
    for ch in history:
        at = ch.at - t0
        if ch.event == "left":
            out_since[ch.pod] = at
            left.setdefault(ch.pod, []).append(at)
        else:
            since = out_since.pop(ch.pod, None)
            if since is not None:
                outside.setdefault(ch.pod, []).append((since, at))
    for pod, since in out_since.items():
        if since is not None:
            outside.setdefault(pod, []).append((since, math.inf))

    failed: Counter[str] = Counter()
    per_pod: dict[str, Counter[str]] = {}
    in_flight_at_leave: Counter[str] = Counter()
    latencies: list[float] = []
    ok = cut = after = wrong = 0
    for r in records:
        per_pod.setdefault(r.pod, Counter())[r.outcome] += 1
        if any(a < r.sent < b for a, b in outside.get(r.pod, [])) or not r.ready_at_send:
            after += 1
        if any(r.sent < at < r.ended for at in left.get(r.pod, [])):
            r.left_while_in_flight = True
            in_flight_at_leave[r.pod] += 1
        if r.answered_by is not None and r.answered_by != r.pod:
            wrong += 1
        if r.outcome == "ok":
            ok += 1
            latencies.append((r.ended - r.sent) * 1000)
        elif r.outcome == "cut":
            cut += 1
        else:
            failed[r.cause or "other"] += 1
    latencies.sort()
    ends = [r.ended for r in records]
    return Summary(
        sent=len(records),
        ok=ok,
        failed=dict(failed),
        cut=cut,
        sent_after_leaving=after,
        wrong_pod=wrong,
        no_endpoint=no_endpoint,
        blocked=blocked,
        overload=overload,
        latency_p50_ms=_nearest_rank(latencies, 0.50),
        latency_p99_ms=_nearest_rank(latencies, 0.99),
        duration_s=max(ends, default=0.0),
        per_pod={p: dict(c) for p, c in sorted(per_pod.items())},
        left=left,
        in_flight_at_leave=dict(in_flight_at_leave),
        started_unix=started_unix,
        records=[asdict(r) for r in records],
        history=[{**asdict(ch), "at": ch.at - t0} for ch in history],
    )


class BackgroundLoad:
    """The generator and its watch on their own event loop in a thread, for
    synchronous callers (e2e tests, the demo, benchmarks)::

        cfg = LoadConfig(rate=50, count=100_000, duration=300,
                         allowed_networks=("10.244.0.0/24",))  # the local nodes' pods
        with BackgroundLoad(cfg, api=cluster.api, namespace=ns, service="pitstop-function",
                            port_name="http") as load:
            ...  # repair the node
        assert load.summary.clean, load.summary.text()

    `stop()` (or leaving the block) sends no new request, waits for those in
    flight and returns the summary; the run also ends by itself at its bounds.
    """

    def __init__(
        self,
        config: LoadConfig,
        *,
        api: Any = None,  # kubernetes.client.ApiClient, with service
        namespace: str = "default",
        service: str | None = None,
        port_name: str | None = None,
        endpoints: Iterable[Endpoint] = (),
    ):
        self.config = config
        self.api = api
        self.namespace = namespace
        self.service = service
        self.port_name = port_name
        self.endpoints = list(endpoints)
        if not self.endpoints and (service is None or api is None):
            raise ValueError("give endpoints, or a service and an api client")
        self.summary: Summary | None = None
        self.generator: LoadGenerator | None = None
        self.watch: SliceWatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="loadgen", daemon=True)

    def start(self, within: float = 30.0) -> BackgroundLoad:
        """Returns once the generator is sending (the watch has listed)."""
        self._thread.start()
        if not self._started.wait(within):
            raise TimeoutError(f"the load generator did not start within {within}s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> Summary:
        loop, gen = self._loop, self.generator
        if loop is not None and gen is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop may just have ended
                loop.call_soon_threadsafe(gen.stop)
        self._thread.join(timeout=self.config.request_timeout + 30)
        if self._error is not None:
            raise self._error
        if self.summary is None:
            raise RuntimeError("the load generator did not end")
        return self.summary

    def wait(self, timeout: float | None = None) -> Summary | None:
        """Waits for the run to end at its own bounds; the summary, or None if still running."""
        self._thread.join(timeout)
        return self.summary

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            self._error = e
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready = ReadySet(port_name=self.port_name)
        if self.endpoints:
            ready.set_endpoints(self.endpoints)
        else:
            assert self.service is not None
            self.watch = SliceWatch(self.api, self.namespace, self.service, ready, self._loop)
            self.watch.start()
        try:
            if self.watch is not None:
                await self.watch.wait_synced()
            self.generator = LoadGenerator(ready, self.config)
            run = asyncio.create_task(self.generator.run())
            self._started.set()
            self.summary = await run
        finally:
            if self.watch is not None:
                await asyncio.to_thread(self.watch.stop)


# --- command line ---


def _endpoint(value: str) -> Endpoint:
    pod, _, hostport = value.partition("=")
    host, _, port = hostport.rpartition(":")
    if not pod or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: want POD=HOST:PORT")
    return Endpoint(pod, host.strip("[]"), int(port))


def _ms(value: str) -> tuple[int, int]:
    lo, _, hi = value.partition(":")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: want N or LO:HI") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.e2e.loadgen",
        description="Send function requests to the ready endpoints of a Service, routed by "
        "its EndpointSlices as a FaaS router does, and judge every request.",
    )
    target = p.add_argument_group("where to send")
    target.add_argument("--kubeconfig", help="kubeconfig of the cluster (with --service)")
    target.add_argument("-n", "--namespace", default="default")
    target.add_argument("--service", help="route to the ready endpoints of this Service")
    target.add_argument("--port-name", help="the EndpointSlice port to use (default: the first)")
    target.add_argument(
        "--endpoint",
        type=_endpoint,
        action="append",
        default=[],
        metavar="POD=HOST:PORT",
        help="a fixed endpoint instead of a Service (repeatable; loopback tests)",
    )
    load = p.add_argument_group("how much (the run always ends by itself)")
    mode = load.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=float, help="requests per second (open loop)")
    mode.add_argument("--concurrency", type=int, help="requests in flight at all times")
    load.add_argument("--count", type=int, default=1000, help="at most this many (1000)")
    load.add_argument("--duration", type=float, default=60.0, help="seconds of sending (60)")
    load.add_argument("--ms", type=_ms, default=(100, 100), help="work per request: N or LO:HI")
    load.add_argument("--timeout", type=float, help="per request (default: max ms + 10 s)")
    load.add_argument("--no-keepalive", action="store_true", help="a new connection each time")
    target.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="also send to endpoints in this network, e.g. the local nodes' pod network "
        "(repeatable; loopback is always allowed, nothing else is by default)",
    )
    p.add_argument("--json", metavar="FILE", help="write the summary and every record here")
    return p


async def _run(args: argparse.Namespace) -> Summary | None:
    cfg = LoadConfig(
        rate=args.rate,
        concurrency=args.concurrency,
        count=args.count,
        duration=args.duration,
        ms=args.ms,
        timeout=args.timeout,
        keepalive=not args.no_keepalive,
        allowed_networks=("127.0.0.0/8", "::1/128", *args.allow_network),
    )
    ready = ReadySet(port_name=args.port_name)
    watch: SliceWatch | None = None
    if args.endpoint:
        ready.set_endpoints(args.endpoint)
    elif args.service:
        from kubernetes import config as kubeconfig

        api = kubeconfig.new_client_from_config(config_file=args.kubeconfig)
        watch = SliceWatch(api, args.namespace, args.service, ready, asyncio.get_running_loop())
        watch.start()
        await watch.wait_synced()
    else:
        return None
    try:
        return await LoadGenerator(ready, cfg).run()
    finally:
        if watch is not None:
            await asyncio.to_thread(watch.stop)


def main(argv: list[str] | None = None) -> int:
    """0: every request ok; 1: a defect (failed, cut, sent after leaving); 2: bad use."""
    args = parser().parse_args(argv)
    try:
        summary = asyncio.run(_run(args))
    except ValueError as e:
        print(f"loadgen: {e}", file=sys.stderr)
        return 2
    if summary is None:
        print("loadgen: give --service or --endpoint", file=sys.stderr)
        return 2
    print(summary.text())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary.to_json(), f, indent=1)
    return 0 if summary.clean else 1


if __name__ == "__main__":
    sys.exit(main())
