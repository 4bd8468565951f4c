"""The Alertmanager receiver: POST /alerts with Alertmanager's webhook payload
(version 4), authenticated with a bearer token: a file (the Deployment mounts the
Secret pitstop-alerts there; re-read as soon as it changes, checked on every
request) or else a Secret in the operator's namespace read through the API (every
TOKEN_TTL). Alerts go to the policy daemons' inbox (pitstop.pool.daemon), which
match them to pools and create NodeRepairs.

429 with Retry-After for a client (remote address) past its rate (a token bucket
each, checked before anything else), 401 without a valid token, 400 with a clear
message for a malformed payload,
413 for a body over 1 MiB, 408 for a body not received within READ_TIMEOUT; every
answer of the receiver is a JSON object. A connection that has not sent a whole
request within IDLE_TIMEOUT is closed (slow clients cannot pile up). Resolved
alerts do not cancel running repairs."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import http_exceptions, web

from pitstop import constants
from pitstop.cluster.kube import Kube, read_secret
from pitstop.pool.daemon import AlertInbox

MAX_BODY = 1024 * 1024
TOKEN_TTL = 30.0
"""The token is re-read from its Secret at most this often (rotation without restart)."""
READ_TIMEOUT = 10.0
"""Seconds a request's body may take to arrive once its headers are in: then 408."""
IDLE_TIMEOUT = 15.0
"""Seconds a connection may stay open without a complete request (aiohttp's keep-alive
timer, which also runs from the moment a connection opens): then it is closed."""
SHOWN = 80
"""Characters of a wrong value quoted in an error message."""
RATE = constants.ALERTS_RATE
"""Requests per second a client (remote address) may send, on average..."""
BURST = constants.ALERTS_BURST
"""... and at once. Alertmanager sends one request per alert group (with
group_by [alertname, node], one per node) and does not retry a 429, only a 5xx:
the burst must hold the groups a correlated failure flushes together."""
MAX_CLIENTS = 4096
"""Buckets kept before the full ones (clients quiet long enough) are dropped."""


class Buckets:
    """A token bucket per client: `rate` tokens a second up to `burst`; a request
    takes one. Pure (the clock is passed in)."""

    def __init__(self, rate: float, burst: int, max_clients: int = MAX_CLIENTS):
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}
        """client → (tokens, when counted)"""

    def take(self, client: str, now: float) -> float:
        """0 if the client may go on now (a token taken), else the seconds until it may."""
        tokens, then = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_clients:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        """A bucket that has filled up again is the same as none."""
        for client, (tokens, then) in list(self._buckets.items()):
            if tokens + (now - then) * self.rate >= self.burst:
                del self._buckets[client]

    def __len__(self) -> int:
        return len(self._buckets)


class TokenFile:
    """The bearer token in a file (a mounted Secret's key), read again whenever the
    file changes: the kubelet swaps a new copy in (a new inode) on rotation. One
    stat per request; a missing or empty file refuses every request."""

    def __init__(self, path: str):
        self.path = path
        self._seen: tuple[int, int, int, int] | None = None
        self._token: str | None = None

    def read(self) -> str | None:
        try:
            st = os.stat(self.path)
        except OSError:
            self._seen, self._token = None, None
            return None
        seen = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            try:
                with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                    self._token = f.read().strip() or None
            except OSError:
                self._token = None
            self._seen = seen
        return self._token


