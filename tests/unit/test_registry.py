"""What one operator run keeps across its handlers is its own (pitstop.registry):
two runs in one process, started and stopped as kopf does (its startup and cleanup
handlers in order, its memo copied for each object), share no waiter, alert or
repair count. Before the registry these lived in module globals: a second run
counted the first run's repairs in pitstop_repairs and took the first run's alerts.

The handlers are called as kopf calls them (keyword arguments, the run's memo or an
object's shallow copy of it), so the scenario reads the same with or without the
registry; only kopf's list of startup handlers is read from its private registry."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import kopf
import pytest
from kopf._core.intents.causes import Activity

from pitstop import constants as C
from pitstop import handlers, metrics, registry
from pitstop.cluster import indexes
from pitstop.instances import serving
from pitstop.models import NodeRepairSpec, NodeRepairStatus, Phase
from pitstop.pool import daemon as pool_daemon
from pitstop.remediation import daemon as remediation_daemon
from pitstop.repair import daemon as repair_daemon
from tests.unit.test_policy_driver import POLICY, World, alert_policy

LOG = logging.getLogger("test")
NO_INDEXES: dict[str, Any] = {
    name: {}
    for name in (
        "pods_by_node",
        "endpoints_by_pod",
        "nodes_by_name",
        "repairs_by_node",
        "policies_by_name",
        "profiles_by_name",
        "namespace_labels",
        "pdbs_by_namespace",
    )
}


def activity(which: Activity) -> list[Callable[..., Any]]:
    """pitstop's handlers of a kopf activity, in the order kopf runs them."""
    found = kopf.get_default_registry()._activities.get_handlers(activity=which)
    return [h.fn for h in found]


async def run_all(fns: list[Callable[..., Any]], memo: kopf.Memo) -> None:
    for fn in fns:
        result = fn(memo=memo, logger=LOG, settings=kopf.OperatorSettings(), **NO_INDEXES)
        if asyncio.iscoroutine(result):
            await result


async def start(options: Any = None) -> kopf.Memo:
    """An operator run's start: a new memo, as pitstop.runner makes it, through
    every startup handler."""
    memo = kopf.Memo({handlers.MEMO_OPTIONS: options} if options else {})
    await run_all(activity(Activity.STARTUP), memo)
    return memo


async def stop(memo: kopf.Memo) -> None:
    await run_all(activity(Activity.CLEANUP), memo)


def of_object(memo: kopf.Memo, kube: Any) -> kopf.Memo:
    """kopf's memo of one object: a shallow copy of the run's (here with a stand-in
    of the API calls the handler makes)."""
    mine = copy.copy(memo)
    mine["kube"] = kube
    return mine


class OnePass:
    """kopf's DaemonStopped for a daemon that makes one pass and is then stopped."""

    def __init__(self) -> None:
        self.asked = 0

    def __bool__(self) -> bool:
        self.asked += 1
        return self.asked > 1

    async def wait(self) -> None:
        return None


def finished(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "finalizers": []},
        "spec": {"nodeName": f"node-of-{name}"},
        "status": {"phase": "Succeeded"},
    }


