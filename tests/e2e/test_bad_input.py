"""Bad input, fuzzed, against the running operator on the real control plane
(DESIGN.md invariant 7: a clear message, never a crash loop):

- the Alertmanager receiver over real HTTP: hypothesis-generated bodies (bytes,
  any JSON, payload-shaped JSON with unicode names and labels) and a fixed corpus
  (deep nesting, > 1 MiB with and without Content-Length, wrong tokens, other
  paths and methods): every answer is a 2xx/4xx JSON object, in time, and the
  operator keeps running and still acts on a valid alert;
- slow clients (slowloris): many connections trickling headers or bodies while a
  well-behaved client keeps getting timely answers; the server closes them within
  a bounded time;
- the webhook client against a hostile repair service: garbage, wrong types, huge,
  trickled and never-ending answers, resets, redirects, 5xx: each ends in a Failed
  NodeRepair whose condition and lastError say what was wrong, within the webhook's
  timeout;
- invalid NodeRepairs and RepairPolicies, refused at admission with a message that
  names the field and the rule.

The receiver's unit-level twin (no cluster) is tests/unit/test_bad_input.py."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import selectors
import socket
import socketserver
import statistics
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from pitstop.pool import alerts as receiver
from tests.e2e.helpers import cond, log_since, make_pool
from tests.e2e.kube import Cluster
from tests.e2e.operator import Operator
from tests.e2e.policies_helpers import (
    Policies,
    Reply,
    alert,
    alerts_token_fixture,  # noqa: F401  (the `alerts_token` fixture)
    payload,
    policies_fixture,  # noqa: F401  (the `policies` fixture)
    post,
)
from tests.e2e.repairs import Repairs
from tests.e2e.test_alerts import ALERT, alert_policy, one_repair
from tests.e2e.test_crds import dry_run, node_repair, repair_policy

pytestmark = pytest.mark.e2e

NS = "pitstop-system"
ANSWER_WITHIN = 5.0
"""Seconds any answer of the receiver may take (2 shared CPUs, 5 other test runs)."""


# --- the receiver: fuzzed bodies over HTTP ---


def judged(reply: Reply, seconds: float) -> None:
    """A 2xx or 4xx answer, a JSON object that says what happened, in time."""
    assert 200 <= reply.status < 500, reply
    assert isinstance(reply.body, dict), f"not a JSON object: {reply}"
    if reply.status == 200:
        assert set(reply.body) == {"accepted", "firing"}, reply
    else:
        assert isinstance(reply.body.get("error"), str) and reply.body["error"], reply
        assert len(reply.body["error"]) < 300, f"a refusal is one short line: {reply}"
    assert seconds < ANSWER_WITHIN, f"answered after {seconds:.1f}s: {reply}"


def timed_post(port: int, body: bytes, token: str | None, **kw: Any) -> Reply:
    start = time.monotonic()
    reply = post(port, body, token, **kw)
    judged(reply, time.monotonic() - start)
    return reply


class Unharmed:
    """The operator process at the start of a test; `check()` proves it neither
    exited nor was restarted, answers /healthz, and logged no unhandled error."""

    def __init__(self, op: Operator):
        self.op, self.starts, self.offset = op, op.starts, op.log.stat().st_size

    def check(self) -> None:
        assert self.op.proc is not None and self.op.proc.poll() is None, "operator exited"
        assert self.op.starts == self.starts, "operator was restarted"
        assert self.op.healthy(), "/healthz does not answer"
        log = log_since(self.op, self.offset)
        for sign in ("Traceback", "Error handling request", "Unhandled exception"):
            assert sign not in log, log[log.index(sign) - 2000 : log.index(sign) + 3000]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
unicode_text = st.text(st.characters(codec="utf-8"), max_size=30)
alert_like = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["firing", "resolved"]) | json_values,
        # unicode node names and label values; no policy selects such nodes
        "labels": st.dictionaries(
            st.sampled_from(["alertname", "node", "severity"]) | unicode_text,
            unicode_text,
            max_size=4,
        )
        | json_values,
        "startsAt": unicode_text | json_values,
    },
)
good_alert = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["firing", "resolved"]),
        "labels": st.dictionaries(unicode_text, unicode_text, max_size=3).flatmap(
            lambda labels: unicode_text.filter(bool).map(
                lambda name: {**labels, "alertname": name, "node": name[::-1]}
            )
        ),
        "startsAt": unicode_text,
    }
)
bodies = st.one_of(
    st.binary(max_size=1024),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"alerts": st.lists(alert_like | good_alert, max_size=4) | json_values},
        optional={"version": st.sampled_from(["4", 4, "3"]) | json_values},
    ).map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
    # valid payloads: unicode alert names, node names and label values
    st.lists(good_alert, max_size=5).map(
        lambda a: json.dumps({"version": "4", "alerts": a}, ensure_ascii=False).encode()
    ),
)
FUZZED: list[int] = []
"""Statuses of the fuzzed requests (reported by the test after this one)."""


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_receiver_fuzzed_bodies(running_operator: Operator, alerts_token: str, body: bytes) -> None:
    reply = timed_post(running_operator.alerts_port, body, alerts_token)
    FUZZED.append(reply.status)


header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=100,
)
"""Any header value http.client sends (it encodes them as latin-1: any byte but controls)."""


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(authorization=header_values, content_type=header_values)
def test_receiver_fuzzed_headers(
    running_operator: Operator, alerts_token: str, authorization: str, content_type: str
) -> None:
    headers = {"Authorization": authorization, "Content-Type": content_type}
    reply = timed_post(running_operator.alerts_port, payload(), None, headers=headers)
    assert reply.status == 401, reply
    FUZZED.append(reply.status)


def deep(depth: int, opener: bytes = b"[") -> bytes:
    return opener * depth


def big_alert() -> bytes:
    return payload(alert(ALERT, "n", filler="x" * (1024 * 1024)))


def in_pieces(body: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


UNICODE_NODES = ["nöde-1", "узел-7", "节点", "🔥", "a\u0000b", "\u202enode", "x" * 300]

CORPUS: list[tuple[str, bytes | Callable[[], Any], dict[str, Any], int, str]] = [
    # (id, body, post() options, status, in the error message)
    ("empty", b"", {}, 400, "JSON"),
    ("not-json", b"<html>hello</html>", {}, 400, "JSON"),
    ("not-utf8", b'{"version": "4", "alerts": [\xff\xfe]}', {}, 400, "JSON"),
    ("nul-bytes", b"\x00" * 1000, {}, 400, "JSON"),
    ("deep-array", deep(200_000), {}, 400, "nested too deeply"),
    ("deep-object", deep(100_000, b'{"a":'), {}, 400, "nested too deeply"),
    ("deep-in-alerts", b'{"version":"4","alerts":' + deep(300_000), {}, 400, "nested too deeply"),
    ("huge-integer", b"9" * 100_000, {}, 400, "JSON"),
    ("array", b"[]", {}, 400, "object"),
    ("version-huge", json.dumps({"version": "4" * 500_000}).encode(), {}, 400, "version"),
    ("version-object", b'{"version": {"v": 4}, "alerts": []}', {}, 400, "version"),
    ("alerts-object", b'{"version": "4", "alerts": {"a": 1}}', {}, 400, "alerts must be a list"),
    ("alert-string", b'{"version": "4", "alerts": ["x"]}', {}, 400, "alerts[0] must be"),
    (
        "labels-int",
        json.dumps({"version": "4", "alerts": [{"labels": {"alertname": 1}}]}).encode(),
        {},
        400,
        "alerts[0].labels must map strings to strings",
    ),
    (
        "status-huge",
        json.dumps(
            {"version": "4", "alerts": [{"labels": {"alertname": "A"}, "status": "f" * 10**5}]}
        ).encode(),
        {},
        400,
        "alerts[0].status must be firing or resolved",
    ),
    (
        "unicode-nodes",
        payload(*(alert("Ünicode ✓", n, severity="крит") for n in UNICODE_NODES)),
        {},
        200,
        "",
    ),
    (
        "unicode-raw-utf8",
        json.dumps(
            json.loads(payload(*(alert(ALERT, n) for n in UNICODE_NODES))), ensure_ascii=False
        ).encode(),
        {},
        200,
        "",
    ),
    ("just-under-1MiB-deep", deep(1024 * 1024 - 1), {}, 400, "nested too deeply"),
    ("over-1MiB", big_alert, {}, 413, "larger"),
    ("over-1MiB-chunked", lambda: in_pieces(big_alert()), {"chunked": True}, 413, "larger"),
    ("no-token", payload(), {"token": None}, 401, "token"),
    ("wrong-token", payload(), {"token": "wrong"}, 401, "token"),
    ("token-unicode", payload(), {"token": "ключ"}, 401, "token"),
    (  # bytes that are not UTF-8, sent as they are (http.client encodes headers as latin-1)
        "token-not-utf8",
        payload(),
        {"token": None, "headers": {"Authorization": "Bearer \xff\xfe\x80"}},
        401,
        "token",
    ),
    ("text-plain", payload(), {"headers": {"Content-Type": "text/plain"}}, 200, ""),
]


@pytest.mark.parametrize(
    ("body", "options", "status", "message"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS]
)
def test_receiver_corpus(
    running_operator: Operator,
    alerts_token: str,
    body: bytes | Callable[[], Any],
    options: dict[str, Any],
    status: int,
    message: str,
) -> None:
    unharmed = Unharmed(running_operator)
    kw = dict(options)
    token = kw.pop("token", alerts_token)
    if "token" in options and token is not None:
        # a token with non-ASCII characters cannot go into a header as text: send its UTF-8
        kw.setdefault("headers", {})["Authorization"] = "Bearer " + token.encode().decode("latin-1")
        token = None
    raw = body() if callable(body) else body
    reply = timed_post(running_operator.alerts_port, raw, token, **kw)
    assert reply.status == status, reply
    if message:
        assert message in reply.body["error"], reply
    unharmed.check()


def test_receiver_other_paths_and_methods_answer_json(
    running_operator: Operator, alerts_token: str
) -> None:
    port = running_operator.alerts_port
    for method, path, status in (("GET", "/alerts", 405), ("POST", "/other", 404)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, body=b"{}" if method == "POST" else None)
            resp = conn.getresponse()
            body = json.loads(resp.read())
        finally:
            conn.close()
        assert resp.status == status, (method, path, resp.status)
        assert "POST /alerts" in body["error"], body


def test_receiver_protocol_garbage(running_operator: Operator) -> None:
    """Not HTTP at all: aiohttp's parser refuses it (400, before any handler) and
    closes; nothing reaches pitstop's code."""
    unharmed = Unharmed(running_operator)
    for garbage in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200),  # a TLS ClientHello
        b"POST /alerts HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /alerts HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST /alerts HTTP/1.1\r\n" + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", running_operator.alerts_port), 10) as s:
            s.sendall(garbage)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    answer += chunk
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
        assert status is None or 400 <= status < 500, answer[:300]
    unharmed.check()


