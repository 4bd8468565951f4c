"""The `knative` task source (no cluster, no network): Knative Serving's
queue-proxy Stat decoded from its protobuf wire format, what its 1-second window
counts as, and the lag that keeps a window from before the drain signal untrusted."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from pitstop.instances.sources import addressing, answers, profiles, trust
from pitstop.instances.sources.errors import INVALID, SourceError
from pitstop.models import TaskSource

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def stat(
    pod: str = "fn-1",
    concurrency: float | None = None,
    requests: float | None = None,
    uptime: float | None = 12.0,
    timestamp: int | None = None,
) -> bytes:
    """A Stat as gogo/protobuf marshals it: proto3 leaves out zero fields."""
    out = b""
    if pod:
        out += bytes([1 << 3 | 2, len(pod)]) + pod.encode()
    for number, value in ((2, concurrency), (4, requests), (6, uptime)):
        if value:
            out += bytes([number << 3 | 1]) + struct.pack("<d", value)
    if timestamp:
        out += bytes([7 << 3 | 0]) + varint(timestamp)
    return out


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def knative_profile(**tasks: object) -> profiles.Profile:
    body = {"metadata": {"name": "kn"}, "spec": {"podSelector": {}, "tasks": {"knative": tasks}}}
    p = profiles.parse_profile(body)
    assert isinstance(p, profiles.Profile), p
    return p


def test_an_idle_window_is_0() -> None:
    assert answers.parse_knative_stat(stat()) == 0


@pytest.mark.parametrize(
    ("concurrency", "requests", "count"),
    [
        (0.25, None, 1),  # a request in flight for a quarter of the window
        (None, 1.0, 1),  # arrived in the window (and ended at once): still busy
        (2.4, 3.0, 3),  # rounded up
        (1.0, None, 1),
        (3.0000000000000004, None, 3),  # as the queue-proxy's sums read 3 requests
    ],
)
def test_a_window_that_saw_a_request_is_busy(
    concurrency: float | None, requests: float | None, count: int
) -> None:
    assert answers.parse_knative_stat(stat(concurrency=concurrency, requests=requests)) == count


def test_fields_it_does_not_read_are_skipped() -> None:
    raw = stat(concurrency=1.5, timestamp=1_767_225_600) + bytes([8 << 3 | 5]) + b"\0\0\0\0"
    assert answers.parse_knative_stat(raw) == 2


def test_no_window_yet_is_no_count() -> None:
    # Before its first 1-second report the queue-proxy serves a Stat with only the pod name.
    with pytest.raises(SourceError, match="no Knative Stat window") as e:
        answers.parse_knative_stat(stat(uptime=None))
    assert e.value.kind == INVALID


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"# HELP x\nx 1\n", "not a Knative Stat"),  # Prometheus text is not a Stat
        (stat()[:-3], "truncated"),
        (bytes([2 << 3 | 1]) + struct.pack("<d", -1.0) + stat(pod=""), "not a non-negative"),
        (bytes([2 << 3 | 1]) + struct.pack("<d", math.nan) + stat(pod=""), "not a non-negative"),
        (bytes([0x80] * 11), "truncated varint"),
    ],
)
def test_anything_else_is_an_error(raw: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        answers.parse_knative_stat(raw)


def test_the_profile_reads_the_stat_bytes_on_9090() -> None:
    p = knative_profile()
    assert p.spec.tasks.type == profiles.KNATIVE == profiles.task_source(p)
    assert profiles.describe_tasks(p.spec) == "knative :9090/metrics"
    assert answers.parse_answer(p, stat(concurrency=0.5)) == 1
    pod = {"metadata": {"name": "f"}, "spec": {"containers": []}, "status": {"podIP": "10.9.0.4"}}
    assert addressing.poll_request(p, pod).url == "http://10.9.0.4:9090/metrics"
    named = knative_profile(port="stats", path="/stats")
    assert profiles.describe_tasks(named.spec) == "knative :stats/stats"


def test_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one of annotation, prometheus, http or"):
        TaskSource.model_validate({"knative": {}, "http": {"port": 1, "path": "/n"}})
    assert TaskSource.model_validate({"knative": {}}).type == "knative"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_window_that_may_predate_the_signal_is_not_trusted() -> None:
    # Read 1.5 s after the signal, the Stat may describe a window that ended before
    # it: a request that arrived in between would be in no count read so far.
    lag = trust.answer_lag(knative_profile())
    assert lag == trust.KNATIVE_STAT_LAG == timedelta(seconds=2)
    early = trust.polled(trust.Reading(at(2.5), count=0, lag=lag), at(1))
    assert early.busy and early.pending == "last read predates the drain signal"
    late = trust.polled(trust.Reading(at(3.1), count=0, lag=lag), at(1))
    assert not late.busy
    # The other sources answer with the moment of the poll: no lag.
    prom = {"podSelector": {}, "tasks": {"prometheus": {"port": 1, "metric": "m"}}}
    p = profiles.parse_profile({"metadata": {"name": "p"}, "spec": prom})
    assert isinstance(p, profiles.Profile)
    assert trust.answer_lag(p) == timedelta(0)
