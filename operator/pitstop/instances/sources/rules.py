"""Task sources: which InstanceProfile describes a pod, where its in-flight count is
read, what an answer means, and when a count may be trusted. Pure: no clocks, no
I/O (pitstop.taskpoller does the HTTP), so every rule is unit-tested without a
cluster or a network.

The rules, in the order a drain meets them:

- **Precedence.** Several profiles may match one pod. The oldest profile wins
  (metadata.creationTimestamp, then the name): installing a new profile never
  takes over pods an existing one already describes, in the middle of a drain or
  otherwise. Every profile involved gets `Conflict=True` naming the others, and a
  repair that meets such a pod posts a Warning Event.
- **Kind.** The pod's own `pitstop.dev/instance-type` label wins; then the
  profile's `kind` unless it is `auto`; then the EndpointSlice rule.
- **Reading.** A count is the sum of the matching series of a Prometheus gauge,
  or a plain integer, or a JSON field. Anything else is an error, and an error
  counts as busy: a metric that is absent (a wrong name) is not 0.
- **Trust.** A count is only trusted if the poll that read it *started* after the
  drain signal took effect: acknowledged (`httpPost`), or seen by pitstop on the
  pod's own version (`annotation`, and `none`, whose mark pitstop still writes).
  Until then the instance counts as busy. So there is always one more poll after
  the signal, and with a runtime that refuses (or counts) new work from the
  moment it acknowledges, a 0 can no longer go up before the eviction.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from pitstop import constants, selectors
from pitstop.conditions import set_condition
from pitstop.models import (
    InstanceKind,
    InstanceProfileSpec,
    InstanceProfileStatus,
    LabelMatcher,
    MatchOperator,
    PrometheusTasks,
)

C = constants

ANNOTATION = "annotation"
PROMETHEUS = "prometheus"
HTTP = "http"
HTTP_POST = "httpPost"
NONE = "none"

UNREACHABLE = "Unreachable"
"""No answer: connection refused or reset, timeout, an HTTP error status."""
INVALID = "Invalid"
"""An answer without a usable count: not the expected format, metric absent, negative."""


# --- profiles and precedence ---


@dataclass(frozen=True)
class Profile:
    """An InstanceProfile as indexed: its identity, age and validated spec."""

    name: str
    created: str
    """metadata.creationTimestamp (RFC 3339, so it sorts as text)."""
    spec: InstanceProfileSpec
    generation: int | None = None

    @property
    def precedence(self) -> tuple[str, str]:
        """Sorts first when it wins: the oldest, then by name."""
        return (self.created, self.name)

    @property
    def fingerprint(self) -> str:
        """Changes with what a reading depends on: a reading taken under another
        source, signal or port is never mixed with one taken under this one."""
        wire = self.spec.wire()
        relevant = {k: wire.get(k) for k in ("tasks", "drainSignal", "timeoutSeconds")}
        text = json.dumps({"name": self.name, **relevant}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class InvalidProfile:
    """A stored profile the operator cannot use (the CRD let through what the model
    refuses): it describes no pod and says why in its Ready condition."""

    name: str
    created: str
    message: str


def parse_profile(body: Mapping[str, Any]) -> Profile | InvalidProfile:
    meta = body.get("metadata") or {}
    name, created = str(meta.get("name", "")), str(meta.get("creationTimestamp") or "")
    try:
        spec = InstanceProfileSpec.model_validate(body.get("spec") or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return InvalidProfile(name, created, f"spec.{where}: {first['msg']}")
    return Profile(name=name, created=created, spec=spec, generation=meta.get("generation"))


@dataclass(frozen=True)
class Match:
    """The profile that describes a pod, if any, and the others that also match."""

    profile: Profile | None
    others: tuple[str, ...] = ()
    """Names of the other matching profiles, which lost on precedence."""
    uncertain: bool = False
    """A profile's namespaceSelector could not be evaluated (the namespace is not
    known yet): the pod's source is unknown and it counts as busy."""

    @property
    def conflict(self) -> bool:
        return bool(self.others)


def matches(
    profile: Profile, pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str] | None
) -> bool | None:
    """True or False; None when the namespace's labels are needed but unknown."""
    if not selectors.matches(profile.spec.pod_selector.wire(), pod_labels):
        return False
    ns_selector = profile.spec.namespace_selector
    if ns_selector is None:
        return True
    if namespace_labels is None:
        return None
    return selectors.matches(ns_selector.wire(), namespace_labels)