class Receiver:
    def __init__(
        self,
        kube: Kube,
        inbox: AlertInbox,
        secret: str,
        key: str,
        token_file: str | None = None,
        rate: float = RATE,
        burst: int = BURST,
    ):
        self.kube, self.secret, self.key = kube, secret, key
        self.inbox = inbox
        """Where the alerts go: the run's, which its policy daemons take them from."""
        self.token_file = TokenFile(token_file) if token_file else None
        self.buckets = Buckets(rate, burst) if rate > 0 else None
        self._token: tuple[float, str | None] = (0.0, None)

    async def token(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read()
        read_at, token = self._token
        if time.monotonic() - read_at < TOKEN_TTL:
            return token
        try:
            token = await read_secret(self.kube, self.secret, self.key)
        except LookupError:
            token = None  # no Secret, no entry: every request is refused
        self._token = (time.monotonic(), token)
        return token

    async def handle(self, request: web.Request) -> web.Response:
        if self.buckets is not None:
            wait = self.buckets.take(request.remote or "", time.monotonic())
            if wait > 0:
                response = _error(429, f"too many requests from {request.remote}: retry later")
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return response
        expected = await self.token()
        given = request.headers.get("Authorization", "")
        # aiohttp keeps header bytes that are not UTF-8 as surrogates: encode them back
        # (a plain encode() raised, and the client got a 500).
        if expected is None or not hmac.compare_digest(
            given.encode(errors="surrogateescape"), f"Bearer {expected}".encode()
        ):
            return _error(401, "missing or wrong bearer token")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _error(413, f"body larger than {MAX_BODY} bytes")
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                raw = await request.read()  # the whole body, chunked or not, up to client_max_size
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body larger than {MAX_BODY} bytes")
        except TimeoutError:
            return _error(408, f"body not received within {READ_TIMEOUT:g}s", close=True)
        except http_exceptions.HttpProcessingError as e:  # bad chunks, ...
            return _error(400, f"body cannot be read: {_why(e)}", close=True)
        except web.RequestPayloadError as e:  # ... bad gzip
            return _error(400, f"body cannot be read: {_why(e)}", close=True)
        except ConnectionError:  # the client went away mid-body: nobody to answer
            return _error(400, "body cut short: the connection was closed", close=True)
        try:
            alerts = parse(raw)
        except ValueError as e:
            return _error(400, str(e))
        for name, labels, starts_at, firing, ends_at in alerts:
            self.inbox.add(name, labels, starts_at, firing, ends_at)
        firing_count = sum(1 for a in alerts if a[3])
        return web.json_response({"accepted": len(alerts), "firing": firing_count})


Parsed = tuple[str, dict[str, str], str, bool, datetime | None]
"""(alertname, labels, startsAt, firing, endsAt)"""


def parse(raw: bytes) -> list[Parsed]:
    """(alertname, labels, startsAt, firing, endsAt) for each alert of a version-4
    payload; endsAt is None when unset (Alertmanager sends year 1 for an alert that
    still fires) or not a time."""
    try:
        payload = json.loads(raw)
    except ValueError as e:  # also: not UTF-8, or an integer of more than 4300 digits
        raise ValueError(f"body is not JSON: {e}") from e
    except RecursionError as e:
        raise ValueError("body is not JSON this receiver reads: nested too deeply") from e
    if not isinstance(payload, dict):
        raise ValueError("body must be a JSON object (Alertmanager webhook payload)")
    if str(payload.get("version")) != "4":
        raise ValueError(
            f'unsupported payload version {_shown(payload.get("version"))}: expected "4"'
        )
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise ValueError("alerts must be a list")
    found = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise ValueError(f"alerts[{i}] must be an object")
        labels = alert.get("labels")
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValueError(f"alerts[{i}].labels must map strings to strings")
        name = labels.get("alertname")
        if not name:
            raise ValueError(f"alerts[{i}].labels.alertname is missing")
        status = alert.get("status")
        if status not in ("firing", "resolved"):
            raise ValueError(f"alerts[{i}].status must be firing or resolved, not {_shown(status)}")
        starts_at = str(alert.get("startsAt") or "")
        found.append((name, labels, starts_at, status == "firing", _ends_at(alert.get("endsAt"))))
    return found


def _ends_at(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.year <= 1:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _why(exc: Exception) -> str:
    """What aiohttp's parser found wrong, in one line of at most SHOWN characters."""
    if isinstance(exc, web.RequestPayloadError) and isinstance(exc.__cause__, Exception):
        exc = exc.__cause__  # the parser's error, seen by the handler or while lingering
    if isinstance(exc, http_exceptions.HttpProcessingError):
        lines = str(exc.message or "").strip().splitlines()
        return f"{exc.code} {lines[0] if lines else ''}".strip()[:SHOWN]
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()[:SHOWN]


def _shown(value: object) -> str:
    """A wrong value as quoted in an error message: its repr, cut to SHOWN characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 1] + "…"


def _error(status: int, message: str, close: bool = False) -> web.Response:
    response = web.json_response({"error": message}, status=status)
    if close:
        response.force_close()
    return response


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (404 for another path, 405 for another method) as JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, f"{e.reason}: the receiver takes POST /alerts")


class _OneLineRefusals(logging.Filter):
    """aiohttp logs a request it cannot parse (not HTTP, a header over 8 KiB, a bad
    Content-Length, a body in a broken coding) with a full traceback, though it
    answered 400 and nothing went wrong on our side: one warning line each instead,
    so a scanner cannot flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, http_exceptions.HttpProcessingError | web.RequestPayloadError):
            message = "Alert receiver refused a malformed request: %s"
            record.msg, record.args = message, (_why(exc),)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


HTTP_LOG = logging.getLogger("pitstop.alerts.http")
HTTP_LOG.addFilter(_OneLineRefusals())


def app_of(receiver: Receiver) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors])
    app.router.add_post("/alerts", receiver.handle)
    return app


async def serve(
    kube: Kube,
    inbox: AlertInbox,
    bind: str,
    port: int,
    secret: str,
    key: str,
    token_file: str | None = None,
    rate: float = RATE,
    burst: int = BURST,
) -> web.AppRunner:
    receiver = Receiver(kube, inbox, secret, key, token_file, rate, burst)
    app = app_of(receiver)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=IDLE_TIMEOUT, logger=HTTP_LOG)
    await runner.setup()
    await web.TCPSite(runner, bind, port).start()
    return runner