def raw_exchange(port: int, request: bytes, half_close: bool = False) -> bytes:
    """Sends `request` as it is (then, with `half_close`, its end of the connection),
    and reads until the server closes."""
    with socket.create_connection(("127.0.0.1", port), ANSWER_WITHIN + receiver.READ_TIMEOUT) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
    return answer


def test_receiver_broken_bodies(running_operator: Operator, alerts_token: str) -> None:
    """Valid headers, with the token, and a body that breaks its transfer or content
    coding: a 400 that says so (JSON where the handler answers), or a 408 for one cut
    short; a client that goes away mid-body gets nothing (it cannot), and in no case
    does an unhandled error reach the log."""
    unharmed = Unharmed(running_operator)
    head = (
        "POST /alerts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {alerts_token}\r\n"
    ).encode()
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n"
    unreadable = b'{"error": "body cannot be read: '
    cases = [
        (chunked + b"zz\r\nhello\r\n0\r\n\r\n", False, 400, b""),  # size not hex
        (chunked + b"5\r\nhelloXX0\r\n\r\n", False, 400, b""),  # no CRLF after the chunk
        (chunked + b"ffffffffffffffffffff\r\n", False, 400, b""),  # a size past any limit
        (head + b"Content-Length: 2\r\nContent-Encoding: gzip\r\n\r\n{}", False, 400, unreadable),
        (head + b"Content-Length: 2\r\nContent-Encoding: br\r\n\r\n{}", False, 400, b""),
        (head + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", False, 400, b""),
        (head + b"Content-Length: 100\r\n\r\n{}", False, 408, b'"body not received within'),
        (chunked + b"3\r\n{}\n", False, 408, b'"body not received within'),
        (head + b"Content-Length: 100\r\n\r\n{}", True, None, b""),  # gone mid-body
        (chunked + b"3\r\n{}\n", True, None, b""),
    ]

    def exchange(case: tuple[bytes, bool, int | None, bytes]) -> bytes:
        return raw_exchange(running_operator.alerts_port, case[0], case[1])

    # at once: the cut-short ones each wait READ_TIMEOUT for their 408
    with ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(exchange, cases))
    for (body, _, status, says), answer in zip(cases, answers, strict=True):
        got = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
        assert got == status, (body[-60:], answer[:300])
        assert says in answer, (body[-60:], answer[:300])
    unharmed.check()


