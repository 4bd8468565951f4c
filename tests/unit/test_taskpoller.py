"""The task poller against small HTTP servers on the loopback (no cluster): counts,
changes, the drain signal retried until acknowledged, unreachable and wrong
sources, the concurrency bound and connection reuse."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pitstop.instances.sources import addressing, errors, profiles, trust
from pitstop.instances.sources.poller import Target, TaskPoller

GAUGE = "# TYPE function_requests_in_flight gauge\nfunction_requests_in_flight {n}\n"


def profile(name: str = "fn", interval: float = 0.1, **spec: Any) -> profiles.Profile:
    spec = {
        "podSelector": {},
        "tasks": {"prometheus": {"port": 9100, "metric": "function_requests_in_flight"}},
        "pollIntervalSeconds": interval,
        "timeoutSeconds": 0.5,
        **spec,
    }
    p = profiles.parse_profile({"metadata": {"name": name, "creationTimestamp": "x"}, "spec": spec})
    assert isinstance(p, profiles.Profile)
    return p


class Runtime:
    """A fake instance: /metrics, /inflight, POST /drain; counts what it sees."""

    def __init__(self) -> None:
        self.inflight = 0
        self.drain_status = 200
        self.drained_at: float | None = None
        self.requests: list[str] = []
        self.peers: set[Any] = set()
        self.delay = 0.0
        self.active = 0
        self.most_active = 0
        self.metric = "function_requests_in_flight"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if request.method == "POST" and request.path == "/drain":
                if self.drain_status == 200:
                    self.drained_at = asyncio.get_running_loop().time()
                return web.Response(status=self.drain_status, text="{}")
            if request.path == "/metrics":
                text = GAUGE.format(n=self.inflight).replace(
                    "function_requests_in_flight", self.metric
                )
                return web.Response(text=text)
            if request.path == "/inflight":
                return web.Response(text=f"{self.inflight}\n")
            return web.Response(status=404)
        finally:
            self.active -= 1


async def serve(runtime: Runtime) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", runtime.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def target(
    port: int,
    key: str = "ns/p",
    p: profiles.Profile | None = None,
    signal: bool = False,
    path: str = "/metrics",
) -> Target:
    p = p or profile()
    base = f"http://127.0.0.1:{port}"
    return Target(
        key=key,
        node="n1",
        profile=p,
        poll=addressing.Request("GET", base + path, p.spec.timeout_seconds),
        signal=addressing.Request("POST", base + "/drain", p.spec.timeout_seconds)
        if signal
        else None,
    )


async def until(what: str, check: Callable[[], Any], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def test_polls_counts_and_reports_changes() -> None:
    async def main() -> None:
        rt = Runtime()
        runner, port = await serve(rt)
        woken: list[str] = []
        poller = TaskPoller(on_change=woken.append)
        try:
            rt.inflight = 3
            t = target(port)
            poller.watch("n1", [t])
            await until("a reading", lambda: poller.reading(t.key, t.profile) is not None)
            first = poller.reading(t.key, t.profile)
            assert first is not None and first.count == 3 and first.error is None
            # The wake-up follows the node's whole pass, just after the reading is kept.
            await until("one wake-up", lambda: woken == ["n1"])
            rt.inflight = 0
            await until("the count to drop", lambda: poller.reading(t.key, t.profile).count == 0)  # type: ignore[union-attr]
            await until("a second wake-up", lambda: woken == ["n1", "n1"])
            await asyncio.sleep(0.35)  # unchanged readings wake nobody
            assert woken == ["n1", "n1"]
            assert len(rt.peers) == 1  # one kept-alive connection for every poll
            assert poller.requests >= 4
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


def test_http_plain_integer_source() -> None:
    async def main() -> None:
        rt = Runtime()
        runner, port = await serve(rt)
        poller = TaskPoller()
        p = profile(tasks={"http": {"port": 9100, "path": "/inflight"}})
        try:
            rt.inflight = 2
            t = target(port, p=p, path="/inflight")
            found = await poller.read_once([t])
            assert found[t.key].count == 2
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


# A Stat as the queue-proxy (knative.dev/serving v0.42.2) served it with 3 requests
# in flight: pod "p", average_concurrent_requests 3.0000000000000004, process_uptime
# 12.0001; bytes that are not UTF-8 (0x99 0xa2 0x91).
KNATIVE_STAT = b"\n\x01p\x11\x01\x00\x00\x00\x00\x00\x08@1\x0b\x99\xa2\x91\x0c\x00(@"


def test_knative_stat_is_read_as_bytes_with_its_lag() -> None:
    async def main() -> None:
        async def stat(_: web.Request) -> web.Response:
            return web.Response(body=KNATIVE_STAT, content_type="application/protobuf")

        app = web.Application()
        app.router.add_get("/metrics", stat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        poller = TaskPoller()
        p = profile(tasks={"knative": {"port": 9090}})
        try:
            t = target(runner.addresses[0][1], p=p)
            found = (await poller.read_once([t]))[t.key]
            assert found.error is None and found.count == 3, found
            assert found.lag == trust.KNATIVE_STAT_LAG
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


def test_drain_signal_first_then_polls_after_its_acknowledgement() -> None:
    async def main() -> None:
        rt = Runtime()
        runner, port = await serve(rt)
        poller = TaskPoller()
        p = profile(drainSignal={"httpPost": {"port": 9100, "path": "/drain"}})
        try:
            t = target(port, p=p, signal=True)
            poller.watch("n1", [t])
            await until("a reading", lambda: poller.reading(t.key, p) is not None)
            assert rt.requests[0] == "POST /drain"
            state = poller.signal_state(t.key, p)
            reading = poller.reading(t.key, p)
            assert state is not None and state.acked_at is not None and reading is not None
            assert reading.started > state.acked_at  # the trust rule can use it
            trusted = trust.polled(
                reading, trust.signal_time("httpPost", marked_at=None, state=state)
            )
            assert not trusted.busy
            await asyncio.sleep(0.3)
            assert rt.requests.count("POST /drain") == 1  # acknowledged: never again
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


def test_unacknowledged_signal_is_retried_then_reported() -> None:
    async def main() -> None:
        rt = Runtime()
        rt.drain_status = 503
        runner, port = await serve(rt)
        woken: list[str] = []
        poller = TaskPoller(on_change=woken.append)
        p = profile(drainSignal={"httpPost": {"port": 9100, "path": "/drain"}})
        try:
            t = target(port, p=p, signal=True)
            poller.watch("n1", [t])
            await until("3 attempts", lambda: rt.requests.count("POST /drain") >= 3)
            state = poller.signal_state(t.key, p)
            assert state is not None and state.acked_at is None
            assert state.last_error is not None and state.last_error.startswith("HTTP 503")
            assert "GET /metrics" not in rt.requests  # no count is trusted yet: none read
            assert trust.polled(
                None, trust.signal_time("httpPost", marked_at=None, state=state)
            ).busy
            rt.drain_status = 200  # the runtime comes round
            await until("the acknowledgement", lambda: state.acked_at is not None)
            await until("a reading", lambda: poller.reading(t.key, p) is not None)
            await until("the repair woken", lambda: woken)
            assert state.reported_at is None
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


def test_a_runtime_that_never_acknowledges_is_reported() -> None:
    async def main() -> None:
        rt = Runtime()
        rt.drain_status = 404
        runner, port = await serve(rt)
        poller = TaskPoller()
        p = profile(drainSignal={"httpPost": {"port": 9100, "path": "/drain"}})
        try:
            t = target(port, p=p, signal=True)
            poller.watch("n1", [t])
            state = await _state(poller, t)
            await until("the report", lambda: state.reported_at is not None, within=10)
            assert state.attempts == trust.SIGNAL_REPORT_AFTER
            await until("a reading after the report", lambda: poller.reading(t.key, p) is not None)
            reading = poller.reading(t.key, p)
            assert reading is not None and reading.started > state.reported_at
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


async def _state(poller: TaskPoller, t: Target) -> trust.SignalState:
    await until("a signal state", lambda: poller.signal_state(t.key, t.profile) is not None)
    state = poller.signal_state(t.key, t.profile)
    assert state is not None
    return state


def test_unreachable_instance_is_an_error_not_zero() -> None:
    async def main() -> None:
        rt = Runtime()
        runner, port = await serve(rt)
        await runner.cleanup()  # nothing listens there any more
        poller = TaskPoller()
        try:
            found = await poller.read_once([target(port)])
            reading = found["ns/p"]
            assert reading.count is None and reading.error is not None
            assert reading.error.kind == errors.UNREACHABLE
            assert "connection refused" in reading.error.message
            assert trust.polled(reading, reading.started.replace(year=2000)).busy
        finally:
            await poller.close()

    run(main)


def test_slow_instance_times_out() -> None:
    async def main() -> None:
        rt = Runtime()
        rt.delay = 1.0
        runner, port = await serve(rt)
        poller = TaskPoller()
        p = profile(timeoutSeconds=0.2)
        try:
            found = await poller.read_once([target(port, p=p)])
            error = found["ns/p"].error
            assert error is not None and "no answer in 0.2s" in error.message
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


def test_wrong_metric_name() -> None:
    async def main() -> None:
        rt = Runtime()
        rt.metric = "function_inflight"
        runner, port = await serve(rt)
        poller = TaskPoller()
        try:
            error = (await poller.read_once([target(port)]))["ns/p"].error
            assert error is not None and error.kind == errors.INVALID
            assert error.message == (
                "metric function_requests_in_flight not found"
                " (the instance exposes: function_inflight)"
            )
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


def test_http_error_status() -> None:
    async def main() -> None:
        rt = Runtime()
        runner, port = await serve(rt)
        poller = TaskPoller()
        try:
            error = (await poller.read_once([target(port, path="/nothing")]))["ns/p"].error
            assert error is not None and error.message == "HTTP 404"
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


def test_requests_in_flight_are_bounded() -> None:
    async def main() -> None:
        rt = Runtime()
        rt.delay = 0.1
        runner, port = await serve(rt)
        poller = TaskPoller(concurrency=2)
        try:
            targets = [target(port, key=f"ns/p{i}") for i in range(8)]
            found = await poller.read_once(targets)
            assert all(r.error is None for r in found.values())
            assert rt.most_active == 2
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


def test_profile_change_starts_from_nothing_and_forget_stops() -> None:
    async def main() -> None:
        rt = Runtime()
        runner, port = await serve(rt)
        poller = TaskPoller()
        try:
            old = target(port)
            poller.watch("n1", [old])
            await until("a reading", lambda: poller.reading(old.key, old.profile) is not None)
            changed = target(port, p=profile(timeoutSeconds=0.4))
            assert changed.profile.fingerprint != old.profile.fingerprint
            poller.watch("n1", [changed])
            assert poller.reading(old.key, old.profile) is None  # dropped at once
            await until("a new reading", lambda: poller.reading(changed.key, changed.profile))
            poller.forget("n1")
            assert poller.nodes() == [] and poller.reading(changed.key, changed.profile) is None
            seen = len(rt.requests)
            await asyncio.sleep(0.3)
            assert len(rt.requests) == seen  # no more polls
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)


def test_unaddressable_target_reports_its_error() -> None:
    async def main() -> None:
        poller = TaskPoller()
        try:
            error = errors.SourceError(
                errors.INVALID, "the pod has no container port named 'admin'"
            )
            t = Target(key="ns/p", node="n1", profile=profile(), error=error)
            poller.watch("n1", [t])
            await until("a reading", lambda: poller.reading(t.key, t.profile) is not None)
            assert poller.reading(t.key, t.profile).error == error  # type: ignore[union-attr]
            assert poller.requests == 0
        finally:
            await poller.close()

    run(main)


def test_failing_counts_instances_whose_last_poll_failed_by_profile() -> None:
    """pitstop_task_source_failing_instances: a source that stops answering counts
    once its poll fails, and no more once it answers again."""

    async def main() -> None:
        rt = Runtime()
        runner, port = await serve(rt)
        gone, dead_port = await serve(Runtime())
        await gone.cleanup()  # nothing listens there any more
        poller = TaskPoller()
        try:
            fn, other = profile("fn"), profile("other")
            up, down = target(port, "ns/up", fn), target(dead_port, "ns/down", fn)
            third = dataclasses.replace(target(port, "ns/third", other), node="n2")
            poller.watch("n1", [up, down])
            poller.watch("n2", [third])
            await until(
                "three readings",
                lambda: all(poller.reading(t.key, t.profile) for t in (up, down, third)),
            )
            assert poller.failing() == {("fn",): 1, ("other",): 0}
            poller.forget("n1")
            assert poller.failing() == {("other",): 0}
        finally:
            await poller.close()
            await runner.cleanup()

    run(main)
