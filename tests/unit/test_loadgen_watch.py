"""SliceWatch against a scripted stand-in for the API's EndpointSlice list and
watch on 127.0.0.1: list, events, the 410 re-list and stop. (The real watch on
a real Service is exercised by the e2e tier on real nodes.)"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from tests.e2e.loadgen import ReadySet, SliceWatch


def eps(name: str, rv: str, **ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "faas", "resourceVersion": rv},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [f"10.244.0.{i + 10}"],
                "conditions": {"ready": ok, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": "faas"},
            }
            for i, (pod, ok) in enumerate(ready.items())
        ],
    }


class FakeAPI:
    """Answers list and watch of endpointslices from a script; records queries."""

    def __init__(self) -> None:
        self.lists: list[dict[str, list[str]]] = []
        self.watches: list[dict[str, list[str]]] = []
        self.state = [eps("fn-1", "10", a=True, b=True)]
        self.rv = "10"
        self.scripted: list[list[dict[str, Any]]] = [
            [  # the first watch: two changes, then the history is gone (410)
                {"type": "MODIFIED", "object": eps("fn-1", "11", a=False, b=True)},
                {"type": "ADDED", "object": eps("fn-2", "12", c=True)},
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": "too old resource version: 10 (15)",
                        "reason": "Expired",
                        "code": 410,
                    },
                },
            ],
        ]
        self.after_410 = [eps("fn-1", "20", a=True, b=True), eps("fn-2", "20", c=True)]
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                assert url.path == "/apis/discovery.k8s.io/v1/namespaces/faas/endpointslices"
                assert query["labelSelector"] == ["kubernetes.io/service-name=fn"]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                if query.get("watch") != ["true"]:
                    fake.lists.append(query)
                    if len(fake.lists) > 1:
                        fake.state, fake.rv = fake.after_410, "20"
                    body = {"metadata": {"resourceVersion": fake.rv}, "items": fake.state}
                    self.wfile.write(json.dumps(body).encode())
                    return
                fake.watches.append(query)
                events = fake.scripted.pop(0) if fake.scripted else []
                for event in events:
                    self.wfile.write(json.dumps(event).encode() + b"\n")
                    self.wfile.flush()
                if not events:
                    time.sleep(0.2)  # an idle watch that times out

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"


@pytest.fixture
def fake_api() -> Iterator[FakeAPI]:
    api = FakeAPI()
    api.thread.start()
    yield api
    api.server.shutdown()
    api.server.server_close()


async def until(what: str, probe: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_the_watch_follows_the_slices_and_relists_after_410(fake_api: FakeAPI) -> None:
    async def scenario() -> tuple[ReadySet, SliceWatch]:
        api = client.ApiClient(client.Configuration(host=fake_api.url))
        ready = ReadySet(port_name="http")
        watch = SliceWatch(api, "faas", "fn", ready, asyncio.get_running_loop()).start()
        await watch.wait_synced(within=10)
        await until("the re-list after 410", lambda: len(fake_api.lists) == 2)
        await until("a back after the re-list", lambda: ready.pods == ["a", "b", "c"])
        await asyncio.to_thread(watch.stop)
        return ready, watch

    ready, watch = asyncio.run(scenario())
    events = [(c.pod, c.event) for c in ready.history]
    assert events == [
        ("a", "joined"),
        ("b", "joined"),
        ("a", "left"),  # MODIFIED: a not ready
        ("c", "joined"),  # ADDED fn-2
        ("a", "joined"),  # the re-list's state
    ]
    # Each watch resumes where the list (or the last event) stood.
    assert fake_api.watches[0]["resourceVersion"] == ["10"]
    assert fake_api.watches[1]["resourceVersion"] == ["20"]
    assert watch.errors == []
    assert not watch._thread.is_alive()
