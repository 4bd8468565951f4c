"""Task sources (no cluster, no network): profile precedence and conflicts, kinds,
ports, answers of every format, and the trust rule that closes the race between a
drain signal and a new task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pitstop.instances.sources import (
    addressing,
    answers,
    census,
    durations,
    errors,
    matching,
    profiles,
    trust,
    watchdog,
)
from pitstop.instances.sources.errors import SourceError
from pitstop.models import InstanceProfileSpec, InstanceProfileStatus, PrometheusTasks

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def profile(name: str, created: str = "2026-01-01T00:00:00Z", **spec: Any) -> profiles.Profile:
    body = {"metadata": {"name": name, "creationTimestamp": created}, "spec": spec}
    p = profiles.parse_profile(body)
    assert isinstance(p, profiles.Profile), p
    return p


def prom(metric: str = "function_requests_in_flight", **fields: Any) -> PrometheusTasks:
    return PrometheusTasks.model_validate({"port": 9100, "metric": metric, **fields})


def pod(ip: str | None = "10.244.0.7", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "faas", "name": "f-1", "labels": {"app": "f"}},
        "spec": {
            "containers": [
                {"name": "f", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "side", "ports": [{"name": "metrics", "containerPort": 9100}]},
            ],
            **spec,
        },
        "status": {"podIP": ip} if ip else {},
    }


# --- precedence ---


def test_no_profile_matches() -> None:
    m = matching.match([profile("a", podSelector={"matchLabels": {"app": "g"}})], {"app": "f"}, {})
    assert m.profile is None and not m.conflict and not m.uncertain
    assert (
        profiles.task_source(None) == "annotation" and profiles.drain_signal(None) == "annotation"
    )


def test_the_oldest_profile_wins_and_the_others_are_named() -> None:
    old = profile("zeta", "2026-01-01T00:00:00Z", podSelector={})
    new = profile("alpha", "2026-01-05T00:00:00Z", podSelector={"matchLabels": {"app": "f"}})
    same_age = profile("beta", "2026-01-01T00:00:00Z", podSelector={})
    m = matching.match([new, old, same_age], {"app": "f"}, None)
    assert m.profile is same_age  # same age as zeta: the name decides
    assert m.others == ("zeta", "alpha") and m.conflict
    assert matching.match([new, old], {"app": "f"}, None).profile is old


def test_namespace_selector() -> None:
    p = profile("a", podSelector={}, namespaceSelector={"matchLabels": {"team": "x"}})
    assert matching.match([p], {}, {"team": "x"}).profile is p
    assert matching.match([p], {}, {"team": "y"}).profile is None
    unknown = matching.match([p], {}, None)
    assert unknown.profile is None and unknown.uncertain


def test_invalid_stored_profile() -> None:
    bad = profiles.parse_profile(
        {"metadata": {"name": "x"}, "spec": {"podSelector": {}, "tasks": {}}}
    )
    assert isinstance(bad, profiles.InvalidProfile)
    assert "exactly one of annotation, prometheus, http or knative" in bad.message


def test_fingerprint_changes_with_the_source_not_the_selector() -> None:
    a = profile("a", podSelector={}, tasks={"prometheus": {"port": 1, "metric": "m"}})
    b = profile("a", podSelector={"matchLabels": {"x": "y"}}, tasks=a.spec.tasks.wire())
    c = profile("a", podSelector={}, tasks={"prometheus": {"port": 2, "metric": "m"}})
    assert a.fingerprint == b.fingerprint != c.fingerprint


# --- kind ---


@pytest.mark.parametrize(
    ("profile_kind", "label", "backs", "expected"),
    [
        (None, None, True, "sync"),
        (None, None, False, "async"),
        ("auto", None, True, "sync"),
        ("async", None, True, "async"),
        ("sync", None, False, "sync"),
        ("sync", "async", False, "async"),  # the pod's own label wins
        ("async", "bogus", True, "async"),
    ],
)
def test_kind(profile_kind: str | None, label: str | None, backs: bool, expected: str) -> None:
    p = profile("p", podSelector={}, kind=profile_kind) if profile_kind else None
    assert matching.kind(p, label, backs) == expected


@pytest.mark.parametrize(
    ("profile_kind", "label", "expected"),
    [
        (None, None, "sync"),  # the gate alone: routed by readiness (seed 20130)
        ("auto", None, "sync"),
        ("async", None, "async"),  # an explicit kind still wins
        (None, "async", "async"),
    ],
)
def test_kind_of_a_pod_declaring_the_serving_gate(
    profile_kind: str | None, label: str | None, expected: str
) -> None:
    p = profile("p", podSelector={}, kind=profile_kind) if profile_kind else None
    assert matching.kind(p, label, False, gated=True) == expected


# --- where to ask ---


def test_ports_and_urls() -> None:
    assert addressing.resolve_port(pod(), 8081) == 8081
    assert addressing.resolve_port(pod(), "metrics") == 9100
    with pytest.raises(SourceError, match="no container port named 'admin'") as e:
        addressing.resolve_port(pod(), "admin")
    assert e.value.kind == errors.INVALID
    assert addressing.url(pod(), "http", "/inflight") == "http://10.244.0.7:8080/inflight"
    assert addressing.url(pod("fd00::7"), 1, "/m") == "http://[fd00::7]:1/m"
    with pytest.raises(SourceError, match="no IP address") as e:
        addressing.url(pod(None), 1, "/m")
    assert e.value.kind == errors.UNREACHABLE


def test_requests() -> None:
    p = profile(
        "p",
        podSelector={},
        tasks={"prometheus": {"port": "metrics", "metric": "m"}},
        drainSignal={"httpPost": {"port": "metrics", "path": "/drain"}},
        timeoutSeconds=0.5,
    )
    assert addressing.poll_request(p, pod()) == addressing.Request(
        "GET", "http://10.244.0.7:9100/metrics", 0.5
    )
    assert addressing.signal_request(p, pod()) == addressing.Request(
        "POST", "http://10.244.0.7:9100/drain", 0.5
    )
    with pytest.raises(ValueError, match="reads the annotation"):
        addressing.poll_request(profile("q", podSelector={}), pod())


def test_descriptions() -> None:
    spec = InstanceProfileSpec.model_validate(
        {
            "podSelector": {},
            "tasks": {
                "prometheus": {
                    "port": 8081,
                    "metric": "http_requests_in_flight",
                    "labels": [{"name": "code", "value": "200"}],
                }
            },
            "drainSignal": {"httpPost": {"port": "admin", "path": "/drain"}},
        }
    )
    assert (
        profiles.describe_tasks(spec)
        == "prometheus :8081/metrics http_requests_in_flight{code='200'}"
    )
    assert profiles.describe_signal(spec) == "httpPost :admin/drain"
    plain = InstanceProfileSpec.model_validate({"podSelector": {}})
    assert (profiles.describe_tasks(plain), profiles.describe_signal(plain)) == (
        "annotation",
        "annotation",
    )
    http = InstanceProfileSpec.model_validate(
        {"podSelector": {}, "tasks": {"http": {"port": 1, "path": "/s", "field": "a.b"}}}
    )
    assert profiles.describe_tasks(http) == "http :1/s .a.b"


# --- answers ---

EXPOSITION = """\
# HELP function_requests_in_flight Requests being served.
# TYPE function_requests_in_flight gauge
function_requests_in_flight 3
# HELP http_requests_in_flight In flight, by path.
# TYPE http_requests_in_flight gauge
http_requests_in_flight{path="/"} 2
http_requests_in_flight{path="/healthz"} 1
http_requests_in_flight{path="/fn/a",code="x"} 0.5
# HELP function_requests_served_total Served.
# TYPE function_requests_served_total counter
function_requests_served_total 1234
"""


def test_prometheus_gauge() -> None:
    assert answers.parse_prometheus(EXPOSITION, prom()) == 3


def test_prometheus_sums_matching_series() -> None:
    assert answers.parse_prometheus(EXPOSITION, prom("http_requests_in_flight")) == 4  # 3.5 → 4
    only_root = prom("http_requests_in_flight", labels=[{"name": "path", "value": "/"}])
    assert answers.parse_prometheus(EXPOSITION, only_root) == 2
    not_health = prom(
        "http_requests_in_flight", labels=[{"name": "path", "operator": "!=", "value": "/healthz"}]
    )
    assert answers.parse_prometheus(EXPOSITION, not_health) == 3
    regex = prom(
        "http_requests_in_flight", labels=[{"name": "path", "operator": "=~", "value": "/fn/.*"}]
    )
    assert answers.parse_prometheus(EXPOSITION, regex) == 1
    anchored = prom(
        "http_requests_in_flight", labels=[{"name": "path", "operator": "=~", "value": "fn"}]
    )
    with pytest.raises(SourceError, match="no series"):
        answers.parse_prometheus(EXPOSITION, anchored)
    absent_label = prom(
        "http_requests_in_flight", labels=[{"name": "code", "operator": "!~", "value": "x"}]
    )
    assert answers.parse_prometheus(EXPOSITION, absent_label) == 3  # absent label = "" (PromQL)


def test_prometheus_counter_by_its_sample_name() -> None:
    assert answers.parse_prometheus(EXPOSITION, prom("function_requests_served_total")) == 1234


def test_prometheus_zero_is_zero() -> None:
    text = "# TYPE function_requests_in_flight gauge\nfunction_requests_in_flight 0\n"
    assert answers.parse_prometheus(text, prom()) == 0


def test_wrong_metric_name_is_a_clear_error_not_zero() -> None:
    with pytest.raises(SourceError) as e:
        answers.parse_prometheus(EXPOSITION, prom("function_requests_inflight"))
    assert e.value.kind == errors.INVALID
    assert e.value.message.startswith("metric function_requests_inflight not found")
    assert "function_requests_in_flight" in e.value.message  # names what is there
    with pytest.raises(SourceError, match="no metrics at all"):
        answers.parse_prometheus("", prom())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("function_requests_in_flight -1\n", "not a non-negative number"),
        ("function_requests_in_flight NaN\n", "not a non-negative number"),
        ("function_requests_in_flight +Inf\n", "not a non-negative number"),
        ("<html>not metrics</html>\n", "not the Prometheus text format"),
        ('function_requests_in_flight{a="1} 3\n', "not the Prometheus text format"),
    ],
)
def test_prometheus_bad_answers(text: str, message: str) -> None:
    with pytest.raises(SourceError, match=message) as e:
        answers.parse_prometheus(text, prom())
    assert e.value.kind == errors.INVALID


def test_plain_integer() -> None:
    assert answers.parse_plain("7\n") == 7
    assert answers.parse_plain(" 0 ") == 0
    for bad in ("", "-1", "1.5", "seven", "٣"):
        with pytest.raises(SourceError, match="not a non-negative integer"):
            answers.parse_plain(bad)


def test_json_field() -> None:
    body = '{"pod": "p", "inflight": 2, "stats": {"inFlight": 5.0, "f": 1.5}, "b": true}'
    assert answers.parse_json_field(body, "inflight") == 2
    assert answers.parse_json_field(body, "stats.inFlight") == 5
    for path, message in [
        ("missing", "has no field missing"),
        ("inflight.x", "has no field inflight.x"),
        ("pod", "not a number"),
        ("b", "not a number"),
        ("stats.f", "not an integer"),
    ]:
        with pytest.raises(SourceError, match=message):
            answers.parse_json_field(body, path)
    with pytest.raises(SourceError, match="not JSON"):
        answers.parse_json_field("3 tasks", "x")
    with pytest.raises(SourceError, match="not a non-negative"):
        answers.parse_json_field('{"n": -2}', "n")


def test_parse_answer_by_source() -> None:
    p = profile("p", podSelector={}, tasks={"prometheus": {"port": 1, "metric": "m"}})
    assert answers.parse_answer(p, "m 2\n") == 2
    h = profile("h", podSelector={}, tasks={"http": {"port": 1, "path": "/n"}})
    assert answers.parse_answer(h, "4\n") == 4
    j = profile("j", podSelector={}, tasks={"http": {"port": 1, "path": "/s", "field": "n"}})
    assert answers.parse_answer(j, '{"n": 1}') == 1


def test_http_status() -> None:
    answers.check_status(200, "")
    answers.check_status(204, "")
    with pytest.raises(SourceError, match="HTTP 503: draining") as e:
        answers.check_status(503, "draining\n")
    assert e.value.kind == errors.UNREACHABLE
    with pytest.raises(SourceError, match=r"^HTTP 404$"):
        answers.check_status(404, "")


# --- trust ---


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_no_count_is_trusted_before_the_signal() -> None:
    assert trust.polled(trust.Reading(at(5), count=0), None).pending
    assert trust.polled(None, at(0)).pending == "not read yet"


def test_a_poll_that_started_before_the_signal_is_not_trusted() -> None:
    # The poll began before the acknowledgement and answered 0 after it: a task the
    # runtime took in between may not be in that 0.
    stale = trust.polled(trust.Reading(at(0.9), count=0), at(1))
    assert stale.busy and stale.pending == "last read predates the drain signal"
    same_instant = trust.polled(trust.Reading(at(1), count=0), at(1))
    assert same_instant.busy


def test_a_poll_that_started_after_the_signal_is_trusted() -> None:
    idle = trust.polled(trust.Reading(at(1.1), count=0), at(1))
    assert not idle.busy and idle.count == 0
    busy = trust.polled(trust.Reading(at(1.1), count=2), at(1))
    assert busy.busy and busy.count == 2 and busy.pending is None


def test_an_error_counts_as_busy() -> None:
    error = SourceError(errors.UNREACHABLE, "connection refused")
    p = trust.polled(trust.Reading(at(2), error=error), at(1))
    assert p.busy and p.error == error and p.count == 0


def test_signal_time_per_signal() -> None:
    assert trust.signal_time("annotation", marked_at=at(1), state=None) == at(1)
    assert trust.signal_time("none", marked_at=at(1), state=None) == at(1)
    assert trust.signal_time("annotation", marked_at=None, state=None) is None
    assert trust.signal_time("httpPost", marked_at=at(1), state=None) is None
    state = trust.SignalState()
    assert trust.signal_time("httpPost", marked_at=at(1), state=state) is None
    state.acked_at = at(3)
    assert trust.signal_time("httpPost", marked_at=at(1), state=state) == at(3)


def test_an_unacknowledged_signal_is_reported_then_retried() -> None:
    state = trust.SignalState()
    reported = [trust.signal_failed(state, at(i), "connection refused") for i in range(7)]
    assert reported == [False, False, False, False, True, False, False]
    assert state.reported_at == at(4) and state.attempts == 7
    assert state.next_at == at(6) + timedelta(seconds=5)  # backoff capped at 5 s
    # From the report on, the count is used as with drainSignal: none.
    assert trust.signal_time("httpPost", marked_at=at(0), state=state) == at(4)
    assert [trust.signal_backoff(n).total_seconds() for n in (1, 2, 3, 6)] == [0.25, 0.5, 1.0, 5.0]


# --- of-watchdog's grace period ---


def test_go_durations() -> None:
    assert durations.go_duration("10s") == 10
    assert durations.go_duration("1m30s") == 90
    assert durations.go_duration("1500ms") == 1.5
    assert durations.go_duration("45") == 45
    assert durations.go_duration("soon") is None


def watchdog_pod(grace: int | None, **env: str) -> dict[str, Any]:
    containers = [{"name": "fn", "env": [{"name": k, "value": v} for k, v in env.items()]}]
    spec: dict[str, Any] = {"containers": containers}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"spec": spec}


def test_watchdog_grace() -> None:
    of = profile(
        "of",
        podSelector={},
        tasks={"prometheus": {"port": 8081, "metric": "http_requests_in_flight"}},
    )
    # Defaults (of-watchdog since 0.9.11): write_timeout 30 s, healthcheck_interval =
    # write_timeout: 60 s on SIGTERM, so Kubernetes' default grace of 30 s is too short.
    assert watchdog.watchdog_grace(watchdog_pod(None), of) == (60.0, 30)
    assert watchdog.watchdog_grace(watchdog_pod(60), of) == (60.0, 60)
    assert watchdog.watchdog_grace(watchdog_pod(61), of) is None
    assert watchdog.watchdog_grace(watchdog_pod(20, write_timeout="10s"), of) == (20.0, 20)
    assert watchdog.watchdog_grace(watchdog_pod(60, write_timeout="30s"), of) == (60.0, 60)
    assert watchdog.watchdog_grace(watchdog_pod(61, write_timeout="30s"), of) is None
    assert (
        watchdog.watchdog_grace(
            watchdog_pod(30, write_timeout="20s", healthcheck_interval="5s"), None
        )
        is None
    )
    assert watchdog.watchdog_grace(watchdog_pod(10, write_timeout="1m"), None) == (120.0, 10)
    assert watchdog.watchdog_grace(watchdog_pod(1), None) is None  # not a watchdog
    # As the watchdog parses them: a bare number is seconds; healthcheck_interval "0"
    # is no wait before the drain (not the default), an unparsable value the default.
    assert watchdog.watchdog_grace(watchdog_pod(30, write_timeout="40"), of) == (80.0, 30)
    pod = watchdog_pod(30, write_timeout="20s", healthcheck_interval="0")
    assert watchdog.watchdog_grace(pod, of) is None  # 0 + 20 s < 30 s
    assert watchdog.watchdog_grace(watchdog_pod(30, write_timeout="soon"), of) == (60.0, 30)


# --- profile status ---


def test_census_and_conflict_conditions() -> None:
    a = profile("a", "2026-01-01T00:00:00Z", podSelector={"matchLabels": {"app": "f"}})
    b = profile("b", "2026-01-02T00:00:00Z", podSelector={"matchLabels": {"tier": "fn"}})
    c = profile("c", "2026-01-03T00:00:00Z", podSelector={"matchLabels": {"app": "g"}})
    pods = [
        ("ns/f1", {"app": "f"}, "ns"),
        ("ns/f2", {"app": "f", "tier": "fn"}, "ns"),
        ("ns/f3", {"tier": "fn"}, "ns"),
        ("ns/x", {"app": "x"}, "ns"),
    ]
    found = census.census([a, b, c], pods, {"ns": {}})
    assert found.pods == {"a": 2, "b": 1, "c": 0}
    assert found.overlaps == {"a": {"b": (1, "ns/f2")}, "b": {"a": (1, "ns/f2")}, "c": {}}
    win = matching.winners([c, b, a])
    assert win == {("a", "b"): "a", ("a", "c"): "a", ("b", "c"): "b"}

    empty = InstanceProfileStatus()
    sa = census.profile_status(a, found, win, empty, T0)
    assert sa.pods == 2 and sa.conflicts == ["b"]
    assert sa.tasks == "annotation" and sa.drain_signal == "annotation"
    ready = next(x for x in sa.conditions if x.type == "Ready")
    assert (ready.status, ready.reason) == ("True", "Valid")
    conflict = next(x for x in sa.conditions if x.type == "Conflict")
    assert (conflict.status, conflict.reason) == ("True", "OverlappingProfiles")
    assert conflict.message == "1 instances (e.g. ns/f2) also match b; a, the older, describes them"
    sb = census.profile_status(b, found, win, empty, T0)
    b_conflict = next(x for x in sb.conditions if x.type == "Conflict")
    assert "also match a; a, the older, describes them" in (b_conflict.message or "")
    sc = census.profile_status(c, found, win, empty, T0)
    assert [(x.type, x.status) for x in sc.conditions] == [
        ("Ready", "True"),
        ("Reconciling", "False"),
        ("Stalled", "False"),
        ("Conflict", "False"),
    ]
    assert sa.last_update_time == T0

    later = T0 + timedelta(seconds=30)
    again = census.profile_status(a, found, win, sa, later)
    assert again == sa  # nothing changed: not even lastUpdateTime (no write)


def test_status_of_an_invalid_profile() -> None:
    bad = profiles.parse_profile(
        {"metadata": {"name": "bad", "creationTimestamp": "x"}, "spec": {"tasks": {}}}
    )
    assert isinstance(bad, profiles.InvalidProfile)
    status = census.profile_status(bad, census.Census(), {}, InstanceProfileStatus(), T0)
    ready, reconciling, stalled = status.conditions
    assert (ready.type, ready.status, ready.reason) == ("Ready", "False", "InvalidSpec")
    assert "podSelector" in (ready.message or "") and status.pods == 0
    assert (reconciling.type, reconciling.status) == ("Reconciling", "False")
    assert (stalled.type, stalled.status, stalled.reason) == ("Stalled", "True", "InvalidSpec")


# --- pitstop plan's text ---


def test_plan_text_names_profiles_sources_and_warnings() -> None:
    from pitstop.cli import commands
    from pitstop.instances import contract

    p = profile(
        "of",
        podSelector={},
        tasks={"prometheus": {"port": 8081, "metric": "http_requests_in_flight"}},
    )
    error = SourceError(errors.UNREACHABLE, "GET http://10.0.0.1:8081/metrics: connection refused")
    found = [
        contract.observe(pod(), None, matching.Match(p), trust.Polled(error=error)),
        contract.observe(pod(), None, matching.Match(p), trust.Polled(count=2)),
    ]
    plan = {"sync": [], "async": ["faas/f-1", "faas/f-1"], "inflightTasks": 2}
    plan["warnings"] = ["GracePeriodTooShort: faas/f-1 has terminationGracePeriodSeconds 10"]
    text = commands.plan_text("n1", plan, found)
    assert (
        "faas/f-1=GET http://10.0.0.1:8081/metrics: connection refused (prometheus of of)" in text
    )
    assert "faas/f-1=2 (prometheus of of)" in text
    assert "InstanceProfiles describing its instances: of" in text
    assert "warning GracePeriodTooShort: faas/f-1" in text
