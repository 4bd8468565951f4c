"""A repair service for e2e tests of the Webhook strategy: a threaded HTTP server on
127.0.0.1 that records every request (headers, JSON body, arrival time) and answers
as the test's `behaviour` says."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.e2e.kube import wait_until


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]
    """Header names in lower case."""
    raw: bytes
    body: Any
    """The parsed JSON body (None if it was not JSON)."""
    at: float
    """time.monotonic() on arrival."""


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] = field(default_factory=lambda: {"status": "Running"})
    delay: float = 0.0
    """Seconds to wait before answering."""


Behaviour = Callable[[Request, int], Reply]
"""(request, its 0-based index) -> the reply."""


class WebhookServer:
    def __init__(self, behaviour: Behaviour):
        self.behaviour = behaviour
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                request = Request(
                    headers={k.lower(): v for k, v in self.headers.items()},
                    raw=raw,
                    body=body,
                    at=time.monotonic(),
                )
                with server._lock:
                    index = len(server.requests)
                    server.requests.append(request)
                try:
                    reply = server.behaviour(request, index)
                except BaseException as e:  # reported by the test via .errors
                    server.errors.append(e)
                    reply = Reply(500, b"behaviour failed")
                time.sleep(reply.delay)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
                payload = data.encode() if isinstance(data, str) else data
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/repair"

    def __enter__(self) -> WebhookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)
        if self.errors and exc[0] is None:
            raise AssertionError(f"webhook behaviour failed: {self.errors[0]!r}")

    def wait_requests(self, count: int, timeout: float = 20) -> list[Request]:
        found: list[Request] = wait_until(
            f"{count} webhook requests",
            lambda: len(self.requests) >= count and list(self.requests),
            timeout=timeout,
        )
        return found

    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]
