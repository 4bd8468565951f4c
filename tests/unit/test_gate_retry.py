"""A serving gate write that fails is tried again. The gate is written on a pod's
watch events and kopf drops an event handler's error, so before this a write that
timed out (the bench's burst on a loaded API server: 587 of 2,000 pods) left its pod
not Ready for good, the operator idle. The retry judges the pod again from the
indexes before each try: a node under repair by then keeps its gate closed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest

from pitstop import registry
from pitstop.cluster.kube import ApiError
from pitstop.instances import serving

LOG = logging.getLogger("test")


def gated_pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "p1", "namespace": "fn"},
        "spec": {"nodeName": "n1", "readinessGates": [{"conditionType": "pitstop.dev/serving"}]},
        "status": {"phase": "Running", "conditions": []},
    }


class Flaky:
    """Fails the first `failures` gate writes (a timeout, then a 503), then accepts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[str] = []
        self.written: list[str] = []

    async def set_pod_condition(self, key: str, type_: str, status: str, *_: Any) -> None:
        self.calls.append(key)
        if len(self.calls) <= self.failures:
            raise TimeoutError() if len(self.calls) % 2 else ApiError(503, "overloaded")
        self.written.append(status)


def memo_with(kube: Flaky) -> kopf.Memo:
    memo = kopf.Memo()
    registry.fresh_registry(memo=memo)
    memo["kube"] = kube
    return memo


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "RETRY_DELAYS", (0.01,), raising=False)


async def event(memo: kopf.Memo, node: dict[str, Any], pod: dict[str, Any]) -> None:
    await serving.on_pod(  # type: ignore[call-arg]
        body=pod,
        type="ADDED",
        memo=memo,
        nodes_by_name={"n1": [node]},
        pods_by_node={"n1": [pod]},
        logger=LOG,
    )


def test_a_failed_gate_write_is_tried_again_until_it_lands() -> None:
    kube = Flaky(failures=3)
    node = {"metadata": {"name": "n1", "annotations": {}}}

    async def scenario() -> None:
        memo = memo_with(kube)
        await event(memo, node, gated_pod())
        for _ in range(100):
            if kube.written:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert kube.written == ["True"]
    assert len(kube.calls) == 4


def test_no_retry_opens_a_gate_once_its_node_is_under_repair() -> None:
    kube = Flaky(failures=1)
    node: dict[str, Any] = {"metadata": {"name": "n1", "annotations": {}}}

    async def scenario() -> serving.GateStates:
        memo = memo_with(kube)
        await event(memo, node, gated_pod())
        node["metadata"]["annotations"]["pitstop.dev/repair"] = "r1"  # the index sees the lock
        await asyncio.sleep(0.1)
        return serving.gate_states(memo)

    states = asyncio.run(scenario())
    assert kube.calls == ["fn/p1"] and kube.written == []
    assert states.retrying == {}, "the retry ended"


def test_the_runs_cleanup_ends_its_retries() -> None:
    kube = Flaky(failures=10**6)
    node = {"metadata": {"name": "n1", "annotations": {}}}

    async def scenario() -> int:
        memo = memo_with(kube)
        await event(memo, node, gated_pod())
        await asyncio.sleep(0.05)
        await serving.stop_retries(memo=memo)
        tried = len(kube.calls)
        await asyncio.sleep(0.05)
        assert serving.gate_states(memo).retrying == {}
        return len(kube.calls) - tried

    assert asyncio.run(scenario()) == 0, "a stopped run wrote again"
