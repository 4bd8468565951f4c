"""What an instance's answer means: a count is the sum of the matching series of a
Prometheus gauge, or a plain integer, or a JSON field. Anything else is an error,
and an error counts as busy: a metric that is absent (a wrong name) is not 0. Pure."""

from __future__ import annotations

import json
import math
import re
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