def test_receiver_acts_on_a_valid_alert_after_bad_input(
    cluster: Cluster, pool: Any, policies: Policies, running_operator: Operator, alerts_token: str
) -> None:
    # What the fuzzing before did, in brief, right before the valid alert.
    unharmed = Unharmed(running_operator)
    port = running_operator.alerts_port
    for raw in (deep(500_000), b"\xff" * 5000, big_alert(), payload(alert(ALERT, "nöde"))):
        timed_post(port, raw, alerts_token)
    p = pool(1)
    rp = policies.create(p, alert_policy(p))
    policies.wait_observed(rp)
    reply = timed_post(port, payload(alert(ALERT, p.names[0])), alerts_token)
    assert reply.body == {"accepted": 1, "firing": 1}, reply
    repair = one_repair(cluster, p.names[0])
    assert repair["spec"]["nodeName"] == p.names[0]
    unharmed.check()
    statuses = {s: FUZZED.count(s) for s in sorted(set(FUZZED))}
    print(f"\nfuzzed receiver requests: {len(FUZZED)}, by status: {statuses}")


# --- slow clients (slowloris) ---


@dataclass
class Slow:
    """A connection that sends its request one byte a second."""

    sock: socket.socket
    opened: float
    rest: bytes
    answer: bytes = b""
    closed: float | None = None


def open_slow(port: int, head: bytes, rest: bytes) -> Slow:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head)
    s.setblocking(False)
    return Slow(s, time.monotonic(), rest)


LINGER = 10.0
"""aiohttp's lingering_time: how long it goes on reading a body it did not use."""