def match(
    profiles: Iterable[Profile],
    pod_labels: Mapping[str, str],
    namespace_labels: Mapping[str, str] | None,
) -> Match:
    """The winning profile for one pod (see the module's precedence rule)."""
    found, uncertain = [], False
    for p in profiles:
        m = matches(p, pod_labels, namespace_labels)
        if m is None:
            uncertain = True
        elif m:
            found.append(p)
    if not found:
        return Match(None, uncertain=uncertain)
    found.sort(key=lambda p: p.precedence)
    return Match(found[0], tuple(p.name for p in found[1:]), uncertain=uncertain)


def kind(
    profile: Profile | None, label: str | None, backs_endpoint: bool, gated: bool = False
) -> str:
    """sync or async: the pod's label, then the profile's kind, then the pod itself:
    one that declares the serving gate, or backs an EndpointSlice endpoint, is sync.
    The gate counts on its own because the EndpointSlices are seen late: a pod just
    made Ready may be routed before the operator's view lists it, and taken for
    async it would be evicted still routed (invariant 2). Its declaration says
    routing follows its readiness; closing it costs a pod no Service routes nothing."""
    if label in (C.INSTANCE_SYNC, C.INSTANCE_ASYNC):
        return label
    if profile is not None and profile.spec.kind is not InstanceKind.AUTO:
        return str(profile.spec.kind.value)
    return C.INSTANCE_SYNC if backs_endpoint or gated else C.INSTANCE_ASYNC


def task_source(profile: Profile | None) -> str:
    """annotation, prometheus or http; no profile is the annotation contract."""
    return profile.spec.tasks.type if profile is not None else ANNOTATION


def drain_signal(profile: Profile | None) -> str:
    """annotation, httpPost or none; no profile is the annotation contract."""
    return profile.spec.drain_signal.type if profile is not None else ANNOTATION


def describe_tasks(spec: InstanceProfileSpec) -> str:
    """One line for the profile's status and columns."""
    t = spec.tasks
    if t.prometheus is not None:
        p = t.prometheus
        matchers = ",".join(f"{m.name}{m.operator.value}{m.value!r}" for m in p.labels)
        return f"prometheus :{p.port}{p.path} {p.metric}" + (f"{{{matchers}}}" if matchers else "")
    if t.http is not None:
        h = t.http
        return f"http :{h.port}{h.path}" + (f" .{h.field}" if h.field else "")
    return ANNOTATION


def describe_signal(spec: InstanceProfileSpec) -> str:
    s = spec.drain_signal
    if s.http_post is not None:
        return f"httpPost :{s.http_post.port}{s.http_post.path}"
    return s.type


# --- where to ask ---


