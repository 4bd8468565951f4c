"""The break-glass's rule (`pitstop gate open`): which gated pods it opens, which it
leaves held, and what it prints. The writes themselves are proven on a real API
server (tests/e2e/test_gate_break_glass.py)."""

from __future__ import annotations

from typing import Any

import pytest

from pitstop.cli.gate import Outcome, report, verdict

GATE = "pitstop.dev/serving"


def pod(node: str | None = "n1", serving: str | None = None, **extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": "p", **extra.get("meta", {})},
        "spec": {"readinessGates": [{"conditionType": GATE}]},
        "status": {"phase": "Running", "conditions": []},
    }
    if node:
        p["spec"]["nodeName"] = node
    if serving is not None:
        p["status"]["conditions"].append({"type": GATE, "status": serving})
    return p


def node(lock: str | None = None) -> dict[str, Any]:
    annotations = {"pitstop.dev/repair": lock} if lock else {}
    return {"metadata": {"name": "n1", "annotations": annotations}}


@pytest.mark.parametrize("serving", [None, "False"])
def test_a_closed_gate_on_a_free_node_opens(serving: str | None) -> None:
    assert verdict(pod(serving=serving), node(), {}).action == "open"


@pytest.mark.parametrize(
    "phase", ["Deregistering", "WaitingForTasks", "Evicting", "Repairing", "Verifying", "Failed"]
)
def test_a_node_past_deregistration_holds(phase: str) -> None:
    v = verdict(pod(serving="False"), node(lock="r1"), {"r1": phase})
    assert v.action == "held"
    assert v.why == f"node n1 is under NodeRepair r1 ({phase}), past deregistration"


@pytest.mark.parametrize("phase", [None, "Pending", "Cordoning"])
def test_a_repair_that_closed_nothing_yet_does_not_hold(phase: str | None) -> None:
    assert verdict(pod(), node(lock="r1"), {"r1": phase}).action == "open"


def test_a_lock_left_by_a_deleted_repair_does_not_hold() -> None:
    v = verdict(pod(serving="False"), node(lock="gone"), {"other": "Evicting"})
    assert (v.action, v.why) == ("open", "node n1, lock of a deleted NodeRepair gone")


def test_unreadable_repairs_make_every_locked_node_hold() -> None:
    assert verdict(pod(), node(lock="r1"), None).action == "held"
    assert verdict(pod(), node(), None).action == "open"


@pytest.mark.parametrize(
    ("the_pod", "the_node", "why"),
    [
        (pod(serving="True"), node(), "open already"),
        (pod(node=None), None, "not scheduled yet"),
        (pod(), None, "node n1 does not exist"),
        (
            pod(meta={"deletionTimestamp": "2026-01-01T00:00:00Z"}),
            node(),
            "terminating or finished",
        ),
        ({**pod(), "spec": {"nodeName": "n1"}}, node(), "no serving gate"),
    ],
)
def test_what_is_skipped(the_pod: dict[str, Any], the_node: Any, why: str) -> None:
    assert (verdict(the_pod, the_node, {}).action, verdict(the_pod, the_node, {}).why) == (
        "skip",
        why,
    )


def test_the_report_puts_held_pods_first_and_fails_only_on_failures() -> None:
    outcomes = [
        Outcome("ns/a", "opened", "node n1"),
        Outcome("ns/b", "held", "node n2 is under NodeRepair r (Evicting), past deregistration"),
    ]
    text, ok = report(outcomes)
    assert ok
    assert text.splitlines() == [
        "held       ns/b: node n2 is under NodeRepair r (Evicting), past deregistration",
        "opened     ns/a: node n1",
        "1 opened, 1 held (a repair past deregistration), 0 skipped, 0 failed",
    ]
    _, ok = report([*outcomes, Outcome("ns/c", "failed", "forbidden")])
    assert not ok


def test_a_pod_that_changed_under_the_write_is_judged_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The write names the listed resourceVersion: a 409 means the pod changed (a
    repair may have closed its gate), so it is read again with its node, and a node
    now under a repair past deregistration holds it."""
    from kubernetes.client.exceptions import ApiException

    from pitstop.cli import gate

    writes: list[str] = []

    def patch_open(_api: Any, p: dict[str, Any], _now: Any) -> None:
        writes.append(p["metadata"].get("resourceVersion", ""))
        raise ApiException(status=409, reason="Conflict")

    changed = pod(serving="False")
    monkeypatch.setattr(gate, "patch_open", patch_open)
    monkeypatch.setattr(gate, "read_pod", lambda _api, _key: changed)
    locked = gate.World({"n1": node(lock="r1")}, {"r1": "Deregistering"})
    listed = gate.World({"n1": node()}, {})
    first = pod()
    first["metadata"]["resourceVersion"] = "7"
    outcome = gate.open_one(None, first, listed, False, lambda _node: locked)  # type: ignore[arg-type]
    assert writes == ["7"]
    assert (outcome.action, outcome.why) == (
        "held",
        "node n1 is under NodeRepair r1 (Deregistering), past deregistration",
    )
