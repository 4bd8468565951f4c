"""The outside checker's judgement of "a lock is released only after its repair
Verified" (tests/e2e/invariants.py), fed events by hand: what it saw one by one
is judged, what only a re-list showed is uncovered, never passed or broken. And its
judgement of the pods a repair leaves behind (invariant 9)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.invariants import DRAINING, GATE, LOCK, TAINT, Monitor, leftover_marks

NODE, REPAIR = "n-1", "r-1"


@dataclass
class Stream:
    """What `Monitor._judge` reads of a watch: its name and how far it caught up."""

    name: str
    rv: int = 0


def node(rv: int, locked: bool) -> dict[str, Any]:
    return {
        "metadata": {
            "name": NODE,
            "resourceVersion": str(rv),
            "annotations": {LOCK: REPAIR} if locked else {},
        },
        "spec": {"unschedulable": locked, "taints": [{"key": TAINT}] if locked else []},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def repair(rv: int, verified: bool) -> dict[str, Any]:
    conditions = [{"type": "Verified", "status": "True"}] if verified else []
    return {
        "metadata": {"name": REPAIR, "resourceVersion": str(rv)},
        "spec": {"nodeName": NODE},
        "status": {"phase": "Uncordoning" if verified else "Repairing", "conditions": conditions},
    }


def monitor() -> tuple[Monitor, Stream, Stream]:
    m = Monitor(client.ApiClient(), "ns", "pool=p", {NODE}, max_active=3, min_available=0)
    nodes, repairs = Stream("nodes"), Stream("noderepairs")
    m.watches = [nodes, repairs]  # type: ignore[list-item]
    return m, nodes, repairs


def released_at(rv: int, m: Monitor, nodes: Stream) -> None:
    m._on_node("ADDED", node(rv - 5, locked=True), None, False)
    nodes.rv = rv
    m._on_node("MODIFIED", node(rv, locked=False), node(rv - 5, locked=True), False)


def test_a_release_after_verified_passes() -> None:
    m, nodes, repairs = monitor()
    m._on_repair("ADDED", repair(3, verified=False), None, False)
    repairs.rv = 10
    m._on_repair("MODIFIED", repair(10, verified=True), repair(3, verified=False), False)
    released_at(12, m, nodes)
    assert m.checks["inv3 uncordon only after Verified"] == 0, "judged before rv 12 was seen"
    repairs.rv = 13  # (a bookmark)
    m._judge()
    assert m.checks["inv3 uncordon only after Verified"] == 1
    assert (m.breaks, m.uncovered) == ([], [])


def test_a_release_before_verified_breaks() -> None:
    m, nodes, repairs = monitor()
    m._on_repair("ADDED", repair(3, verified=False), None, False)
    released_at(12, m, nodes)
    repairs.rv = 14
    m._on_repair("MODIFIED", repair(14, verified=True), repair(3, verified=False), False)
    assert len(m.breaks) == 1 and "released by r-1 at rv 12" in m.breaks[0]


@pytest.mark.parametrize("kind", ["MODIFIED", "DELETED"])
def test_an_end_seen_only_by_a_relist_is_uncovered_not_a_break(kind: str) -> None:
    """The repair stream was blind: the re-list shows it Verified at rv 14, its last
    write (or gone, at no rv at all); it may have ended anywhere before, so a release
    at 12 can be judged neither way."""
    m, nodes, repairs = monitor()
    m._on_repair("ADDED", repair(3, verified=False), None, False)
    released_at(12, m, nodes)
    repairs.rv = 20
    seen = repair(14, verified=True) if kind == "MODIFIED" else repair(3, verified=False)
    m._on_repair(kind, seen, repair(3, verified=False), True)
    assert m.breaks == []
    assert len(m.uncovered) == 1 and "released by r-1 at rv 12" in m.uncovered[0]
    assert ("by rv 14" in m.uncovered[0]) == (kind == "MODIFIED")


def test_a_relisted_end_before_the_release_passes() -> None:
    m, nodes, repairs = monitor()
    m._on_repair("ADDED", repair(3, verified=False), None, False)
    repairs.rv = 20
    m._on_repair("MODIFIED", repair(10, verified=True), repair(3, verified=False), True)
    released_at(12, m, nodes)
    assert m.checks["inv3 uncordon only after Verified"] == 1
    assert (m.breaks, m.uncovered) == ([], [])


# --- invariant 9: no pod keeps a mark once no repair holds its node ---


def pod(
    name: str, node: str = NODE, draining: bool = False, gate: str | None = None, **meta: Any
) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True"}]
    if gate is not None:
        conditions.append({"type": GATE, "status": gate})
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "annotations": {DRAINING: "2024-05-01T12:00:00Z"} if draining else None,
            **meta,
        },
        "spec": {"nodeName": node},
        "status": {"conditions": conditions},
    }


def test_a_pod_left_marked_on_a_free_node_breaks() -> None:
    found = leftover_marks(
        [pod("a", draining=True), pod("b", gate="False"), pod("c", draining=True, gate="False")],
        held=set(),
    )
    assert found == [
        "inv9: ns/a on n-1 keeps its drain signal, and no repair holds the node",
        "inv9: ns/b on n-1 keeps its closed serving gate, and no repair holds the node",
        "inv9: ns/c on n-1 keeps its drain signal and closed serving gate, and no repair"
        " holds the node",
    ]


def test_marks_on_a_held_node_unmarked_or_terminating_pods_pass() -> None:
    pods = [
        pod("held", draining=True, gate="False"),
        pod("open", node="n-2", gate="True"),
        pod("plain", node="n-2"),
        pod("going", node="n-2", draining=True, deletionTimestamp="2024-05-01T12:00:00Z"),
    ]
    assert leftover_marks(pods, held={NODE}) == []