class SourceError(Exception):
    """A count that could not be read; `kind` is UNREACHABLE or INVALID."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceError) and (self.kind, self.message) == (
            other.kind,
            other.message,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.message))

    def __repr__(self) -> str:
        return f"SourceError({self.kind!r}, {self.message!r})"


def resolve_port(pod: Mapping[str, Any], port: int | str) -> int:
    """A port number as is; a name looked up in the pod's container ports."""
    if isinstance(port, int):
        return port
    for container in (pod.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == port and p.get("containerPort"):
                return int(p["containerPort"])
    raise SourceError(INVALID, f"the pod has no container port named {port!r}")


def url(pod: Mapping[str, Any], port: int | str, path: str) -> str:
    """http://<pod IP>:<port><path>; a pod without an IP raises SourceError."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        raise SourceError(UNREACHABLE, "the pod has no IP address yet")
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{resolve_port(pod, port)}{path}"


@dataclass(frozen=True)
class Request:
    """One HTTP request to an instance, resolved against its pod."""

    method: str
    url: str
    timeout: float


def poll_request(profile: Profile, pod: Mapping[str, Any]) -> Request:
    """The GET that reads a polled source (SourceError if it cannot be addressed)."""
    t = profile.spec.tasks
    target = t.prometheus or t.http
    if target is None:
        raise ValueError(f"profile {profile.name} reads the annotation, not a polled source")
    return Request("GET", url(pod, target.port, target.path), profile.spec.timeout_seconds)


def signal_request(profile: Profile, pod: Mapping[str, Any]) -> Request:
    """The POST of an httpPost drain signal."""
    post = profile.spec.drain_signal.http_post
    if post is None:
        raise ValueError(f"profile {profile.name} has no httpPost drain signal")
    return Request("POST", url(pod, post.port, post.path), profile.spec.timeout_seconds)


# --- what an answer means ---


def _label_ok(matcher: LabelMatcher, labels: Mapping[str, str]) -> bool:
    value = labels.get(matcher.name, "")  # PromQL: an absent label is the empty value
    op = matcher.operator
    if op is MatchOperator.EQUAL:
        return value == matcher.value
    if op is MatchOperator.NOT_EQUAL:
        return value != matcher.value
    found = re.fullmatch(matcher.value, value) is not None
    return found if op is MatchOperator.REGEX else not found


def _as_count(value: float, what: str) -> int:
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise SourceError(INVALID, f"{what} is {value}, not a non-negative number")
    return math.ceil(value)  # a fraction of a task in flight is still a task


def parse_prometheus(text: str, source: PrometheusTasks) -> int:
    """The sum of the series of `source.metric` that match its label matchers.

    A metric the exposition does not contain, or whose series all fail the
    matchers, is an error (most likely a wrong name), never 0."""
    total, series, matched, names = 0.0, 0, 0, set()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                names.add(sample.name)
                if sample.name != source.metric:
                    continue
                series += 1
                if all(_label_ok(m, sample.labels) for m in source.labels):
                    matched += 1
                    total += _as_count(sample.value, f"{source.metric}{sample.labels or ''}")
    except SourceError:
        raise
    except (ValueError, TypeError, IndexError) as e:
        raise SourceError(INVALID, f"not the Prometheus text format: {e}") from None
    if series == 0:
        known = ", ".join(sorted(names)[:8]) + (", ..." if len(names) > 8 else "")
        raise SourceError(
            INVALID,
            f"metric {source.metric} not found"
            + (f" (the instance exposes: {known})" if names else " (no metrics at all)"),
        )
    if matched == 0:
        matchers = ", ".join(f"{m.name}{m.operator.value}{m.value!r}" for m in source.labels)
        raise SourceError(
            INVALID, f"no series of {source.metric} matches {{{matchers}}} ({series} series)"
        )
    return _as_count(total, source.metric)


def parse_plain(text: str) -> int:
    """A plain non-negative integer, surrounding whitespace allowed."""
    s = text.strip()
    if s.isascii() and s.isdigit():
        return int(s)
    shown = s[:40] + ("..." if len(s) > 40 else "")
    raise SourceError(INVALID, f"answer {shown!r} is not a non-negative integer")


def parse_json_field(text: str, path: str) -> int:
    """The non-negative integer at a dotted path of a JSON object."""
    try:
        value: Any = json.loads(text)
    except ValueError as e:
        raise SourceError(INVALID, f"answer is not JSON: {e}") from None
    for step in path.split("."):
        if not isinstance(value, dict) or step not in value:
            raise SourceError(INVALID, f"answer has no field {path}")
        value = value[step]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SourceError(INVALID, f"field {path} is {value!r}, not a number")
    if isinstance(value, float) and not value.is_integer():
        raise SourceError(INVALID, f"field {path} is {value}, not an integer")
    return _as_count(float(value), f"field {path}")


def parse_answer(profile: Profile, text: str) -> int:
    """The count in a polled source's answer (SourceError when there is none)."""
    t = profile.spec.tasks
    if t.prometheus is not None:
        return parse_prometheus(text, t.prometheus)
    if t.http is not None:
        return parse_json_field(text, t.http.field) if t.http.field else parse_plain(text)
    raise ValueError(f"profile {profile.name} reads the annotation, not a polled source")


def check_status(status: int, body: str) -> None:
    """Only a 2xx answer carries a count or acknowledges a signal."""
    if not 200 <= status < 300:
        shown = " ".join(body.split())[:80]
        raise SourceError(UNREACHABLE, f"HTTP {status}" + (f": {shown}" if shown else ""))


# --- trust ---


@dataclass(frozen=True)
class Reading:
    """One poll of an instance: when it started and what it found."""

    started: datetime
    count: int | None = None
    error: SourceError | None = None


@dataclass(frozen=True)
class Polled:
    """What a polled source says about an instance now, for the state machine."""

    count: int = 0
    error: SourceError | None = None
    """The last poll failed: busy, and reported."""
    pending: str | None = None
    """No trusted reading yet (why): busy, not an error."""

    @property
    def busy(self) -> bool:
        return self.count > 0 or self.error is not None or self.pending is not None


def polled(reading: Reading | None, signal_at: datetime | None) -> Polled:
    """The trust rule: a count counts only if its poll started after the drain
    signal took effect (`signal_at`); before that the instance is busy."""
    if signal_at is None:
        return Polled(pending="waiting for the drain signal to take effect")
    if reading is None:
        return Polled(pending="not read yet")
    if reading.started <= signal_at:
        return Polled(pending="last read predates the drain signal")
    if reading.error is not None:
        return Polled(error=reading.error)
    return Polled(count=reading.count or 0)


@dataclass
class SignalState:
    """Progress of one instance's httpPost drain signal."""

    attempts: int = 0
    acked_at: datetime | None = None
    last_error: str | None = None
    next_at: datetime | None = None
    reported_at: datetime | None = None
    """When the missing acknowledgement was reported (Warning Event)."""
    history: list[str] = field(default_factory=list)


SIGNAL_REPORT_AFTER = 5
"""Failed drain-signal attempts before the instance is reported (about 8 s)."""


def signal_backoff(attempts: int) -> timedelta:
    """Delay after the n-th failed drain signal: 0.25 s doubling to 5 s."""
    return timedelta(seconds=min(0.25 * 2 ** max(attempts - 1, 0), 5.0))


def signal_failed(state: SignalState, now: datetime, error: str) -> bool:
    """Records a failed attempt; True when it is time to report the instance."""
    state.attempts += 1
    state.last_error = error
    state.next_at = now + signal_backoff(state.attempts)
    if state.reported_at is None and state.attempts >= SIGNAL_REPORT_AFTER:
        state.reported_at = now
        return True
    return False


def signal_time(
    signal: str, *, marked_at: datetime | None, state: SignalState | None
) -> datetime | None:
    """When the drain signal took effect for the trust rule.

    `marked_at`: when pitstop first saw its pitstop.dev/draining mark on the pod's
    own version. httpPost: when the POST was acknowledged; a runtime that never
    acknowledges is reported, and from then on its count is used as with `none`
    (the race with a new task is then open for it: documented)."""
    if signal == HTTP_POST:
        if state is None:
            return None
        return state.acked_at or state.reported_at
    return marked_at


# --- profile status: which pods each profile describes, and overlaps ---


@dataclass
class Census:
    """Which instances each profile describes, over every pod the operator knows."""

    pods: dict[str, int] = field(default_factory=dict)
    """Profile name → instances it wins (describes)."""
    overlaps: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)
    """Profile name → other profile → (pods both match, one of them)."""


