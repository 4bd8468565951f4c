"""The notification sender (pool/notifier.py) against a real HTTP server on
loopback: retries on 5xx and connection errors, none on a 4xx, in order, and a
failure told as an Event that names the Secret, never the URL."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import kopf
import pytest
from aiohttp import web

from pitstop.models.repairpolicy import NotificationEvent, Notifications
from pitstop.pool import notices, notifier

SECRET_PATH = "/services/T0/B0/s3cr3t"


class FakeKube:
    def __init__(self, url: str, labelled: bool = True):
        self.secret = {
            "metadata": {
                "name": "chat",
                "labels": {"pitstop.dev/notification-secret": "true"} if labelled else {},
                "annotations": {"pitstop.dev/notification-url-prefixes": "http://127.0.0.1:"},
            },
            "data": {"url": base64.b64encode(url.encode()).decode()},
        }

    async def request(self, method: str, path: str) -> dict[str, Any]:
        assert (method, path) == ("GET", "/api/v1/namespaces/pitstop-system/secrets/chat")
        return self.secret


def notice(event: NotificationEvent, name: str = "r1") -> notices.Notice:
    return notices.Notice(event, notices.Seen(name, "n1", event.value, "KernelDeadlock", "m"))


SPEC = Notifications.model_validate({"webhook": {"secretRef": {"name": "chat", "key": "url"}}})


def run(
    replies: list[int],
    sent: list[notices.Notice],
    spec: Notifications = SPEC,
    up: bool = True,
    labelled: bool = True,
) -> list[dict[str, Any]]:
    """Sends `sent` to a server answering `replies` in turn (then 200); returns the
    bodies it received (the Events: the `quick` fixture)."""
    got: list[dict[str, Any]] = []

    async def scenario() -> None:
        async def handler(request: web.Request) -> web.Response:
            got.append(await request.json())
            return web.Response(status=replies.pop(0) if replies else 200)

        app = web.Application()
        app.router.add_post(SECRET_PATH, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if not up:
            await runner.cleanup()
        kube = FakeKube(f"http://127.0.0.1:{port}{SECRET_PATH}", labelled)
        n = notifier.Notifier("rp", {"metadata": {"name": "rp"}}, kube)  # type: ignore[arg-type]
        for item in sent:
            n.send(spec, item)
        await asyncio.wait_for(n.queue.join(), timeout=20)
        await n.close()
        if up:
            await runner.cleanup()

    asyncio.run(scenario())
    return got


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    monkeypatch.setattr(notifier, "BACKOFF", 0.01)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    posted: list[tuple[str, str]] = []

    def event(body: Any, *, type: str, reason: str, message: str) -> None:
        posted.append((reason, message))

    monkeypatch.setattr(kopf, "event", event)
    return posted


def test_delivered_in_order_after_retries(quick: list[tuple[str, str]]) -> None:
    got = run([500, 503], [notice(NotificationEvent.STARTED), notice(NotificationEvent.SUCCEEDED)])
    assert [b["pitstop"]["event"] for b in got] == ["started"] * 3 + ["succeeded"]
    assert got[0]["text"].startswith("pitstop: repair r1 of n1 started")
    assert quick == []


def test_a_receiver_that_keeps_failing_is_told_without_the_url(
    quick: list[tuple[str, str]],
) -> None:
    got = run([500, 500, 500], [notice(NotificationEvent.FAILED)])
    assert len(got) == 3
    ((reason, message),) = quick
    assert reason == "NotificationFailed"
    assert message == (
        "Failed of r1: the receiver answered 500, after 3 attempts"
        " (URL from Secret pitstop-system/chat)"
    )


def test_a_4xx_is_not_retried_and_a_dead_receiver_is_named_by_kind(
    quick: list[tuple[str, str]],
) -> None:
    got = run([404], [notice(NotificationEvent.FAILED)])
    assert len(got) == 1
    assert quick[-1][1] == "Failed of r1: the receiver answered 404"
    got = run([], [notice(NotificationEvent.FAILED)], up=False)
    assert got == []
    assert "not delivered (ClientConnectorError), after 3 attempts" in quick[-1][1]
    assert all("s3cr3t" not in m and "127.0.0.1" not in m for _, m in quick)


def test_only_the_chosen_events_and_only_from_a_marked_secret(
    quick: list[tuple[str, str]],
) -> None:
    only_failed = SPEC.model_copy(update={"events": [NotificationEvent.FAILED]})
    got = run([], [notice(NotificationEvent.STARTED)], spec=only_failed)
    assert got == [] and quick == []
    got = run([], [notice(NotificationEvent.FAILED)], labelled=False)
    assert got == []
    ((_, message),) = quick
    assert "not marked for notifications" in message and "s3cr3t" not in message
