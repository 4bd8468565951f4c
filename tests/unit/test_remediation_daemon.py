"""One remediation pass (pitstop.remediation.daemon.Remediator) and its deletion,
against a recording fake of the API client: what is created, deleted and reported,
and in which order, for the cases a live cluster makes hard to time."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from pitstop import constants as C
from pitstop.cluster.kube import ApiError
from pitstop.remediation import contract, daemon

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NS, NAME, UID = "checks", "node-7", "3f1e0c9a-0000-4000-8000-000000000001"
REPAIR = contract.repair_name(NS, NAME, UID)
REPAIR_PATH = f"{daemon.NODEREPAIRS}/{REPAIR}"
STATUS_PATH = f"/apis/pitstop.dev/v1alpha1/namespaces/{NS}/noderepairremediations/{NAME}/status"
LOG = logging.getLogger("test")


class FakeKube:
    """Objects by path; POST stores under the body's name, DELETE removes, status
    PATCHes recorded; every request kept in order."""

    def __init__(self, objects: dict[str, dict[str, Any]] | None = None) -> None:
        self.objects = dict(objects or {})
        self.sent: list[tuple[str, str]] = []
        self.statuses: list[dict[str, Any]] = []
        self.posting = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = ""
    ) -> dict[str, Any]:
        self.sent.append((method, path))
        if method == "GET":
            if path not in self.objects:
                raise ApiError(404, "not found")
            return self.objects[path]
        if method == "POST":
            self.posting.set()
            await self.release.wait()
            self.objects[f"{path}/{body['metadata']['name']}"] = body
            return body
        if method == "DELETE":
            if self.objects.pop(path, None) is None:
                raise ApiError(404, "not found")
            return {}
        if path == STATUS_PATH:
            self.statuses.append(body["status"])
        return {}


def remediation(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "uid": UID,
            "generation": 1,
            "annotations": annotations or {},
        },
        "spec": {"repair": {"strategy": "Manual"}},
    }


ALLOWED = {NS: [{C.LABEL_REMEDIATION_ALLOWED: "true"}]}


@pytest.fixture(autouse=True)
def no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pitstop.remediation.daemon.kopf.event", lambda *a, **kw: None)


def succeeded(status: dict[str, Any]) -> tuple[str, str]:
    (c,) = [c for c in status["conditions"] if c["type"] == "Succeeded"]
    return c["status"], c["reason"]


def test_a_pass_makes_the_node_repair_once_and_reports_it() -> None:
    kube = FakeKube()
    r = daemon.Remediator(remediation(), kube, LOG)  # type: ignore[arg-type]
    asyncio.run(r.step({}, ALLOWED, T0))
    assert ("POST", daemon.NODEREPAIRS) in kube.sent
    made = kube.objects[REPAIR_PATH]
    assert made["spec"]["nodeName"] == NAME
    assert made["metadata"]["labels"] == {C.LABEL_REMEDIATION_UID: UID}
    assert kube.statuses[-1]["nodeRepair"] == REPAIR
    assert succeeded(kube.statuses[-1]) == ("Unknown", "Pending")
    # The index has not caught up; the next pass reads the repair instead of making
    # a second one, and writes nothing new.
    kube.sent.clear()
    asyncio.run(r.step({}, ALLOWED, T0))
    assert ("POST", daemon.NODEREPAIRS) not in kube.sent
    assert ("GET", REPAIR_PATH) in kube.sent
    assert not any(m == "PATCH" for m, _ in kube.sent)


def test_an_unlabelled_namespace_gets_no_repair() -> None:
    kube = FakeKube()
    r = daemon.Remediator(remediation(), kube, LOG)  # type: ignore[arg-type]
    asyncio.run(r.step({}, {NS: [{}]}, T0))
    assert not any(m == "POST" for m, _ in kube.sent)
    assert succeeded(kube.statuses[-1]) == ("False", C.REASON_NAMESPACE_NOT_ALLOWED)


def test_nhc_timeout_stays_reported_after_the_repair_is_gone() -> None:
    """Found while writing the e2e: the pass after the one that deleted the repair
    for nhc-timed-out saw the repair gone and reported NodeRepairDeleted instead."""
    repair = {"metadata": {"name": REPAIR}, "status": {"phase": "Repairing"}}
    kube = FakeKube({REPAIR_PATH: repair})
    body = remediation({C.ANNOTATION_NHC_TIMED_OUT: "2026-01-01T00:00:00Z"})
    body["status"] = {"nodeRepair": REPAIR, "nodeName": NAME}
    r = daemon.Remediator(body, kube, LOG)  # type: ignore[arg-type]
    index = {UID: [contract.repair_view(repair)]}
    asyncio.run(r.step(index, ALLOWED, T0))
    assert ("DELETE", REPAIR_PATH) in kube.sent
    assert succeeded(kube.statuses[-1]) == ("False", C.REASON_TIMED_OUT)
    asyncio.run(r.step({}, ALLOWED, T0))  # the repair is gone now
    assert succeeded(r.old_status().wire()) == ("False", C.REASON_TIMED_OUT)


def test_nhc_timeout_stays_reported_while_the_repair_is_aborted() -> None:
    """Seen in CI: between the deletion and its end the repair reads Aborted, and the
    object said Aborted (then TimedOut again, "not started") while NHC waited."""
    aborted = {"metadata": {"name": REPAIR}, "status": {"phase": "Aborted"}}
    kube = FakeKube({REPAIR_PATH: aborted})
    body = remediation({C.ANNOTATION_NHC_TIMED_OUT: "2026-01-01T00:00:00Z"})
    body["status"] = {"nodeRepair": REPAIR, "nodeName": NAME}
    r = daemon.Remediator(body, kube, LOG)  # type: ignore[arg-type]
    asyncio.run(r.step({UID: [contract.repair_view(aborted)]}, ALLOWED, T0))
    assert succeeded(kube.statuses[-1]) == ("False", C.REASON_TIMED_OUT)
    assert ("DELETE", REPAIR_PATH) not in kube.sent, "an aborted repair is on its way out"
    asyncio.run(r.step({}, ALLOWED, T0))  # gone
    assert "not started" not in (r.old_status().message or "")


def test_a_repair_deleted_by_someone_else_is_not_made_again() -> None:
    kube = FakeKube()
    body = remediation()
    body["status"] = {"nodeRepair": REPAIR, "nodeName": NAME}
    r = daemon.Remediator(body, kube, LOG)  # type: ignore[arg-type]
    asyncio.run(r.step({}, ALLOWED, T0))
    assert not any(m == "POST" for m, _ in kube.sent)
    assert succeeded(kube.statuses[-1]) == ("False", C.REASON_NODE_REPAIR_DELETED)


def test_deletion_waits_for_the_pass_in_flight_and_leaves_no_repair() -> None:
    """The checker deletes the object while a pass is creating its NodeRepair: the
    deletion handler waits for that pass, then deletes what it made."""

    async def scenario() -> FakeKube:
        kube = FakeKube()
        kube.release.clear()
        run = daemon.Remediations()
        memo: dict[str, Any] = {"kube": kube, daemon.MEMO_REMEDIATIONS: run}
        passes = run.passes
        r = daemon.Remediator(remediation(), kube, LOG)  # type: ignore[arg-type]

        async def one_pass() -> None:
            async with passes.lock(UID):
                await r.step({}, ALLOWED, T0)

        in_flight = asyncio.create_task(one_pass())
        await kube.posting.wait()  # the POST is on its way
        deleting = asyncio.create_task(
            daemon.give_back(body=remediation(), memo=memo, logger=LOG)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.05)
        assert ("DELETE", REPAIR_PATH) not in kube.sent  # it waits for the pass
        kube.release.set()
        await in_flight
        await deleting
        assert UID not in passes.locks
        return kube

    kube = asyncio.run(scenario())
    assert REPAIR_PATH not in kube.objects
    assert kube.sent.index(("DELETE", REPAIR_PATH)) > kube.sent.index(("POST", daemon.NODEREPAIRS))