def census(
    profiles: Iterable[Profile],
    pods: Iterable[tuple[str, Mapping[str, str], str]],
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> Census:
    """`pods`: (namespace/name, labels, namespace) of every instance."""
    profiles = list(profiles)
    c = Census(pods={p.name: 0 for p in profiles}, overlaps={p.name: {} for p in profiles})
    for key, labels, ns in pods:
        m = match(profiles, labels, namespace_labels.get(ns))
        if m.profile is None:
            continue
        c.pods[m.profile.name] += 1
        names = (m.profile.name, *m.others)
        for a in names:
            for b in names:
                if a != b:
                    n, example = c.overlaps[a].get(b, (0, key))
                    c.overlaps[a][b] = (n + 1, example)
    return c


def profile_status(
    item: Profile | InvalidProfile,
    found: Census,
    winners: Mapping[tuple[str, str], str],
    old: InstanceProfileStatus,
    now: datetime,
) -> InstanceProfileStatus:
    """The status of one profile; `winners` maps each overlapping pair (sorted) to
    the profile that wins it. lastUpdateTime moves only when something changed."""
    status = old.model_copy(deep=True)
    generation = item.generation if isinstance(item, Profile) else None
    if isinstance(item, InvalidProfile):
        status.tasks, status.drain_signal, status.pods, status.conflicts = None, None, 0, []
        status.conditions = set_condition(
            status.conditions,
            C.COND_PROFILE_READY,
            False,
            C.REASON_PROFILE_INVALID,
            f"{item.message}: the profile describes no pod",
            now,
            generation,
        )
        status.conditions = [c for c in status.conditions if c.type != C.COND_PROFILE_CONFLICT]
    else:
        status.tasks = describe_tasks(item.spec)
        status.drain_signal = describe_signal(item.spec)
        status.pods = found.pods.get(item.name, 0)
        overlaps = found.overlaps.get(item.name, {})
        status.conflicts = sorted(overlaps)[:64]
        status.conditions = set_condition(
            status.conditions,
            C.COND_PROFILE_READY,
            True,
            C.REASON_PROFILE_VALID,
            f"describes {status.pods} instances",
            now,
            generation,
        )
        if overlaps:
            parts = []
            for other in sorted(overlaps):
                n, example = overlaps[other]
                winner = winners.get(pair(item.name, other), "?")
                parts.append(
                    f"{n} instances (e.g. {example}) also match {other}; {winner}, the older,"
                    " describes them"
                )
            status.conditions = set_condition(
                status.conditions,
                C.COND_PROFILE_CONFLICT,
                True,
                C.REASON_OVERLAPPING_PROFILES,
                "; ".join(parts),
                now,
                generation,
            )
        else:
            status.conditions = set_condition(
                status.conditions,
                C.COND_PROFILE_CONFLICT,
                False,
                C.REASON_NO_OVERLAP,
                "no other profile matches its instances",
                now,
                generation,
            )
    status.observed_generation = generation
    status.last_update_time = old.last_update_time
    if status != old or old.last_update_time is None:
        status.last_update_time = now
    return status


def winners(profiles: Iterable[Profile]) -> dict[tuple[str, str], str]:
    """For each pair of profiles (names sorted), the one that wins a pod both match."""
    ordered = sorted(profiles, key=lambda p: p.precedence)
    found: dict[tuple[str, str], str] = {}
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            found[pair(a.name, b.name)] = a.name
    return found


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


# --- what of-watchdog needs on SIGTERM (for `pitstop plan`) ---

_GO_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|m|s|us|ns))+$")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def go_duration(text: str) -> float | None:
    """Seconds of a Go duration ("10s", "1m30s") or a plain number of seconds."""
    s = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    if not _GO_DURATION.fullmatch(s):
        return None
    return sum(float(n) * _UNIT[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", s))


WATCHDOG_WRITE_TIMEOUT = 10.0
"""of-watchdog's default write_timeout (seconds)."""


WATCHDOG_METRIC = "http_requests_in_flight"
"""of-watchdog's in-flight gauge: a profile reading it describes watchdog pods."""
WATCHDOG_ENV = frozenset({"write_timeout", "healthcheck_interval", "exec_timeout"})


def watchdog_grace(pod: Mapping[str, Any], profile: Profile | None) -> tuple[float, int] | None:
    """(needed, configured) termination grace seconds of an of-watchdog pod whose
    grace is too short, else None. On SIGTERM the watchdog keeps accepting for
    healthcheck_interval (default: write_timeout), then waits up to write_timeout
    for the requests in flight: the grace period must exceed their sum, or the
    kubelet's SIGKILL cuts them. A pod is a watchdog when its profile reads
    http_requests_in_flight, or when a container sets the watchdog's timeouts."""
    spec = pod.get("spec") or {}
    configured = spec.get("terminationGracePeriodSeconds")
    configured = 30 if configured is None else int(configured)
    prom = profile.spec.tasks.prometheus if profile is not None else None
    by_profile = prom is not None and prom.metric == WATCHDOG_METRIC
    worst: float | None = None
    for container in spec.get("containers") or []:
        env = {
            str(e.get("name")): str(e.get("value"))
            for e in container.get("env") or []
            if e.get("value") is not None
        }
        if not by_profile and not WATCHDOG_ENV & set(env):
            continue
        write = go_duration(env.get("write_timeout", "")) or WATCHDOG_WRITE_TIMEOUT
        health = go_duration(env.get("healthcheck_interval", "")) or write
        needed = health + write
        worst = needed if worst is None else max(worst, needed)
    if worst is None or configured > worst:
        return None
    return worst, configured


__all__ = [
    "ANNOTATION",
    "HTTP",
    "HTTP_POST",
    "INVALID",
    "NONE",
    "PROMETHEUS",
    "UNREACHABLE",
    "Census",
    "InvalidProfile",
    "Match",
    "Polled",
    "Profile",
    "Reading",
    "Request",
    "SignalState",
    "SourceError",
    "census",
    "check_status",
    "describe_signal",
    "describe_tasks",
    "drain_signal",
    "go_duration",
    "kind",
    "match",
    "parse_answer",
    "parse_json_field",
    "parse_plain",
    "parse_profile",
    "parse_prometheus",
    "polled",
    "profile_status",
    "resolve_port",
    "signal_failed",
    "signal_request",
    "signal_time",
    "task_source",
    "url",
    "watchdog_grace",
    "winners",
]
