"""Bad input, fuzzed (hypothesis), without a cluster: the Alertmanager receiver's
payload parser, the webhook answer parser, and the names pitstop derives from
outside strings (alert labels, node names). Each either returns well-typed values
or refuses with a short, clear message; no other exception ever escapes.

tests/e2e/test_bad_input.py does the same over real HTTP against the running operator."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from unittest import mock

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pitstop.models.noderepair import DNS_SUBDOMAIN_PATTERN
from pitstop.pool import alerts
from pitstop.pool import arithmetic as policy
from pitstop.repair import hooks
from pitstop.repair.flow import WebhookAnswer

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Modest example counts keep `make unit` fast; CI runs them on every change."""

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
"""A Kubernetes label value (at most 63 characters, checked apart)."""

# Any JSON value: the shapes an attacker (or a broken sender) can put in a body.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
unicode_text = st.text(st.characters(codec="utf-8"), max_size=40)


def deep(depth: int, opener: bytes = b"[") -> bytes:
    return opener * depth


# --- the receiver's parse() ---


def refused_clearly(raw: bytes) -> list[alerts.Parsed] | str:
    """parse(raw): its alerts, or the message of its ValueError (any other exception
    fails the test)."""
    try:
        found = alerts.parse(raw)
    except ValueError as e:
        message = str(e)
        assert message, "a refusal says why"
        assert len(message) < 300, f"a refusal is one short line: {message[:400]!r}"
        return message
    for name, labels, starts_at, firing, ends_at in found:
        assert isinstance(name, str) and name
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        assert labels["alertname"] == name
        assert isinstance(starts_at, str)
        assert isinstance(firing, bool)
        assert ends_at is None or ends_at.tzinfo is not None
    return found


@FUZZ
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xff\xfe\x00")
@example(deep(100_000))
@example(deep(100_000, b'{"a":'))
@example(b'{"version": "4", "alerts": ' + deep(50_000) + b"]")
@example(b"1" * 5000)  # an integer longer than int() takes from a string
@example(b"NaN")
def test_parse_any_bytes(raw: bytes) -> None:
    refused_clearly(raw)


@FUZZ
@given(json_values)
def test_parse_any_json(value: Any) -> None:
    refused_clearly(json.dumps(value).encode())


alert_like = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["firing", "resolved", "Firing", ""]) | json_values,
        "labels": st.dictionaries(unicode_text, unicode_text, max_size=4) | json_values,
        "startsAt": json_values,
        "endsAt": st.sampled_from(["0001-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "x"])
        | json_values,
    },
)


@FUZZ
@given(
    st.fixed_dictionaries(
        {"alerts": st.lists(alert_like | json_values, max_size=4) | json_values},
        optional={"version": st.sampled_from(["4", 4, "3", None]) | json_values},
    )
)
def test_parse_payload_shaped_json(payload: dict[str, Any]) -> None:
    """Mostly right, somewhere wrong: the refusal names the part that is wrong."""
    result = refused_clearly(json.dumps(payload).encode())
    if isinstance(result, str):
        assert any(w in result for w in ("version", "alerts", "JSON")), result


@FUZZ
@given(
    st.lists(
        st.tuples(
            unicode_text.filter(bool),
            st.dictionaries(unicode_text, unicode_text, max_size=4),
            st.booleans(),
            unicode_text,
        ),
        max_size=5,
    )
)
def test_parse_valid_payloads_with_unicode_labels(
    given_alerts: list[tuple[str, dict[str, str], bool, str]],
) -> None:
    body = {
        "version": "4",
        "alerts": [
            {
                "status": "firing" if firing else "resolved",
                "labels": {**labels, "alertname": name},
                "startsAt": starts_at,
            }
            for name, labels, firing, starts_at in given_alerts
        ],
    }
    for raw in (json.dumps(body).encode(), json.dumps(body, ensure_ascii=False).encode()):
        assert alerts.parse(raw) == [
            (name, {**labels, "alertname": name}, starts_at, firing, None)
            for name, labels, firing, starts_at in given_alerts
        ]


def test_parse_quotes_wrong_values_briefly() -> None:
    huge = json.dumps({"version": "x" * 100_000, "alerts": []}).encode()
    with pytest.raises(ValueError, match=r"unsupported payload version 'xxx.*…: expected") as e:
        alerts.parse(huge)
    assert len(str(e.value)) < 200
    with pytest.raises(ValueError, match="nested too deeply"):
        alerts.parse(deep(100_000))


# --- the webhook answer ---

STATES = ("Succeeded", "Failed", "Running", "Error")


