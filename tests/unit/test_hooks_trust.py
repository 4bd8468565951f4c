"""The repair hooks keep to what the platform admin granted (no cluster: a fake API
answers the reads, a loopback server plays the repair service): a Job that is not
allowed is never created, a Secret not marked for webhooks is never sent, an
echoed token is redacted, and TLS is verified (against caBundle when given)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import ssl
import subprocess
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pitstop import constants as C
from pitstop.cluster.kube import ApiError
from pitstop.models import NodeRepairSpec
from pitstop.repair import hooks
from pitstop.repair.act_hooks import RepairSteps
from pitstop.repair.flow import Event
from pitstop.repair.report import Report
from pitstop.repair.state import RepairState
from tests.unit.test_report import sent_fields

NS = C.OPERATOR_NAMESPACE
REPAIR = {"metadata": {"name": "r1", "uid": "u1"}}
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class FakeKube:
    """GETs answered from `objects` by path (404 otherwise); every request recorded."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.sent: list[tuple[str, str, Any]] = []

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        self.sent.append((method, path, body))
        if method == "GET":
            if path not in self.objects:
                raise ApiError(404, "not found")
            return self.objects[path]
        return {}


def sa_path(name: str) -> str:
    return f"/api/v1/namespaces/{NS}/serviceaccounts/{name}"


def secret_path(name: str) -> str:
    return f"/api/v1/namespaces/{NS}/secrets/{name}"


def job_spec(pod: dict[str, Any]) -> NodeRepairSpec:
    template = {"spec": {"template": {"spec": {"containers": [{"name": "c"}], **pod}}}}
    return NodeRepairSpec.model_validate(
        {"nodeName": "n1", "repair": {"strategy": "Job", "job": {"template": template}}}
    )


PLAIN_SA = {"metadata": {"name": C.REPAIR_SERVICE_ACCOUNT}}


def create(kube: FakeKube, spec: NodeRepairSpec) -> Any:
    return asyncio.run(hooks.create_job(kube, REPAIR, spec, "pitstop-r1-1"))  # type: ignore[arg-type]


def posted(kube: FakeKube) -> list[Any]:
    return [body for method, _, body in kube.sent if method == "POST"]


def test_a_plain_job_is_created_as_pitstop_repair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kube = FakeKube({sa_path(C.REPAIR_SERVICE_ACCOUNT): PLAIN_SA})
    assert create(kube, job_spec({})) is None
    (job,) = posted(kube)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == C.REPAIR_SERVICE_ACCOUNT