def test_slowloris(running_operator: Operator, alerts_token: str) -> None:
    """100 connections trickling their headers, 30 with the token trickling a body,
    20 without it trickling a body; meanwhile a normal client posts an alert every
    0.25 s. The receiver closes the header tricklers after IDLE_TIMEOUT (aiohttp's
    keep-alive timer runs from the connection's start), answers the authenticated
    body tricklers 408 after READ_TIMEOUT, the others 401 at once; aiohttp then
    reads (and drops) what they still send for its lingering time, LINGER, and
    closes them."""
    unharmed = Unharmed(running_operator)
    port = running_operator.alerts_port
    auth = f"Authorization: Bearer {alerts_token}\r\n".encode()
    body_head = b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
    groups: dict[str, list[Slow]] = {
        "headers": [
            open_slow(port, b"POST /alerts HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 1000)
            for _ in range(100)
        ],
        "body": [open_slow(port, body_head + auth + b"\r\n{", b" " * 1000) for _ in range(30)],
        "body-no-token": [open_slow(port, body_head + b"\r\n{", b" " * 1000) for _ in range(20)],
    }
    slow = [c for g in groups.values() for c in g]
    sel = selectors.DefaultSelector()
    for c in slow:
        sel.register(c.sock, selectors.EVENT_READ, c)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for c in slow:
                if c.closed is None and c.rest:
                    try:
                        c.sock.send(c.rest[:1])
                        c.rest = c.rest[1:]
                    except (BlockingIOError, BrokenPipeError, ConnectionResetError, OSError):
                        pass
            stop.wait(1.0)

    def watch() -> None:
        while not stop.is_set() and any(c.closed is None for c in slow):
            for key, _ in sel.select(timeout=0.2):
                c = key.data
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except (ConnectionResetError, OSError):
                    data = b""
                if data:
                    c.answer += data
                else:
                    c.closed = time.monotonic()
                    sel.unregister(c.sock)

    threads = [threading.Thread(target=f, daemon=True) for f in (trickle, watch)]
    for t in threads:
        t.start()
    latencies: list[float] = []
    deadline = time.monotonic() + receiver.IDLE_TIMEOUT + 15
    try:
        while any(c.closed is None for c in slow) and time.monotonic() < deadline:
            start = time.monotonic()
            reply = post(port, payload(alert("NotOnAnyPolicy", "nowhere")), alerts_token)
            latencies.append(time.monotonic() - start)
            assert reply.status == 200, reply
            time.sleep(0.25)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        for c in slow:
            c.sock.close()

    open_left = {name: sum(1 for c in g if c.closed is None) for name, g in groups.items()}
    assert not any(open_left.values()), f"still open after the deadline: {open_left}"
    lived = {name: max(c.closed - c.opened for c in g if c.closed) for name, g in groups.items()}
    print(
        f"\nslowloris: {len(slow)} slow connections; normal client: {len(latencies)} requests,"
        f" p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms;"
        f" longest-lived slow connection by kind: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in lived.items())
    )
    # Every answer within the bound any answer has (the median is printed above: a
    # figure of the machine's load, not a property of the receiver).
    assert max(latencies) < ANSWER_WITHIN, latencies
    assert lived["headers"] <= receiver.IDLE_TIMEOUT + 5, lived
    assert lived["body"] <= receiver.READ_TIMEOUT + LINGER + 5, lived
    assert lived["body-no-token"] <= LINGER + 5, lived
    for c in groups["headers"]:
        assert c.answer == b"", c.answer[:200]  # closed without a word: it never asked
    for c in groups["body"]:
        assert c.answer.startswith(b"HTTP/1.1 408"), c.answer[:200]
        assert b'"error": "body not received within' in c.answer, c.answer[:400]
    for c in groups["body-no-token"]:
        assert c.answer.startswith(b"HTTP/1.1 401"), c.answer[:200]
    unharmed.check()


# --- the webhook client against a hostile repair service ---


def answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def j(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    at: float


@dataclass
class Hostile:
    """A repair service that misbehaves as the request's path says (one path per
    case), on raw sockets: it can reset, stall, trickle and lie about lengths."""

    other: Hostile | None = None
    requests: list[Seen] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        hostile = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                hostile.serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Hostile:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def serve(self, s: socket.socket) -> None:
        s.settimeout(60)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        need = int(headers.get("content-length") or 0)
        while len(rest) < need:
            rest += s.recv(65536)
        self.requests.append(Seen(path, headers, time.monotonic()))
        with contextlib.suppress(OSError):
            self.misbehave(path.strip("/"), s)

    def misbehave(self, case: str, s: socket.socket) -> None:
        send = s.sendall
        if case == "garbage":
            send(answer(200, b"\x00\xff not json, not even text"))
        elif case == "status-list":
            send(answer(200, j({"status": ["Succeeded"]})))
        elif case == "status-number":
            send(answer(200, j({"status": 1})))
        elif case == "json-null":
            send(answer(200, b"null"))
        elif case == "empty-200":
            send(answer(200, b""))
        elif case == "message-object":
            send(answer(200, j({"status": "Failed", "message": {"why": ["disk", 1]}})))
        elif case == "unicode-message":
            send(answer(200, j({"status": "Failed", "message": "диск ✗ 💥 \u202e"})))
        elif case == "long-message":
            send(answer(200, j({"status": "Failed", "message": "é" * 20_000})))
        elif case == "deep":
            send(answer(200, b"[" * 60_000))
        elif case == "huge":
            send(answer(200, b'{"status": "Succeeded", "pad": "' + b"x" * 2**20 + b'"}'))
        elif case == "huge-chunked":
            send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(64):
                send(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
            send(b"0\r\n\r\n")
        elif case == "trickled":
            whole = answer(200, j({"status": "Failed", "message": "read to the end"}))
            for i in range(0, len(whole), 7):
                send(whole[i : i + 7])
                time.sleep(0.02)
        elif case == "slow-forever":
            send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while not self.stop.wait(0.3):
                send(b"1\r\n \r\n")
        elif case == "no-answer":
            self.stop.wait(60)
        elif case == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif case == "close":
            pass
        elif case == "short-body":
            send(answer(200, b'{"status": "Succ')[:-5].replace(b"Length: 16", b"Length: 99"))
        elif case == "bad-status-line":
            send(b"HELLO WORLD\r\n\r\n")
        elif case == "http-503":
            send(answer(503, b"<html>busy</html>"))
        elif case == "redirect-loop":
            send(answer(307, b"", b"Location: /redirect-loop\r\n"))
        elif case == "redirect-elsewhere":
            assert self.other is not None
            send(answer(307, b"", f"Location: {self.other.base}/moved\r\n".encode()))
        elif case == "moved":
            send(answer(200, j({"status": "Failed", "message": "answered after the redirect"})))
        else:
            send(answer(404, b"no such case"))


CALL_TIMEOUT = 2
NOT_STATUS = 'webhook answer is not {"status": Succeeded|Failed|Running}: '
UNREACHABLE = "webhook unreachable: "
HOSTILE: dict[str, Callable[[str], bool]] = {
    # case -> what lastError must say
    "garbage": lambda e: e.startswith(NOT_STATUS) and "not json" in e,
    "status-list": lambda e: e.startswith(NOT_STATUS),
    "status-number": lambda e: e.startswith(NOT_STATUS),
    "json-null": lambda e: e == NOT_STATUS + "'null'",
    "empty-200": lambda e: e == NOT_STATUS + "''",
    "message-object": lambda e: e == '{"why": ["disk", 1]}',
    "unicode-message": lambda e: e == "диск ✗ 💥 \u202e",
    "long-message": lambda e: len(e) == 1024 and e.endswith("…"),
    "deep": lambda e: e.startswith(NOT_STATUS + "'[[["),
    "huge": lambda e: e == "webhook answer larger than 64 KiB",
    "huge-chunked": lambda e: e == "webhook answer larger than 64 KiB",
    "trickled": lambda e: e == "read to the end",
    "slow-forever": lambda e: e == f"webhook timed out after {CALL_TIMEOUT}s",
    "no-answer": lambda e: e == f"webhook timed out after {CALL_TIMEOUT}s",
    "reset": lambda e: e.startswith(UNREACHABLE),
    "close": lambda e: e.startswith(UNREACHABLE + "ServerDisconnectedError"),
    "short-body": lambda e: e.startswith(UNREACHABLE),
    "bad-status-line": lambda e: e.startswith(UNREACHABLE),
    "http-503": lambda e: e == "webhook answered HTTP 503",
    "redirect-loop": lambda e: e.startswith(UNREACHABLE + "TooManyRedirects"),
    "redirect-elsewhere": lambda e: e == "answered after the redirect",
}
RETRIED = "http-503"
"""The one case with two attempts: the retry is reported too."""


@pytest.fixture
def token_secret(cluster: Cluster) -> Iterator[tuple[str, str]]:
    name, token = f"hostile-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels={"pitstop.dev/webhook-secret": "true"}),
        data={"token": base64.b64encode(token.encode()).decode()},
    )
    cluster.core.create_namespaced_secret(NS, body)
    yield name, token
    cluster.core.delete_namespaced_secret(name, NS)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_hostile_webhook(
    cluster: Cluster,
    pool: Any,
    repairs: Repairs,
    running_operator: Operator,
    token_secret: tuple[str, str],
) -> None:
    """Every case at once, one node each: each repair ends Failed with a lastError
    and a Repaired=False condition that say what was wrong, each attempt within the
    webhook's timeout (plus scheduling slack), and the operator keeps running."""
    unharmed = Unharmed(running_operator)
    secret, token = token_secret
    nodes = make_pool(cluster, pool, len(HOSTILE)).names
    with Hostile() as other, Hostile(other=other) as hostile:
        names = {}
        for case, node in zip(HOSTILE, nodes, strict=True):
            names[case] = repairs.create(
                node,
                reason=f"hostile webhook: {case}",
                repair={
                    "strategy": "Webhook",
                    "webhook": {
                        "url": f"{hostile.base}/{case}",
                        "allowInsecureHTTP": True,
                        "timeoutSeconds": CALL_TIMEOUT,
                        "secretRef": {"name": secret, "key": "token"},
                    },
                    "timeoutSeconds": 60,
                    "maxAttempts": 2 if case == RETRIED else 1,
                },
            )
        results = {
            case: repairs.wait_phase(name, "Failed", "Succeeded", timeout=90)
            for case, name in names.items()
        }
    wrong = {}
    for case, status in results.items():
        error = (status.get("repair") or {}).get("lastError") or ""
        repaired = cond(status, "Repaired")
        if not (
            status["phase"] == "Failed"
            and HOSTILE[case](error)
            and repaired["status"] == "False"
            and repaired["reason"] == "RepairFailed"
            and error in repaired["message"]
        ):
            wrong[case] = (status["phase"], error[:200], repaired)
    assert not wrong, json.dumps(wrong, indent=1, ensure_ascii=False, default=str)

    retried = results[RETRIED]
    assert retried["repair"]["attempts"] == 2 and "attempt 2 of 2" in retried["message"]
    calls = [r.path for r in hostile.requests]
    assert calls.count(f"/{RETRIED}") == 2, calls
    for case in HOSTILE:
        if case != RETRIED and case != "redirect-loop":
            assert calls.count(f"/{case}") == 1, (case, calls)
    # aiohttp follows the redirect to another origin, but without the bearer token.
    assert all(r.headers.get("authorization") == f"Bearer {token}" for r in hostile.requests)
    assert [r.path for r in other.requests] == ["/moved"], other.requests
    assert "authorization" not in other.requests[0].headers
    # No attempt outlived the webhook's timeout (timestamps have whole seconds).
    for case, status in results.items():
        took = parse_time(status["completionTime"]) - parse_time(
            status["repair"]["attemptStartTime"]
        )
        assert took.total_seconds() <= CALL_TIMEOUT + 5, (case, took)
    unharmed.check()


# --- invalid objects, refused at admission ---

WEBHOOK = {"strategy": "Webhook", "webhook": {"url": "https://r.example"}}


def hook(**fields: Any) -> dict[str, Any]:
    return {"strategy": "Webhook", "webhook": {"url": "https://r.example", **fields}}


def nr(**spec: Any) -> dict[str, Any]:
    return node_repair({"nodeName": "n", **spec})


def rp(**spec: Any) -> dict[str, Any]:
    return repair_policy({"nodeSelector": {}, **spec})


def conditions(n: int) -> list[dict[str, str]]:
    return [{"type": f"T{i}", "status": "True", "duration": "1m"} for i in range(n)]


MUST_BE = "must be of type"
TOO_SHORT = "should be at least 1 chars long"
DNS = "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DURATION = "should match '^([0-9]+(ms|s|m|h))+$'"
PERCENT = "should match '^([0-9]+|(100|[1-9]?[0-9])%)$'"
LABEL_VALUE = "should match '^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$'"
URL = "must be an http:// or https:// URL"

INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    # (id, object, what the refusal must say: the field, then the rule)
    # NodeRepair: wrong types
    ("spec list", node_repair([]), ["spec:", MUST_BE + " object"]),
    ("nodeName int", node_repair({"nodeName": 7}), ["spec.nodeName", MUST_BE + " string"]),
    ("reason list", nr(reason=["x"]), ["spec.reason", MUST_BE + " string"]),
    ("dryRun string", nr(dryRun="yes"), ["spec.dryRun", MUST_BE + " boolean"]),
    ("drain string", nr(drain="fast"), ["spec.drain", MUST_BE + " object"]),
    (
        "taskTimeout string",
        nr(drain={"taskTimeoutSeconds": "10"}),
        ["spec.drain.taskTimeoutSeconds", "whole number of seconds (at least 1) or Auto"],
    ),
    (
        "taskTimeout float",
        nr(drain={"taskTimeoutSeconds": 1.5}),
        ["spec.drain.taskTimeoutSeconds", MUST_BE + " integer"],
    ),
    (
        "webhook timeout string",
        nr(repair=hook(timeoutSeconds="30s")),
        ["spec.repair.webhook.timeoutSeconds", MUST_BE + " integer"],
    ),
    (
        "secretRef string",
        nr(repair=hook(secretRef="s/k")),
        ["spec.repair.webhook.secretRef", MUST_BE + " object"],
    ),
    (
        "job template string",
        nr(repair={"strategy": "Job", "job": {"template": "x"}}),
        ["spec.repair.job.template", MUST_BE + " object"],
    ),
    (
        "job spec list",
        nr(repair={"strategy": "Job", "job": {"template": {"spec": []}}}),
        ["spec.repair.job.template.spec", MUST_BE + " object"],
    ),
    (
        "verify status bool",
        nr(verify={"conditions": [{"type": "Ready", "status": True}]}),
        ["spec.verify.conditions[0].status", MUST_BE + " string"],
    ),
    # NodeRepair: names and text
    ("nodeName empty", node_repair({"nodeName": ""}), ["spec.nodeName", TOO_SHORT]),
    ("nodeName unicode", node_repair({"nodeName": "nöde-1"}), ['"nöde-1"', DNS]),
    ("nodeName emoji", node_repair({"nodeName": "🔥"}), ["spec.nodeName", DNS]),
    ("nodeName space", node_repair({"nodeName": "node 1"}), ["spec.nodeName", DNS]),
    ("nodeName trailing dot", node_repair({"nodeName": "node."}), ["spec.nodeName", DNS]),
    (
        "nodeName too long",
        node_repair({"nodeName": "a" * 254}),
        ["spec.nodeName", "may not be more than 253"],
    ),
    ("reason too long", nr(reason="é" * 1025), ["spec.reason", "may not be more than 1024"]),
    # NodeRepair: enums (case matters)
    ("onTaskTimeout lower", nr(drain={"onTaskTimeout": "evict"}), ["spec.drain.onTaskTimeout"]),
    ("strategy lower", nr(repair={"strategy": "webhook"}), ["spec.repair.strategy"]),
    (
        "onFailure lower",
        nr(onFailure="uncordon"),
        ['spec.onFailure: Unsupported value: "uncordon"'],
    ),
    # NodeRepair: the webhook
    ("url empty", nr(repair=hook(url="")), ["spec.repair.webhook.url", TOO_SHORT, URL]),
    ("url no host", nr(repair=hook(url="http://")), ["spec.repair.webhook.url", URL]),
    ("url javascript", nr(repair=hook(url="javascript:alert(1)")), ["webhook.url", URL]),
    ("url relative", nr(repair=hook(url="/repair")), ["spec.repair.webhook.url", URL]),
    ("url space", nr(repair=hook(url="http://exa mple.com/")), ["spec.repair.webhook.url", URL]),
    ("url file", nr(repair=hook(url="file:///etc/passwd")), ["spec.repair.webhook.url", URL]),
    (
        "url too long",
        nr(repair=hook(url="https://r.example/" + "a" * 2040)),
        ["spec.repair.webhook.url", "may not be more than 2048"],
    ),
    (
        "webhook timeout 0",
        nr(repair=hook(timeoutSeconds=0)),
        ["spec.repair.webhook.timeoutSeconds", "greater than or equal to 1"],
    ),
    (
        "secretRef name empty",
        nr(repair=hook(secretRef={"name": "", "key": "k"})),
        ["spec.repair.webhook.secretRef.name", TOO_SHORT],
    ),
    (  # finding: was accepted
        "secretRef name not a name",
        nr(repair=hook(secretRef={"name": "Bad_Name", "key": "k"})),
        ["spec.repair.webhook.secretRef.name", DNS],
    ),
    (  # finding: was accepted
        "secretRef key not a key",
        nr(repair=hook(secretRef={"name": "s", "key": "a b/c"})),
        ["spec.repair.webhook.secretRef.key", "should match '^[-._a-zA-Z0-9]+$'"],
    ),
    # NodeRepair: numbers and lists
    (
        "maxAttempts negative",
        nr(repair={"maxAttempts": -1}),
        ["spec.repair.maxAttempts", "greater than or equal to 1"],
    ),
    (
        "verify duplicate type",
        nr(verify={"conditions": [{"type": "Ready", "status": s} for s in ("True", "False")]}),
        ["spec.verify.conditions[1]: Duplicate value"],
    ),
    (
        "verify type empty",
        nr(verify={"conditions": [{"type": "", "status": "True"}]}),
        ["spec.verify.conditions[0].type", TOO_SHORT],
    ),
    (
        "verify 33 conditions",
        nr(verify={"conditions": [{"type": f"T{i}", "status": "True"} for i in range(33)]}),
        ["spec.verify.conditions", "must have at most 32 items"],
    ),
    (
        "verify timeout 0",
        nr(verify={"timeoutSeconds": 0}),
        ["spec.verify.timeoutSeconds", "greater than or equal to 1"],
    ),
    # RepairPolicy: the node selector
    ("nodeSelector string", rp(nodeSelector="pool=a"), ["spec.nodeSelector", MUST_BE + " object"]),
    (
        "matchLabels int",
        rp(nodeSelector={"matchLabels": {"pool": 1}}),
        ["spec.nodeSelector.matchLabels.pool", MUST_BE + " string"],
    ),
    (  # finding: was accepted
        "matchLabels value not a label value",
        rp(nodeSelector={"matchLabels": {"pool": "a b"}}),
        ["spec.nodeSelector.matchLabels.pool", LABEL_VALUE],
    ),
    (  # finding: was accepted
        "matchLabels key not a label key",
        rp(nodeSelector={"matchLabels": {"a b": "x"}}),
        ["spec.nodeSelector.matchLabels", "keys must be label keys"],
    ),
    (  # finding: was accepted
        "matchLabels unicode key",
        rp(nodeSelector={"matchLabels": {"пул": "a"}}),
        ["spec.nodeSelector.matchLabels", "keys must be label keys"],
    ),
    (
        "operator unknown",
        rp(nodeSelector={"matchExpressions": [{"key": "k", "operator": "Like", "values": ["a"]}]}),
        ['spec.nodeSelector.matchExpressions[0].operator: Unsupported value: "Like"'],
    ),
    (
        "Exists with values",
        rp(
            nodeSelector={"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["a"]}]}
        ),
        ["spec.nodeSelector.matchExpressions[0].values", "empty for Exists and DoesNotExist"],
    ),
    (
        "expression key empty",
        rp(nodeSelector={"matchExpressions": [{"key": "", "operator": "Exists"}]}),
        ["spec.nodeSelector.matchExpressions[0].key", TOO_SHORT],
    ),
    (  # finding: was accepted
        "expression key not a label key",
        rp(nodeSelector={"matchExpressions": [{"key": "a b", "operator": "Exists"}]}),
        ["spec.nodeSelector.matchExpressions[0].key", "should match"],
    ),
    (
        "expression value too long",
        rp(
            nodeSelector={
                "matchExpressions": [{"key": "k", "operator": "In", "values": ["a" * 64]}]
            }
        ),
        ["spec.nodeSelector.matchExpressions[0].values[0]", "may not be more than 63"],
    ),
    (
        "33 expressions",
        rp(
            nodeSelector={
                "matchExpressions": [{"key": f"k{i}", "operator": "Exists"} for i in range(33)]
            }
        ),
        ["spec.nodeSelector.matchExpressions", "must have at most 32 items"],
    ),
    # RepairPolicy: conditions and durations
    (
        "duration negative",
        rp(unhealthyConditions=[{"type": "Ready", "status": "False", "duration": "-5m"}]),
        ['spec.unhealthyConditions[0].duration: Invalid value: "-5m"', DURATION],
    ),
    (
        "duration without unit",
        rp(unhealthyConditions=[{"type": "Ready", "status": "False", "duration": "5"}]),
        ["spec.unhealthyConditions[0].duration", DURATION],
    ),
    (
        "duration in days",
        rp(unhealthyConditions=[{"type": "Ready", "status": "False", "duration": "1d"}]),
        ["spec.unhealthyConditions[0].duration", DURATION],
    ),
    (
        "duration integer",
        rp(unhealthyConditions=[{"type": "Ready", "status": "False", "duration": 300}]),
        ["spec.unhealthyConditions[0].duration", MUST_BE + " string"],
    ),
    (
        "condition without type",
        rp(unhealthyConditions=[{"status": "False", "duration": "5m"}]),
        ["spec.unhealthyConditions[0].type: Required value"],
    ),
    (
        "33 conditions",
        rp(unhealthyConditions=conditions(33)),
        ["spec.unhealthyConditions", "must have at most 32 items"],
    ),
    # RepairPolicy: counts and percentages
    (
        "percent decimal",
        rp(maxUnhealthy="40.5%"),
        ['spec.maxUnhealthy: Invalid value: "40.5%"', PERCENT],
    ),
    ("percent negative", rp(maxUnhealthy="-1%"), ["spec.maxUnhealthy", PERCENT]),
    ("percent bare", rp(maxUnhealthy="%"), ["spec.maxUnhealthy", PERCENT]),
    ("count negative string", rp(minAvailable="-1"), ["spec.minAvailable", PERCENT]),
    ("count float", rp(minAvailable=1.5), ["spec.minAvailable", MUST_BE + " integer,string"]),
    ("count bool", rp(minAvailable=True), ["spec.minAvailable", MUST_BE + " integer,string"]),
    (
        "maxConcurrentRepairs string",
        rp(maxConcurrentRepairs="1"),
        ["spec.maxConcurrentRepairs", MUST_BE + " integer"],
    ),
    ("paused string", rp(paused="yes"), ["spec.paused", MUST_BE + " boolean"]),
    # RepairPolicy: alerts
    (
        "alert names string",
        rp(alerts={"names": "NodeDown"}),
        ["spec.alerts.names", MUST_BE + " array"],
    ),
    (  # finding: was accepted
        "alert name empty",
        rp(alerts={"names": [""]}),
        ["spec.alerts.names[0]", TOO_SHORT],
    ),
    (  # finding: was accepted
        "alert name twice",
        rp(alerts={"names": ["NodeDown", "NodeDown"]}),
        ["spec.alerts.names[1]: Duplicate value"],
    ),
    (
        "65 alert names",
        rp(alerts={"names": [f"A{i}" for i in range(65)]}),
        ["spec.alerts.names", "must have at most 64 items"],
    ),
    (
        "nodeLabel empty",
        rp(alerts={"names": ["A"], "nodeLabel": ""}),
        ["spec.alerts.nodeLabel", TOO_SHORT],
    ),
    (  # finding: was accepted
        "nodeLabel not a Prometheus label",
        rp(alerts={"names": ["A"], "nodeLabel": "node name!"}),
        ["spec.alerts.nodeLabel", "should match '^[a-zA-Z_][a-zA-Z0-9_]*$'"],
    ),
    # RepairPolicy: the template
    ("template string", rp(repairTemplate="x"), ["spec.repairTemplate", MUST_BE + " object"]),
    (
        "template webhook without url",
        rp(repairTemplate={"spec": {"repair": {"strategy": "Webhook", "webhook": {}}}}),
        ["spec.repairTemplate.spec.repair.webhook.url: Required value"],
    ),
    (
        "template url ftp",
        rp(repairTemplate={"spec": {"repair": hook(url="ftp://x")}}),
        ["spec.repairTemplate.spec.repair.webhook.url", URL],
    ),
    (
        "template negative eviction timeout",
        rp(repairTemplate={"spec": {"drain": {"evictionTimeoutSeconds": -1}}}),
        ["spec.repairTemplate.spec.drain.evictionTimeoutSeconds", "greater than or equal to 1"],
    ),
    (
        "template secretRef not a name",
        rp(repairTemplate={"spec": {"repair": hook(secretRef={"name": "A/B", "key": "k"})}}),
        ["spec.repairTemplate.spec.repair.webhook.secretRef.name", DNS],
    ),
]

INVALID_INSTANCE_PROFILES: list[tuple[str, dict[str, Any], list[str]]] = [
    # InstanceProfile is being added on another branch: its invalid objects go here,
    # in the same form; the test below skips them while the CRD is not installed.
]


@pytest.mark.parametrize(
    ("body", "messages"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_object_is_refused(
    cluster: Cluster, body: dict[str, Any], messages: list[str]
) -> None:
    refused = dry_run(cluster, body)
    assert refused.returncode != 0, f"accepted: {refused.stdout}"
    for message in messages:
        assert message in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("body", "messages"),
    [c[1:] for c in INVALID_INSTANCE_PROFILES] or [pytest.param({}, [], marks=pytest.mark.skip)],
    ids=[c[0] for c in INVALID_INSTANCE_PROFILES] or ["none-yet"],
)
def test_invalid_instance_profile_is_refused(
    cluster: Cluster, body: dict[str, Any], messages: list[str]
) -> None:
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout
    if "instanceprofiles.pitstop.dev" not in crds:
        pytest.skip("the InstanceProfile CRD is not installed")
    refused = dry_run(cluster, body)
    assert refused.returncode != 0, f"accepted: {refused.stdout}"
    for message in messages:
        assert message in refused.stderr, refused.stderr


def test_invalid_table_is_big_enough() -> None:
    assert len(INVALID) >= 40, len(INVALID)
    assert len({c[0] for c in INVALID}) == len(INVALID), "ids are unique"
