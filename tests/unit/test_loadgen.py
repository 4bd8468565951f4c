"""The load generator's routing and judging, without a cluster: EndpointSlice
updates are fed by hand, and the requests go to the project's function runtime
(function/, built here) running as processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.loadgen import (
    TRIGGER_TIME,
    BackgroundLoad,
    Change,
    Endpoint,
    LoadConfig,
    LoadGenerator,
    ReadySet,
    Record,
    Summary,
    main,
    summarize,
)
from tests.unit.function_proc import FunctionProcess

REPO = Path(__file__).resolve().parents[2]
Start = Callable[..., FunctionProcess]


# --- the ready set, from EndpointSlices ---


def eps(
    name: str, *endpoints: dict[str, Any], port: int = 8080, trigger: str = ""
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {TRIGGER_TIME: trigger} if trigger else {}},
        "ports": [{"name": "metrics", "port": 9100}, {"name": "http", "port": port}],
        "endpoints": list(endpoints),
    }


def ep(pod: str, ip: str, **conditions: bool | None) -> dict[str, Any]:
    return {
        "addresses": [ip],
        "conditions": conditions,
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "faas"},
    }


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_only_ready_endpoints_are_routed() -> None:
    ready = ReadySet(port_name="http", clock=Clock())
    ready.replace(
        [
            eps(
                "fn-abc",
                ep("a", "10.244.0.5", ready=True, serving=True, terminating=False),
                ep("b", "10.244.0.6", ready=False, serving=False),  # not ready (gate off)
                ep("c", "10.244.0.7", ready=False, serving=True, terminating=True),
                ep("d", "10.244.0.8"),  # no conditions: ready is nil, which means ready
                ep("e", "10.244.0.9", ready=True, terminating=True),  # never routed
            )
        ]
    )
    assert ready.pods == ["a", "d"]
    assert ready.pick() == Endpoint("a", "10.244.0.5", 8080)  # the named port, not the first


def test_round_robin_over_the_union_of_slices() -> None:
    ready = ReadySet(clock=Clock())
    ready.apply(
        "ADDED", eps("s1", ep("a", "10.0.0.1", ready=True), ep("b", "10.0.0.2", ready=True))
    )
    # the same pod in two slices (the controller moving it) is routed once
    ready.apply(
        "ADDED", eps("s2", ep("b", "10.0.0.2", ready=True), ep("c", "10.0.0.3", ready=True))
    )
    assert ready.pick() is not None and ready.pods == ["a", "b", "c"]
    picks = [e.pod for e in (ready.pick(), ready.pick(), ready.pick(), ready.pick()) if e]
    assert picks == ["b", "c", "a", "b"]
    ready.apply("DELETED", eps("s1"))
    assert ready.pods == ["b", "c"]
    assert [c.event for c in ready.history if c.pod == "a"] == ["joined", "left"]
    assert not [c for c in ready.history if c.pod == "b" and c.event == "left"]


def test_history_records_when_the_generator_saw_a_pod_leave() -> None:
    clock = Clock()
    ready = ReadySet(port_name="http", clock=clock)
    ready.apply(
        "ADDED", eps("s1", ep("a", "10.0.0.1", ready=True), ep("b", "10.0.0.2", ready=True))
    )
    clock.t = 103.5
    ready.apply(
        "MODIFIED",
        eps(
            "s1",
            ep("a", "10.0.0.1", ready=False, serving=True),
            ep("b", "10.0.0.2", ready=True),
            trigger="2026-12-02T10:00:03Z",
        ),
    )
    assert ready.history[-1] == Change(103.5, "a", "left", "2026-12-02T10:00:03Z")
    assert "a" not in ready and "b" in ready
    assert ready.pick() == Endpoint("b", "10.0.0.2", 8080)


def record(pod: str, sent: float, ended: float, outcome: str = "ok", **kw: Any) -> Record:
    return Record(
        id=1,
        pod=pod,
        address="x",
        ms=1,
        sent=sent,
        ready_at_send=True,
        ended=ended,
        outcome=outcome,
        answered_by=kw.pop("answered_by", pod),
        **kw,
    )


def test_the_judge_counts_requests_sent_after_their_pod_left() -> None:
    history = [
        Change(0.0, "a", "joined"),
        Change(0.0, "b", "joined"),
        Change(5.0, "a", "left"),
        Change(9.0, "a", "joined"),
    ]
    records = [
        record("a", 1.0, 6.0),  # in flight when it left: fine, and counted as such
        record("a", 6.0, 6.5),  # sent while it was out: a defect
        record("a", 9.5, 9.6),  # back in the ready set: fine
        record("b", 6.0, 7.0, "cut", cause="ClientPayloadError"),
        record("b", 7.0, 7.1, "failed", cause="refused"),
        record("b", 8.0, 8.1, answered_by="c"),  # misrouted
    ]
    s = summarize(records, history)
    assert (s.sent, s.ok, s.cut, s.failed, s.sent_after_leaving, s.wrong_pod) == (
        6,
        4,
        1,
        {"refused": 1},
        1,
        1,
    )
    assert s.in_flight_at_leave == {"a": 1} and s.left == {"a": [5.0]}
    assert not s.clean and len(s.defects()) == 4
    assert s.per_pod["b"] == {"cut": 1, "failed": 1, "ok": 1}
    assert json.loads(json.dumps(s.to_json()))["defects"] == s.defects()


def test_config_bounds_every_run() -> None:
    for bad in (
        {},
        {"rate": 1.0, "concurrency": 1},
        {"rate": 0.0},
        {"rate": 1.0, "duration": float("inf")},
        {"concurrency": 1, "count": 0},
        {"concurrency": 1, "ms": (5, 1)},
    ):
        with pytest.raises(ValueError):
            LoadConfig(**bad)


# --- against the real runtime on loopback ---


def run_load(ready: ReadySet, **cfg: Any) -> Summary:
    return asyncio.run(LoadGenerator(ready, LoadConfig(**cfg)).run())


def test_a_clean_run_spreads_over_the_ready_pods(functions: Start) -> None:
    a, b = functions("fn-a"), functions("fn-b")
    ready = ReadySet()
    ready.set_endpoints([a.endpoint, b.endpoint])
    s = run_load(ready, concurrency=6, count=60, ms=(20, 60))
    assert s.clean, s.text()
    assert s.sent == s.ok == 60
    assert s.per_pod == {"fn-a": {"ok": 30}, "fn-b": {"ok": 30}}
    assert s.latency_p50_ms is not None and 20 <= s.latency_p50_ms < 1000


def test_open_loop_rate_stops_at_its_duration(functions: Start) -> None:
    a = functions("fn-a")
    ready = ReadySet()
    ready.set_endpoints([a.endpoint])
    s = run_load(ready, rate=50, count=10_000, duration=1.0, ms=(10, 10))
    # At most a second's worth of the 10,000 asked for: it stopped at its duration
    # (how long the run took on this machine is not what is tested).
    assert 30 <= s.sent <= 55 and s.clean, s.text()


def server_in_flight(fp: FunctionProcess) -> int:
    with urllib.request.urlopen(fp.admin + "/inflight", timeout=5) as r:
        return int(r.read())


async def leave_then(
    sig: signal.Signals, route_away: bool, a: FunctionProcess, b: FunctionProcess
) -> tuple[Summary, LoadGenerator]:
    """Load on a and b. Once a serves requests, it leaves the ready set (as
    pitstop's deregistration does) unless not route_away; once every request the
    router sent it has arrived (the count pitstop reads), it gets `sig`."""
    ready = ReadySet()
    ready.set_endpoints([a.endpoint, b.endpoint])
    gen = LoadGenerator(ready, LoadConfig(concurrency=6, count=400, duration=3.0, ms=(300, 500)))
    run = asyncio.create_task(gen.run())

    async def arrived() -> int:
        return await asyncio.to_thread(server_in_flight, a)

    deadline = time.monotonic() + 10
    while await arrived() < 2:
        assert time.monotonic() < deadline, "no requests reached fn-a"
    if route_away:
        ready.set_endpoints([b.endpoint])
        while await arrived() < gen.in_flight("fn-a"):
            assert time.monotonic() < deadline, "the requests sent to fn-a did not arrive"
    a.signal(sig)
    return await run, gen


def test_sigterm_with_requests_in_flight_cuts_none(functions: Start) -> None:
    a, b = functions("fn-a"), functions("fn-b")
    s, _ = asyncio.run(leave_then(signal.SIGTERM, True, a, b))
    assert s.clean, s.text()
    assert s.in_flight_at_leave.get("fn-a", 0) >= 2  # the drain had work to wait for
    assert s.per_pod["fn-a"]["ok"] >= 2 and s.per_pod["fn-b"]["ok"] > s.per_pod["fn-a"]["ok"]
    assert a.wait() == 0, a.log.read_text()
    assert "shutdown: every request ended" in a.log.read_text()


def test_sigkill_mid_request_is_counted_as_cut(functions: Start) -> None:
    """The judge can fail: a killed instance's requests in flight are cut."""
    a, b = functions("fn-a"), functions("fn-b")
    s, gen = asyncio.run(leave_then(signal.SIGKILL, True, a, b))
    assert not s.clean
    assert s.cut >= 2 and s.cut + s.failed_total == s.in_flight_at_leave["fn-a"], s.text()
    assert all(r.outcome == "ok" for r in gen.records if r.pod == "fn-b")
    assert f"{s.cut} cut mid-flight" in s.defects()


def test_an_instance_killed_while_still_routed_fails_requests(functions: Start) -> None:
    a, b = functions("fn-a"), functions("fn-b")
    s, _ = asyncio.run(leave_then(signal.SIGKILL, False, a, b))
    assert s.cut >= 2 and s.failed.get("refused", 0) >= 1, s.text()
    assert not s.clean


def test_a_function_refusing_while_draining_is_a_5xx(functions: Start) -> None:
    a = functions("fn-a", "-draining-requests", "refuse")
    urllib.request.urlopen(urllib.request.Request(a.admin + "/drain", method="POST"), timeout=5)
    ready = ReadySet()
    ready.set_endpoints([a.endpoint])
    s = run_load(ready, concurrency=1, count=3, ms=(0, 0))
    assert s.failed == {"http_5xx": 3}, s.text()


def test_command_line_with_fixed_endpoints(functions: Start, tmp_path: Path) -> None:
    a = functions("fn-a")
    out = tmp_path / "run.json"
    e = a.endpoint
    args = ["--endpoint", f"fn-a={e.address}:{e.port}", "--concurrency", "2", "--count", "8"]
    code = main([*args, "--ms", "5:15", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["sent"] == data["ok"] == 8 and data["defects"] == [] and len(data["records"]) == 8
    assert {r["outcome"] for r in data["records"]} == {"ok"}


def test_command_line_help_runs_as_a_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.loadgen", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "EndpointSlices" in proc.stdout


def test_background_load_for_synchronous_callers(functions: Start) -> None:
    a = functions("fn-a")
    cfg = LoadConfig(concurrency=2, count=100_000, duration=30, ms=(20, 20))
    with BackgroundLoad(cfg, endpoints=[a.endpoint]) as load:
        time.sleep(0.5)
        assert load.generator is not None and load.generator.sent > 0
    assert load.summary is not None and load.summary.clean and load.summary.sent > 5
    # bounded by count: it ends by itself
    short = BackgroundLoad(LoadConfig(concurrency=1, count=3, ms=(0, 0)), endpoints=[a.endpoint])
    summary = short.start().wait(timeout=10)
    assert summary is not None and summary.ok == 3
    with pytest.raises(ValueError):
        BackgroundLoad(cfg)


def test_endpoints_outside_the_allowed_networks_get_no_request() -> None:
    cfg = LoadConfig(concurrency=1, count=5, duration=0.3, allowed_networks=("10.244.0.0/24",))
    assert cfg.allows("10.244.0.7") and not cfg.allows("10.244.1.7") and not cfg.allows("x")
    assert LoadConfig(rate=1).allows("127.0.0.1") and not LoadConfig(rate=1).allows("10.0.0.1")
    ready = ReadySet()
    ready.set_endpoints([Endpoint("kwok-pod", "10.0.0.9", 8080)])  # routes nowhere: never sent to
    s = run_load(ready, concurrency=2, count=5, duration=0.3)
    assert s.sent == 0 and s.blocked > 0 and not s.clean, s.text()