@pytest.mark.parametrize(
    ("pod", "objects", "why"),
    [
        ({"hostPID": True}, {sa_path(C.REPAIR_SERVICE_ACCOUNT): PLAIN_SA}, "hostPID"),
        ({"serviceAccountName": "tool"}, {sa_path("tool"): {"metadata": {}}}, "not allowed"),
        ({}, {}, f"{NS}/{C.REPAIR_SERVICE_ACCOUNT} not found"),
    ],
)
def test_a_job_not_allowed_is_never_created(
    monkeypatch: pytest.MonkeyPatch, pod: dict[str, Any], objects: dict[str, Any], why: str
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kube = FakeKube(objects)
    refused = create(kube, job_spec(pod))
    assert refused is not None and refused.state == "Failed"
    assert refused.message.startswith("cannot create Job pitstop-r1-1: RepairJobNotAllowed: ")
    assert why in refused.message
    assert posted(kube) == [], "nothing created"
    # ... and the repair is refused before its node is touched, with the same words.
    found = asyncio.run(hooks.refusal(kube, job_spec(pod)))  # type: ignore[arg-type]
    assert found is not None and found[0] == C.REASON_REPAIR_JOB_NOT_ALLOWED and why in found[1]


# --- webhooks ---


class Service:
    """A repair service on loopback that answers Failed, echoing the Authorization
    header in its message; `tls` makes it https with that (cert, key)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.heard: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                heard = self.headers.get("Authorization") or ""
                service.heard.append(heard)
                body = json.dumps({"status": "Failed", "message": f"echo {heard}"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}/repair"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Service:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def secret(token: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> Any:
    return {
        "metadata": {"name": "svc", "labels": labels, "annotations": annotations or {}},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def webhook_spec(url: str, **hook: Any) -> NodeRepairSpec:
    return NodeRepairSpec.model_validate(
        {
            "nodeName": "n1",
            "repair": {"strategy": "Webhook", "webhook": {"url": url, **hook}},
        }
    )


def call(kube: FakeKube, spec: NodeRepairSpec) -> Any:
    return asyncio.run(hooks.call_webhook(kube, REPAIR, spec, 1, False))  # type: ignore[arg-type]


MARKED = {C.LABEL_WEBHOOK_SECRET: "true"}
REF = {"secretRef": {"name": "svc", "key": "token"}, "allowInsecureHTTP": True}


def test_an_unmarked_secret_is_never_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kube = FakeKube({secret_path("svc"): secret("s3cr3t-t0ken", {})})
    with Service() as service:
        answer = call(kube, webhook_spec(service.url, **REF))
    assert service.heard == [], "nothing sent"
    assert answer.state == "Error" and answer.message.startswith("WebhookNotAllowed: ")
    assert "s3cr3t-t0ken" not in answer.message


def test_a_secret_bound_to_other_urls_is_never_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    bound = secret("s3cr3t-t0ken", MARKED, {C.ANNOTATION_WEBHOOK_URLS: "https://repair.example/"})
    kube = FakeKube({secret_path("svc"): bound})
    with Service() as service:
        answer = call(kube, webhook_spec(service.url, **REF))
    assert service.heard == [] and "only to URLs starting with" in answer.message


def test_an_echoed_token_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kube = FakeKube({secret_path("svc"): secret("s3cr3t-t0ken", MARKED)})
    with Service() as service:
        answer = call(kube, webhook_spec(service.url, **REF))
    assert service.heard == ["Bearer s3cr3t-t0ken"], "a marked Secret is sent"
    assert (answer.state, answer.message) == ("Failed", "echo Bearer [redacted]")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=repair.test", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_is_verified_against_the_ca_bundle(certificate: tuple[Path, Path]) -> None:
    kube = FakeKube({})
    with Service(tls=certificate) as service:
        unknown = call(kube, webhook_spec(service.url))
        bundle = base64.b64encode(certificate[0].read_bytes()).decode()
        trusted = call(kube, webhook_spec(service.url, caBundle=bundle))
    assert unknown.state == "Error" and unknown.message.startswith("webhook TLS error"), unknown
    assert (trusted.state, trusted.message) == ("Failed", "echo "), trusted
    assert len(service.heard) == 1, "the unverified service heard nothing"


def test_secrets_are_read_only_in_the_operators_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(The fake API records the paths: a secretRef names no namespace.)"""
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kube = FakeKube({})
    call(kube, webhook_spec("https://repair.example/x", secretRef={"name": "s", "key": "k"}))
    assert [path for _, path, _ in kube.sent] == [secret_path("s")]


# --- refused while Pending, before the node is touched ---


class StatusKube(FakeKube):
    """Also records status patches."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        super().__init__(objects)
        self.statuses: list[dict[str, Any]] = []

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    async def patch_status_ops(self, plural: str, name: str, ops: list[dict[str, Any]]) -> None:
        await self.patch_status(plural, name, sent_fields(ops))


class Events(Report):
    """A Report that keeps the Events it would post."""

    def __init__(self, state: RepairState) -> None:
        super().__init__(state)
        self.events: list[Event] = []

    def post(self, events: list[Event], node: Any) -> None:
        self.events.extend(events)


class Steps(RepairSteps):
    report: Events


def pending_repair(kube: StatusKube, spec: NodeRepairSpec, generation: int = 1) -> Steps:
    body = {"metadata": {"name": "r1", "generation": generation}, "spec": spec.wire()}
    state = RepairState("r1", body, kube, logging.getLogger())  # type: ignore[arg-type]
    return Steps(state, Events(state))


def test_a_repair_not_allowed_fails_while_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kube = StatusKube({sa_path(C.REPAIR_SERVICE_ACCOUNT): PLAIN_SA})
    steps = pending_repair(kube, job_spec({"hostNetwork": True}))
    assert asyncio.run(steps.refuse_untrusted(NOW, job_spec({"hostNetwork": True})))
    (status,) = kube.statuses
    assert status["phase"] == "Failed" and status["message"].startswith("RepairJobNotAllowed: ")
    conds = {c["type"]: c for c in status["conditions"]}
    assert sorted(conds) == ["Ready", "Reconciling", "Repaired", "Stalled"]
    cond = conds["Repaired"]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "Repaired",
        "False",
        "RepairJobNotAllowed",
    )
    assert "hostNetwork" in cond["message"] and cond["observedGeneration"] == 1
    stalled = conds["Stalled"]  # kstatus: Failed, saying why
    assert stalled["status"] == "True" and stalled["message"] == status["message"]
    (event,) = steps.report.events
    assert (event.type, event.reason) == ("Warning", "RepairJobNotAllowed")
    assert posted(kube) == [], "nothing created"


def test_an_allowed_repair_is_checked_once_per_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kube = StatusKube({sa_path(C.REPAIR_SERVICE_ACCOUNT): PLAIN_SA})
    steps = pending_repair(kube, job_spec({}))
    for _ in range(3):
        assert not asyncio.run(steps.refuse_untrusted(NOW, job_spec({})))
    assert len(kube.sent) == 1, "one read of the ServiceAccount, not one per pass"
    assert kube.statuses == []
