"""How a node is given back (no cluster): the release is built from the caller's
view and guarded by the markers it shows, so a lagging view costs one re-read, a
view without our lock is confirmed first, and a refusal that no re-read explains
is an error, not a loop."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import pytest

from pitstop import constants as C
from pitstop.cluster.kube import NodeChanged
from pitstop.repair.act_node import give_back
from tests.unit.test_nodes import OTHER, OURS, Refused, apply, locked


class NodeApi:
    """One node, patched as the API server would (tests.unit.test_nodes.apply)."""

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = node
        self.calls: list[str] = []
        self.broken = False
        """Refuse every patch, whatever it tests."""
        self.pods: list[dict[str, Any]] = []

    async def patch_pod(self, key: str, patch: dict[str, Any]) -> None:
        self.calls.append(f"unmark {key}: {patch['metadata']['annotations']}")

    async def set_pod_condition(
        self, key: str, type_: str, status: str, reason: str, message: str = ""
    ) -> None:
        self.calls.append(f"{type_}={status} on {key}")

    async def list_pods_on(self, node_name: str) -> list[dict[str, Any]]:
        assert node_name == "n1", "only the node's pods are listed"
        return copy.deepcopy(self.pods)

    async def get_node(self, name: str) -> dict[str, Any] | None:
        self.calls.append("GET")
        return copy.deepcopy(self.node)

    async def patch_node(self, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append("PATCH")
        try:
            if self.broken:
                raise Refused(ops)
            self.node = apply(self.node, ops)
        except Refused as e:
            raise NodeChanged(422, "the server rejected our request") from e
        return self.node


def run(api: NodeApi, view: dict[str, Any] | None, repair: str = "r1") -> bool:
    log = logging.getLogger()
    return asyncio.run(give_back(api, "n1", repair, log, set(), view))  # type: ignore[arg-type]


def test_a_view_that_shows_our_lock_is_released_without_a_read() -> None:
    api = NodeApi(locked("r1", unschedulable=True, taints=[OURS]))
    assert run(api, copy.deepcopy(api.node))
    assert api.calls == ["PATCH"]
    assert api.node["metadata"]["annotations"] == {} and "taints" not in api.node["spec"]


def test_a_lagging_view_costs_one_read_and_loses_nothing() -> None:
    view = locked("r1", unschedulable=True, taints=[OURS])
    api = NodeApi(copy.deepcopy(view))
    api.node["spec"]["taints"] = [OURS, OTHER]  # someone added a taint since the view
    assert run(api, view)
    assert api.calls == ["PATCH", "GET", "PATCH"]
    assert api.node["spec"]["taints"] == [OTHER], "their taint is kept, ours removed"


def test_a_view_without_our_lock_is_confirmed_from_the_api() -> None:
    api = NodeApi(locked("r1", unschedulable=True, taints=[OURS]))
    stale = locked("r0", unschedulable=True, taints=[OURS])
    assert run(api, stale)
    assert api.calls == ["GET", "PATCH"]


def test_a_lock_taken_meanwhile_by_another_repair_is_left_alone() -> None:
    view = locked("r1", unschedulable=True, taints=[OURS])
    api = NodeApi(locked("r2", unschedulable=True, taints=[OURS]))
    assert not run(api, view)
    assert api.calls == ["PATCH", "GET"]
    assert api.node["metadata"]["annotations"][C.ANNOTATION_REPAIR] == "r2"


def test_a_refusal_no_change_explains_is_raised() -> None:
    api = NodeApi(locked("r1", unschedulable=True, taints=[OURS]))
    api.broken = True
    with pytest.raises(NodeChanged):
        run(api, copy.deepcopy(api.node))
    assert api.calls == ["PATCH", "GET"], "one re-read, then the error: no retry loop"


def marked_pod(name: str, gate: bool = False, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "fn",
            "annotations": {C.ANNOTATION_DRAINING: "2024-05-01T12:00:00Z"},
            **meta,
        },
        "spec": {"readinessGates": [{"conditionType": C.CONDITION_SERVING}] if gate else []},
        "status": {
            "phase": "Running",
            "conditions": [{"type": C.CONDITION_SERVING, "status": "False"}],
        },
    }


def test_the_pods_to_unmark_are_found_by_their_marks_in_the_api() -> None:
    """Invariant 9: whatever the index shows (here: nothing), every pod of the node that
    carries a mark is unmarked, a closed serving condition reopened even without the
    gate; a terminating pod is left to go."""
    api = NodeApi(locked("r1", unschedulable=True, taints=[OURS]))
    api.pods = [
        marked_pod("gated", gate=True),
        marked_pod("ungated"),
        marked_pod("going", deletionTimestamp="2024-05-01T12:00:00Z"),
    ]
    assert run(api, copy.deepcopy(api.node))
    serving = C.CONDITION_SERVING
    assert sorted(api.calls[:-1]) == [
        f"{serving}=True on fn/gated",
        f"{serving}=True on fn/ungated",
        f"unmark fn/gated: {{'{C.ANNOTATION_DRAINING}': None}}",
        f"unmark fn/ungated: {{'{C.ANNOTATION_DRAINING}': None}}",
    ]
    assert api.calls[-1] == "PATCH", "the node is released after its pods"


# --- taking over the lock of a repair that ended ---


def holder(phase: str, on_failure: str | None, deleting: bool = False) -> bool:
    """Whether repair r1 must wait for r0, which holds node n1 in `phase`."""
    from pitstop.repair.act_node import NodeSteps
    from pitstop.repair.report import Report
    from pitstop.repair.state import RepairState

    st = RepairState("r1", {"spec": {"nodeName": "n1"}}, None, logging.getLogger("t"))  # type: ignore[arg-type]
    steps = NodeSteps(st, Report(st))
    node = {"metadata": {"name": "n1", "annotations": {C.ANNOTATION_REPAIR: "r0"}}}
    entry = {"name": "r0", "phase": phase, "deleting": deleting, "onFailure": on_failure}
    return steps.holder_active(node, {"n1": [entry]})  # type: ignore[arg-type]


def test_a_failed_holder_that_will_give_the_node_back_is_waited_for() -> None:
    # The long run's seed 10004: a repair took over the node of one that had just
    # Failed with onFailure: Uncordon; that one's give-back then took the drain
    # signals of the new repair off, the runtime took a task, and the new repair's
    # lagging view evicted it (invariant 1).
    assert holder("Failed", "Uncordon")


@pytest.mark.parametrize("on_failure", ["KeepCordoned", None])
def test_a_failed_holder_that_keeps_its_node_cordoned_is_taken_over(on_failure: str | None) -> None:
    assert not holder("Failed", on_failure)


def test_holders_still_running_or_being_deleted_are_waited_for() -> None:
    assert holder("Evicting", None)
    assert holder("Aborted", None, deleting=True)
    assert not holder("Succeeded", None)
