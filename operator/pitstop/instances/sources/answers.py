"""What an instance's answer means: a count is the sum of the matching series of a
Prometheus gauge, or a plain integer, or a JSON field, or what a Knative
queue-proxy's stats window saw. Anything else is an error, and an error counts as
busy: a metric that is absent (a wrong name) is not 0. Pure."""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pitstop.instances.sources.errors import INVALID, UNREACHABLE, SourceError
from pitstop.instances.sources.profiles import Profile
from pitstop.models import LabelMatcher, MatchOperator, PrometheusTasks


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


def _varint(raw: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(raw) or shift > 63:
            raise SourceError(INVALID, "not a Knative Stat: truncated varint")
        byte = raw[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _protobuf_doubles(raw: bytes) -> dict[int, float]:
    """The double (64-bit) fields of one protobuf message by number; the others
    are skipped. Enough for Knative's `Stat`, whose figures are all doubles."""
    doubles: dict[int, float] = {}
    at = 0
    while at < len(raw):
        key, at = _varint(raw, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, at = _varint(raw, at)
        elif wire == 1:
            if at + 8 > len(raw):
                raise SourceError(INVALID, "not a Knative Stat: truncated field")
            doubles[number] = struct.unpack_from("<d", raw, at)[0]
            at += 8
        elif wire == 2:
            size, at = _varint(raw, at)
            at += size
        elif wire == 5:
            at += 4
        else:
            raise SourceError(INVALID, f"not a Knative Stat: wire type {wire}")
        if at > len(raw):
            raise SourceError(INVALID, "not a Knative Stat: truncated field")
    return doubles


STAT_CONCURRENCY, STAT_REQUESTS, STAT_UPTIME = 2, 4, 6
"""knative.dev/serving pkg/autoscaler/metrics/stat.proto: average_concurrent_requests,
request_count (requests that arrived in the window) and process_uptime."""


def parse_knative_stat(raw: bytes) -> int:
    """What the queue-proxy's last 1-second window saw: its time-weighted average
    concurrency rounded up, and at least 1 if a request arrived in it. So 0 only
    when no request was in flight at any moment of the window, nor arrived in it.

    A queue-proxy that has not reported a window yet (process_uptime 0, the first
    second) gives no count."""
    doubles = _protobuf_doubles(raw)
    if doubles.get(STAT_UPTIME, 0.0) <= 0:
        raise SourceError(INVALID, "no Knative Stat window reported yet (process_uptime 0)")
    # Rounded first: the queue-proxy's sum of products leaves float noise (3 requests
    # read 3.0000000000000004). A request still in flight at the window's end spans
    # the whole window (average >= 1) or arrived in it (request_count), so a tiny
    # average rounded away is only one that ended early in the window.
    concurrency = round(doubles.get(STAT_CONCURRENCY, 0.0), 6)
    average = _as_count(concurrency, "average_concurrent_requests")
    arrived = _as_count(doubles.get(STAT_REQUESTS, 0.0), "request_count")
    return max(average, 1 if arrived else 0)


def parse_answer(profile: Profile, body: str | bytes) -> int:
    """The count in a polled source's answer (SourceError when there is none)."""
    t = profile.spec.tasks
    if t.knative is not None:
        return parse_knative_stat(body if isinstance(body, bytes) else body.encode())
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
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
