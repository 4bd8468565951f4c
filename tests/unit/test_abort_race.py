"""Deleting a repair while its pass is in flight (no cluster; invariant 9). kopf runs the
deletion handler while it stops the daemon, so `abort` can start while the daemon's
pass is still sending a drain signal or closing a gate. Whatever the interleaving,
once both have ended no pod on the node keeps a mark of the repair's.

The real daemon (`drive`) and deletion handler (`abort`) run against a small fake of
the API server whose pod writes wait until the test lets them land."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest

from pitstop import constants as C
from pitstop.cluster.kube import Eviction
from pitstop.registry import Registry
from pitstop.repair import daemon
from tests.unit.test_nodes import OURS, apply, locked
from tests.unit.test_report import sent_fields

NODE, REPAIR, POD = "n1", "r1", "fn/p1"
START = datetime.now(UTC) - timedelta(seconds=5)


class Cluster:
    """One node locked by the repair, one gated sync pod on it not yet marked. Pod
    writes are applied only once `land` is set (a slow API server); `sent` is set
    when the first has been sent."""

    def __init__(self) -> None:
        self.node = locked(REPAIR, unschedulable=True, taints=[OURS])
        self.pod: dict[str, Any] = {
            "metadata": {"name": "p1", "namespace": "fn", "annotations": {}, "uid": "u1"},
            "spec": {"nodeName": NODE, "readinessGates": [{"conditionType": C.CONDITION_SERVING}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
        self.land = asyncio.Event()
        self.sent = asyncio.Event()
        self.evicted: list[str] = []
        self.server: set[asyncio.Future[None]] = set()

    async def _write(self, change: Callable[[], None]) -> None:
        """A request sent is applied by the server when `land` is set, even if the
        client stops waiting for its answer (a cancelled pass)."""

        async def server() -> None:
            await self.land.wait()
            change()

        applied = asyncio.ensure_future(server())
        self.server.add(applied)
        self.sent.set()
        await asyncio.shield(applied)

    async def patch_pod(self, key: str, patch: dict[str, Any]) -> None:
        def change() -> None:
            notes = self.pod["metadata"]["annotations"]
            for k, v in patch["metadata"]["annotations"].items():
                if v is None:
                    notes.pop(k, None)
                else:
                    notes[k] = v

        await self._write(change)

    async def set_pod_condition(
        self, key: str, type_: str, status: str, reason: str, message: str = ""
    ) -> None:
        def change() -> None:
            conds = [c for c in self.pod["status"]["conditions"] if c["type"] != type_]
            self.pod["status"]["conditions"] = [*conds, {"type": type_, "status": status}]

        await self._write(change)

    async def evict(self, key: str, grace: int | None) -> Eviction:
        self.evicted.append(key)
        return Eviction(key, "evicted")

    async def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        if path.endswith(f"/noderepairs/{REPAIR}"):  # abort reads the status the pass left
            return {"status": {"phase": "Deregistering"}}
        raise AssertionError(f"no {method} {path} expected")

    async def list_pods_on(self, node_name: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.pod)]

    async def get_node(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.node)

    async def patch_node(self, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        self.node = apply(self.node, ops)
        return copy.deepcopy(self.node)

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        pass

    async def patch_status_ops(self, plural: str, name: str, ops: list[dict[str, Any]]) -> None:
        await self.patch_status(plural, name, sent_fields(ops))

    def marks(self) -> list[str]:
        notes = self.pod["metadata"]["annotations"]
        closed = any(
            c["type"] == C.CONDITION_SERVING and c["status"] == "False"
            for c in self.pod["status"]["conditions"]
        )
        return [
            m for m, on in (("draining", C.ANNOTATION_DRAINING in notes), ("gate", closed)) if on
        ]


class Stopped:
    """kopf's DaemonStopped as the daemon uses it."""

    def __init__(self) -> None:
        self.flag = asyncio.Event()

    def __bool__(self) -> bool:
        return self.flag.is_set()

    async def wait(self) -> None:
        await self.flag.wait()


def repair_body() -> dict[str, Any]:
    at = START.strftime("%Y-%m-%dT%H:%M:%SZ")
    cordoned = {"type": C.COND_CORDONED, "status": "True", "reason": C.REASON_CORDONED}
    return {
        "metadata": {"name": REPAIR, "generation": 1, "finalizers": [C.FINALIZER]},
        "spec": {"nodeName": NODE},
        "status": {
            "phase": "Deregistering",
            "startTime": at,
            "phaseStartTime": at,
            "conditions": [{**cordoned, "message": "", "lastTransitionTime": at}],
        },
    }


@pytest.fixture(autouse=True)
def no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "event", lambda *a, **kw: None)  # no operator to post them


@pytest.mark.parametrize("kopf_cancels_the_daemon", [False, True])
def test_an_abort_during_a_pass_leaves_no_pod_marked(kopf_cancels_the_daemon: bool) -> None:
    async def scenario() -> Cluster:
        cluster = Cluster()
        body = repair_body()
        memo: dict[str, Any] = {"kube": cluster}
        Registry.fresh().install(memo)
        log = logging.getLogger("test")
        stopped = Stopped()
        # The indexes as they stand when the pass starts; they never catch up here.
        indexes = {
            "pods_by_node": {NODE: [copy.deepcopy(cluster.pod)]},
            "endpoints_by_pod": {POD: [True]},
            "nodes_by_name": {NODE: [copy.deepcopy(cluster.node)]},
            "repairs_by_node": {
                NODE: [{"name": REPAIR, "phase": "Deregistering", "deleting": False}]
            },
            "policies_by_name": {},
            "profiles_by_name": {},
            "namespace_labels": {},
            "pdbs_by_namespace": {},
        }
        drive = asyncio.create_task(
            daemon.drive(  # type: ignore[call-arg,arg-type]
                name=REPAIR, body=body, memo=memo, logger=log, stopped=stopped, **indexes
            )
        )
        await asyncio.wait_for(cluster.sent.wait(), 5)  # the pass awaits its pod marks
        stopped.flag.set()  # the deletion: kopf stops the daemon and runs the handler
        if kopf_cancels_the_daemon:  # one that does not stop in time
            drive.cancel()
        aborting = asyncio.create_task(
            daemon.abort(  # type: ignore[call-arg,arg-type]
                name=REPAIR,
                spec=body["spec"],
                status=body["status"],
                body=body,
                memo=memo,
                logger=log,
                pods_by_node=indexes["pods_by_node"],
            )
        )
        await asyncio.sleep(0.1)  # the handler goes as far as it can
        cluster.land.set()  # the marks land
        await asyncio.wait_for(asyncio.gather(drive, aborting, return_exceptions=True), 5)
        await asyncio.wait(cluster.server, timeout=5)  # every request sent has landed
        assert not aborting.exception()
        return cluster

    cluster = asyncio.run(scenario())
    assert cluster.node["metadata"]["annotations"] == {}, "the node is given back"
    assert cluster.marks() == [], "no mark of the deleted repair is left on the pod"
    assert cluster.evicted == []
