"""The Webhook repair strategy against a real repair service run by the test
(tests/e2e/webhook_server.py): the request pitstop sends (bearer token from a
Secret in pitstop-system, JSON body), Running answers polled, every kind of bad
answer turned into a clear lastError, and a SIGKILLed operator that polls the
attempt it had started instead of starting it again (invariant 6)."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.kube import Cluster, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import Repairs, node_markers
from tests.e2e.test_repair import (
    NS,
    RELEASED,
    VERIFY,
    cond,
    heal,
    held,
    inject,
    make_pool,
    wait_event,
)
from tests.e2e.webhook_server import Reply, Request, WebhookServer

pytestmark = pytest.mark.e2e

TOKEN_KEY = "token"


@pytest.fixture
def secret(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A Secret in pitstop-system holding a bearer token, marked for webhooks by the
    platform admin: (name, token)."""
    name, token = f"repair-svc-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    cluster.kubectl(
        "create", "secret", "generic", name, "-n", NS, f"--from-literal={TOKEN_KEY}={token}"
    )
    cluster.kubectl("label", "secret", name, "-n", NS, "pitstop.dev/webhook-secret=true")
    yield name, token
    cluster.kubectl("delete", "secret", name, "-n", NS, "--ignore-not-found", "--wait=false")


def webhook_repair(
    url: str,
    secret: str | None = None,
    call_timeout: int = 5,
    attempts: int = 1,
    timeout: int = 30,
) -> dict[str, Any]:
    # The test's service is plain HTTP on loopback: opted in, as docs/security.md says.
    hook: dict[str, Any] = {"url": url, "timeoutSeconds": call_timeout, "allowInsecureHTTP": True}
    if secret:
        hook["secretRef"] = {"name": secret, "key": TOKEN_KEY}
    return {
        "strategy": "Webhook",
        "webhook": hook,
        "timeoutSeconds": timeout,
        "maxAttempts": attempts,
    }


def healing(cluster: Cluster, node: str) -> Reply:
    """The service repairs the node, then says so."""
    heal(cluster, node, wait=False)
    return Reply(body={"status": "Succeeded", "message": "rebooted"})


def test_webhook_repair_succeeds(
    cluster: Cluster, pool: Any, repairs: Repairs, secret: tuple[str, str]
) -> None:
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    secret_name, token = secret
    with WebhookServer(lambda req, i: healing(cluster, node)) as server:
        name = repairs.create(
            node,
            reason="KernelDeadlock on boot",
            repair=webhook_repair(server.url, secret_name),
            verify=VERIFY,
        )
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=30)
    assert status["phase"] == "Succeeded", status
    assert status["repair"]["attempts"] == 1
    assert "Succeeded" in cond(status, "Repaired")["message"]
    assert node_markers(cluster, node) == RELEASED

    assert len(server.requests) == 1, server.bodies()
    request = server.requests[0]
    assert request.headers["authorization"] == f"Bearer {token}"
    assert request.headers["content-type"].startswith("application/json")
    assert request.body == {
        "node": node,
        "repair": name,
        "reason": "KernelDeadlock on boot",
        "attempt": 1,
        "poll": False,
        "step": 1,
    }


def test_running_answers_are_polled(cluster: Cluster, pool: Any, repairs: Repairs) -> None:
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)

    def behaviour(req: Request, i: int) -> Reply:
        return Reply(body={"status": "Running"}) if i < 2 else healing(cluster, node)

    with WebhookServer(behaviour) as server:
        name = repairs.create(node, repair=webhook_repair(server.url), verify=VERIFY)
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=30)
    assert status["phase"] == "Succeeded", status
    assert status["repair"]["attempts"] == 1
    calls = server.requests
    assert [(r.body["attempt"], r.body["poll"]) for r in calls] == [
        (1, False),
        (1, True),
        (1, True),
    ]
    assert "authorization" not in calls[0].headers, "no secretRef, no token"
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert all(g >= 1.5 for g in gaps), f"a Running answer is polled after a pause: {gaps}"


