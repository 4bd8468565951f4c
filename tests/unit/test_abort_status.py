"""`abort` judges the repair by its status as the pass in flight left it, not by the
deletion event's older copy (no cluster). Found by the simulation (seed 40067): the
pass finished the repair as Succeeded while abort waited for it, and abort wrote
Aborted over it."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf
import pytest

from pitstop.registry import Registry
from pitstop.repair import daemon
from pitstop.repair.state import pass_guard
from tests.unit.test_report import sent_fields


class Store:
    """One NodeRepair's status as the API server keeps it; no node (nothing to give back)."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.deleted_jobs: list[str] = []

    async def request(self, method: str, path: str, *_: Any, **__: Any) -> dict[str, Any]:
        assert method == "GET" and path.endswith("/noderepairs/r1"), (method, path)
        return {"status": copy.deepcopy(self.status)}

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        self.status = {**self.status, **status}

    async def patch_status_ops(self, plural: str, name: str, ops: list[dict[str, Any]]) -> None:
        await self.patch_status(plural, name, sent_fields(ops))

    async def get_node(self, name: str) -> None:
        return None

    async def delete(self, *args: Any, **kw: Any) -> None:  # a repair Job, if asked
        self.deleted_jobs.append(str(args))


def run(seen: dict[str, Any], finished: dict[str, Any]) -> Store:
    """abort starts from `seen` (the deletion event) while a pass holds the guard;
    the pass leaves `finished` in the API server before it lets go."""

    async def scenario() -> Store:
        store = Store(seen)
        memo = kopf.Memo(kube=store)
        Registry.fresh().install(memo)
        guard = pass_guard(memo)
        async with guard.lock:  # the pass in flight
            aborting = asyncio.create_task(
                daemon.abort(
                    name="r1",
                    spec=kopf.Spec({"nodeName": "n1"}),
                    status=kopf.Status(copy.deepcopy(seen)),
                    body=kopf.Body({"metadata": {"name": "r1"}}),
                    memo=memo,
                    logger=logging.getLogger(),
                )
            )
            await asyncio.sleep(0.01)
            assert not aborting.done(), "abort waits for the pass"
            store.status = copy.deepcopy(finished)
        await aborting
        return store

    return asyncio.run(scenario())


def test_a_repair_the_pass_in_flight_finished_stays_succeeded() -> None:
    store = run({"phase": "Uncordoning"}, {"phase": "Succeeded", "message": "done"})
    assert store.status["phase"] == "Succeeded", store.status


def test_a_repair_still_under_way_is_aborted() -> None:
    store = run({"phase": "Evicting"}, {"phase": "Evicting", "message": "3 left"})
    assert store.status["phase"] == "Aborted", store.status


class OtherReplicaFinishes(Store):
    """The API server as it treats status writes (a JSON Patch only if its `test`s
    hold); another replica's pass (a deposed leader's) writes Succeeded just after
    abort read Uncordoning."""

    async def request(self, method: str, path: str, *a: Any, **kw: Any) -> dict[str, Any]:
        read = await super().request(method, path, *a, **kw)
        self.status = {"phase": "Succeeded", "message": "done"}
        return read

    async def patch_status_ops(self, plural: str, name: str, ops: list[dict[str, Any]]) -> None:
        from pitstop.cluster.kube import StatusChanged
        from tests.unit.test_nodes import Refused, apply

        try:
            self.status = apply({"status": self.status}, ops)["status"]
        except Refused as e:
            raise StatusChanged(422, str(e)) from e


def test_abort_does_not_overwrite_a_final_phase_written_after_its_read() -> None:
    """abort's Aborted is guarded by the phase it read: refused, the handler is
    retried (and reads again) rather than take a Succeeded repair out of it (6)."""
    store = OtherReplicaFinishes({"phase": "Uncordoning"})
    memo = kopf.Memo(kube=store)
    Registry.fresh().install(memo)
    aborting = daemon.abort(
        name="r1",
        spec=kopf.Spec({"nodeName": "n1"}),
        status=kopf.Status({"phase": "Uncordoning"}),
        body=kopf.Body({"metadata": {"name": "r1"}}),
        memo=memo,
        logger=logging.getLogger(),
    )
    with pytest.raises(kopf.TemporaryError):  # kopf retries the handler: it reads again
        asyncio.run(aborting)
    assert store.status["phase"] == "Succeeded", store.status