def checked_answer(status: int, raw: bytes) -> WebhookAnswer:
    answer = hooks.parse_answer(3, status, raw)
    assert isinstance(answer, WebhookAnswer)
    assert answer.attempt == 3
    assert answer.state in STATES
    assert isinstance(answer.message, str)
    assert len(answer.message) <= hooks.MAX_MESSAGE + 200
    if answer.state == "Error":
        assert answer.message.startswith("webhook "), answer.message
    return answer


@FUZZ
@given(st.integers(100, 599), st.binary(max_size=512))
@example(200, deep(hooks.MAX_ANSWER))
@example(200, b"{" * hooks.MAX_ANSWER)
@example(200, b"x" * (hooks.MAX_ANSWER + 1))
@example(200, b"\xff\xfe")
@example(200, b'{"status": ["Succeeded"]}')  # unhashable: once a TypeError
@example(200, b'{"status": {"a": 1}}')
def test_answer_any_bytes(status: int, raw: bytes) -> None:
    answer = checked_answer(status, raw)
    if not 200 <= status < 300:
        assert answer == WebhookAnswer(3, "Error", f"webhook answered HTTP {status}")


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "status": st.sampled_from(["Succeeded", "Failed", "Running", "Done"]) | json_values,
            "message": unicode_text | json_values,
        },
    )
    | json_values
)
def test_answer_any_json(value: Any) -> None:
    answer = checked_answer(200, json.dumps(value).encode())
    good = isinstance(value, dict) and value.get("status") in STATES[:3]
    assert (answer.state != "Error") == good, (value, answer)
    if good and isinstance(value.get("message"), str):
        assert answer.message == value["message"][: hooks.MAX_MESSAGE - 1] or (
            len(value["message"]) > hooks.MAX_MESSAGE
        )


def test_answer_message_is_cut() -> None:
    raw = json.dumps({"status": "Failed", "message": "é" * 20_000}, ensure_ascii=False).encode()
    answer = hooks.parse_answer(1, 200, raw)
    assert answer.state == "Failed"
    assert len(answer.message) == hooks.MAX_MESSAGE and answer.message.endswith("…")


def test_answer_too_large() -> None:
    raw = json.dumps({"status": "Succeeded", "pad": "x" * hooks.MAX_ANSWER}).encode()
    assert hooks.parse_answer(1, 200, raw) == WebhookAnswer(
        1, "Error", "webhook answer larger than 64 KiB"
    )


# --- names derived from outside strings ---

dns_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
node_names = (
    st.lists(dns_label, min_size=1, max_size=12).map(".".join).filter(lambda n: len(n) <= 253)
)


@FUZZ
@given(node_names, st.text(max_size=40), unicode_text)
@example("a" * 241 + ".b", "Ready", "x")  # the cut falls right after a dot
@example("a" * 253, "İ" * 30, "")
def test_repair_names_are_valid_object_names(node: str, alertname: str, starts_at: str) -> None:
    """An alert's name and startsAt come from outside: the repair name made from
    them is a valid object name, or the API server would refuse the NodeRepair."""
    for key in (f"alert-{alertname}/{starts_at}", f"{alertname}/True/{starts_at}"):
        name = policy.repair_name(node, key)
        assert len(name) <= 253, name
        assert re.fullmatch(DNS_SUBDOMAIN_PATTERN, name), name
        assert policy.repair_name(node, key) == name, "deterministic"


@FUZZ
@given(node_names)
def test_label_values_of_repair_names(repair: str) -> None:
    value = hooks.label_value(repair)
    assert len(value) <= 63
    assert LABEL_VALUE.fullmatch(value), value


# --- reading the webhook's answer ---


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(1, 700), min_size=1, max_size=20))
def test_read_limited_reads_an_answer_that_arrives_in_pieces(body: bytes, cuts: list[int]) -> None:
    """One StreamReader.read(n) returns what has arrived so far; read_limited goes
    on to the end (or the limit), however the answer was split."""

    async def read(limit: int) -> bytes:
        stream = aiohttp.StreamReader(mock.Mock(_reading_paused=False), 2**16)

        async def feed() -> None:
            rest = body
            for cut in cuts:
                piece, rest = rest[:cut], rest[cut:]
                if piece:
                    stream.feed_data(piece)
                await asyncio.sleep(0)
            if rest:
                stream.feed_data(rest)
            stream.feed_eof()

        feeder = asyncio.create_task(feed())
        got = await hooks.read_limited(stream, limit)
        await feeder
        return got

    assert asyncio.run(read(len(body) + 1)) == body
    assert asyncio.run(read(1000)) == body[:1000]