def test_http_error_fails_the_attempt_and_is_retried(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    node = make_pool(cluster, pool).names[0]
    with WebhookServer(lambda req, i: Reply(500, b"oops")) as server:
        name = repairs.create(node, repair=webhook_repair(server.url, attempts=2), verify=VERIFY)
        status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=30)
    assert status["phase"] == "Failed", status
    assert status["repair"]["attempts"] == 2
    assert status["repair"]["lastError"] == "webhook answered HTTP 500"
    assert "HTTP 500" in status["message"] and "attempt 2 of 2" in status["message"]
    calls = server.requests
    assert [(r.body["attempt"], r.body["poll"]) for r in calls] == [(1, False), (2, False)]
    assert calls[1].at - calls[0].at >= 4.0, "the second attempt waits for the backoff"
    wait_event(cluster, name, "RepairAttemptFailed")
    assert node_markers(cluster, node) == held(name)


def test_slow_webhook_times_out(cluster: Cluster, pool: Any, repairs: Repairs) -> None:
    node = make_pool(cluster, pool).names[0]
    slow = Reply(body={"status": "Succeeded"}, delay=3)
    with WebhookServer(lambda req, i: slow) as server:
        name = repairs.create(
            node, repair=webhook_repair(server.url, call_timeout=1), verify=VERIFY
        )
        status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=20)
    assert status["phase"] == "Failed", status
    assert status["repair"]["lastError"] == "webhook timed out after 1s"
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"<html>not json</html>", 'webhook answer is not {"status": '),
        ({"ok": True}, 'webhook answer is not {"status": '),
        ({"status": "Done"}, 'webhook answer is not {"status": '),
        ({"status": "Failed", "message": "BMC unreachable"}, "BMC unreachable"),
        ({"status": "Failed"}, "webhook reported Failed"),
    ],
    ids=["not-json", "no-status", "unknown-status", "failed-with-message", "failed"],
)
def test_bad_or_failed_answer_fails_the_repair(
    cluster: Cluster, pool: Any, repairs: Repairs, answer: Any, error: str
) -> None:
    node = make_pool(cluster, pool).names[0]
    with WebhookServer(lambda req, i: Reply(200, answer)) as server:
        name = repairs.create(node, repair=webhook_repair(server.url), verify=VERIFY)
        status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=20)
    assert status["phase"] == "Failed", status
    assert status["repair"]["lastError"].startswith(error), status["repair"]
    if isinstance(answer, bytes):
        assert "not json" in status["repair"]["lastError"], "the answer is quoted"
    assert len(server.requests) == 1


def test_missing_secret_is_reported_without_calling(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    node = make_pool(cluster, pool).names[0]
    missing = f"absent-{uuid.uuid4().hex[:6]}"
    with WebhookServer(lambda req, i: Reply(body={"status": "Succeeded"})) as server:
        name = repairs.create(
            node, repair=webhook_repair(server.url, secret=missing), verify=VERIFY
        )
        status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=20)
        time.sleep(0.5)
    assert status["phase"] == "Failed", status
    assert status["repair"]["lastError"] == f"secret {NS}/{missing} not found"
    assert server.requests == [], "no call without the credential"


def test_operator_killed_while_the_webhook_runs(
    cluster: Cluster,
    pool: Any,
    repairs: Repairs,
    running_operator: Operator,
    secret: tuple[str, str],
) -> None:
    """The attempt was started before the crash: the restarted operator asks about
    it (poll=true), it does not start it again."""
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    secret_name, token = secret
    first = threading.Event()
    restarted = threading.Event()

    def behaviour(req: Request, i: int) -> Reply:
        if i == 0:
            first.set()
            return Reply(body={"status": "Running"})
        if not restarted.is_set():
            return Reply(body={"status": "Running"})
        return healing(cluster, node)

    with WebhookServer(behaviour) as server:
        name = repairs.create(node, repair=webhook_repair(server.url, secret_name), verify=VERIFY)
        wait_until("the first call", first.is_set, timeout=30)
        time.sleep(0.2)  # the Running answer is on its way back
        running_operator.kill()
        restarted.set()
        assert repairs.phase(name) == "Repairing"
        running_operator.start()
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=30)
    assert status["phase"] == "Succeeded", status
    assert status["repair"]["attempts"] == 1
    bodies = server.bodies()
    assert len(bodies) >= 2, bodies
    assert [(b["attempt"], b["poll"]) for b in bodies] == [(1, False)] + [(1, True)] * (
        len(bodies) - 1
    ), "attempt 1 was started once; after the restart it is only polled"
    assert all(r.headers["authorization"] == f"Bearer {token}" for r in server.requests)
    assert node_markers(cluster, node) == RELEASED