def counted(phase: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("pitstop_repairs", {"phase": phase})


def test_a_second_run_counts_only_its_own_repairs() -> None:
    async def scenario() -> tuple[float | None, float | None]:
        first = await start()
        await repair_daemon.drive(  # type: ignore[call-arg]
            name="r-first",
            body=finished("r-first"),
            memo=of_object(first, None),
            logger=LOG,
            stopped=OnePass(),
            **NO_INDEXES,
        )
        in_first = counted("Succeeded")
        await stop(first)  # the process carries on (a test, the simulation's restart)
        second = await start()
        await repair_daemon.drive(  # type: ignore[call-arg]
            name="r-second",
            body=finished("r-second"),
            memo=of_object(second, None),
            logger=LOG,
            stopped=OnePass(),
            **NO_INDEXES,
        )
        in_second = counted("Succeeded")
        await stop(second)
        return in_first, in_second

    in_first, in_second = asyncio.run(scenario())
    assert in_first == 1
    assert in_second == 1, "the second run counts the first run's repair too"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def post_alert(port: int, token: str, node: str) -> None:
    alert = {
        "status": "firing",
        "labels": {"alertname": "NodeDiskFailing", "node": node},
        "startsAt": "2026-01-01T00:00:00Z",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/alerts",
            data=json.dumps({"version": "4", "alerts": [alert]}),
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        assert r.status == 200, await r.text()


async def one_policy_pass(memo: kopf.Memo, world: World) -> dict[str, Any]:
    """The policy daemon's first pass in this run; the status it wrote."""
    nodes, repairs, policies = world.indexes()
    await pool_daemon.watch_pool(  # type: ignore[call-arg]
        name=POLICY,
        body=world.body,
        memo=of_object(memo, world),
        logger=LOG,
        stopped=OnePass(),
        nodes_by_name=nodes,
        repairs_by_node=repairs,
        policies_by_name=policies,
    )
    return world.body["status"]  # type: ignore[no-any-return]


def test_a_second_run_takes_no_alert_the_first_received(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alert reached the first run only (its receiver); a later leader knows a
    firing alert from the policy's status (pitstop.pool.ledger), not from memory."""
    monkeypatch.setattr(kopf, "event", lambda *a, **kw: None)
    (tmp_path / "token").write_text("t")

    def options() -> SimpleNamespace:
        return SimpleNamespace(
            bind="127.0.0.1",
            alerts_port=free_port(),
            alerts_secret="unused/unused",
            alerts_token_file=str(tmp_path / "token"),
            alerts_rate=0.0,
            alerts_burst=1,
        )

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        given = options()
        first = await start(given)
        try:
            await post_alert(given.alerts_port, "t", "n1")
            seen_by_first = await one_policy_pass(first, alert_policy(paused=True))
        finally:
            await stop(first)
        second = await start(options())
        try:
            seen_by_second = await one_policy_pass(second, alert_policy(paused=True))
        finally:
            await stop(second)
        return seen_by_first, seen_by_second

    seen_by_first, seen_by_second = asyncio.run(scenario())
    assert seen_by_first["unhealthyNodes"] == 1, "the run that received it acts on it"
    assert seen_by_second["unhealthyNodes"] == 0, "the second run took the first's alert"


def test_every_other_startup_handler_finds_the_registry_made() -> None:
    """kopf runs startup handlers in the order they were registered; the task
    sources' own already wakes repairs through the run's Wakeups."""
    startup = activity(Activity.STARTUP)
    assert startup[0] is registry.fresh_registry, [f.__qualname__ for f in startup]


def test_an_objects_memo_reaches_its_runs_registry_and_no_other() -> None:
    """kopf gives each object a shallow copy of the run's memo: a watch handler of
    one run wakes that run's repairs and policy daemons only."""
    runs = []
    for _ in range(2):
        memo = kopf.Memo()
        registry.fresh_registry(memo=memo)
        runs.append(memo)
    waiting = [registry.Registry.of(m) for m in runs]
    repairs = [w.wakeups.nodes.register("n1") for w in waiting]
    policies = [w.wakeups.policies.register() for w in waiting]

    indexes.wake_on_repair(spec={"nodeName": "n1"}, memo=copy.copy(runs[0]))
    assert [e.is_set() for e in repairs] == [True, False]
    assert [e.is_set() for e in policies] == [True, False]


class NoAnswers:
    """The API calls a pass makes here, each accepted and forgotten."""

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        pass

    async def patch_status_ops(self, plural: str, name: str, ops: list[dict[str, Any]]) -> None:
        pass

    async def set_pod_condition(self, key: str, *a: Any) -> None:
        pass


def past_deadline(phase: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("pitstop_repairs_past_deadline", {"phase": phase})


def test_a_second_run_reports_no_repair_past_deadline_of_the_first() -> None:
    """A repair stuck past its Evicting deadline in the first run is counted there; a
    second run that never saw it does not count it (before the registry, DEADLINES
    was a module global: the first run's stuck repair stayed in /metrics for good)."""
    spec = {
        "nodeName": "n1",
        "reason": "r",
        "drain": {"taskTimeoutSeconds": 60, "evictionTimeoutSeconds": 120},
        "repair": {"strategy": "Manual", "timeoutSeconds": 300},
    }
    body = {"metadata": {"name": "r-stuck"}, "spec": spec}
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)

    async def scenario() -> tuple[float | None, float | None]:
        first = await start()
        mine = of_object(first, NoAnswers())
        driver = repair_daemon.Driver(  # as drive makes it, with the run's pieces
            "r-stuck",
            body,  # type: ignore[arg-type]
            mine["kube"],
            LOG,
            wake=indexes.wakeups(mine),
            pools=pool_daemon.pools(mine),
            phases=metrics.repair_phases(mine),
        )
        driver.state.spec = NodeRepairSpec.model_validate(spec)
        status = NodeRepairStatus(phase=Phase.EVICTING, phase_start_time=long_ago)
        await driver.report.write_status(status, long_ago, None)
        in_first = past_deadline("Evicting")
        await stop(first)
        second = await start()
        in_second = past_deadline("Evicting")
        await stop(second)
        return in_first, in_second

    in_first, in_second = asyncio.run(scenario())
    assert in_first == 1
    assert in_second == 0, "the second run reports the first run's stuck repair"


def gated_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "fn", "labels": {"faas_function": "f"}},
        "spec": {"nodeName": "n1", "readinessGates": [{"conditionType": "pitstop.dev/serving"}]},
        "status": {"phase": "Running", "conditions": []},
    }


def gated(state: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("pitstop_gated_pods", {"state": state})


def test_a_second_run_counts_only_the_gated_pods_it_saw() -> None:
    """The serving gate keeper's pod events of the first run are not the second's:
    before the registry, GATED was a module global and a second run reported every
    gated pod the first had seen, gone or not."""
    node = {"metadata": {"name": "n1", "annotations": {}}}

    async def scenario() -> tuple[float | None, float | None]:
        first = await start()
        await serving.on_pod(  # type: ignore[call-arg]
            body=gated_pod("p1"),
            type="ADDED",
            memo=of_object(first, NoAnswers()),
            nodes_by_name={"n1": [node]},
            pods_by_node={"n1": [gated_pod("p1")]},
            logger=LOG,
        )
        in_first = gated("waiting")
        await stop(first)
        second = await start()
        in_second = gated("waiting")
        await stop(second)
        return in_first, in_second

    in_first, in_second = asyncio.run(scenario())
    assert in_first == 1
    assert in_second == 0, "the second run counts the first run's gated pod"


def test_a_remediation_event_wakes_its_own_runs_daemon_only() -> None:
    """The remediation daemons' wake-ups and pass locks are the run's (Remediations),
    as the repairs' are."""
    runs = []
    for _ in range(2):
        memo = kopf.Memo()
        registry.fresh_registry(memo=memo)
        runs.append(memo)
    waiting = [registry.Registry.of(m).remediations for m in runs]
    wakers = [w.wakers.register("uid-1") for w in waiting]
    remediation_daemon.wake_remediation(
        labels={C.LABEL_REMEDIATION_UID: "uid-1"}, memo=copy.copy(runs[1])
    )
    assert [e.is_set() for e in wakers] == [False, True]
    assert waiting[0].passes.lock("uid-1") is not waiting[1].passes.lock("uid-1")
