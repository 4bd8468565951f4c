"""How the evictions decided in one pass are sent (no cluster): in turn per budget
(the next one beside a slow one, up to a limit), budgets and pods without one in
parallel, a budget's turn ending at its first 429."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from pitstop.cluster.kube import Eviction
from pitstop.models import NodeRepairSpec, NodeRepairStatus
from pitstop.repair import act_pods
from pitstop.repair.act_pods import PodSteps
from pitstop.repair.flow import Decision
from pitstop.repair.report import Report
from pitstop.repair.state import RepairState

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class FakeKube:
    """Answers evictions after a yield, refusing the pods in `refuse`; records how
    many were in flight at once per budget."""

    def __init__(
        self, budget_of: dict[str, str], refuse: set[str], slow: dict[str, float] | None = None
    ) -> None:
        self.budget_of, self.refuse, self.slow = budget_of, refuse, slow or {}
        self.sent: list[str] = []
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}

    async def evict(self, key: str, grace: int | None) -> Eviction:
        b = self.budget_of.get(key, key)
        self.in_flight[b] = self.in_flight.get(b, 0) + 1
        self.most[b] = max(self.most.get(b, 0), self.in_flight[b])
        self.sent.append(key)
        await asyncio.sleep(self.slow.get(key, 0.001))
        self.in_flight[b] -= 1
        if key in self.refuse:
            return Eviction(key, "blocked", "would violate", (b,))
        return Eviction(key, "evicted")


def steps(kube: FakeKube, pdbs_of: dict[str, tuple[str, ...]]) -> PodSteps:
    state = RepairState("r1", {"spec": {"nodeName": "n1"}}, kube, logging.getLogger())  # type: ignore[arg-type]
    state.pdbs_of = pdbs_of
    report = Report(state)
    report.post = lambda events, node: None  # type: ignore[method-assign]
    return PodSteps(state, report)


def test_evictions_under_one_budget_go_in_turn_and_the_rest_in_parallel() -> None:
    pdbs_of = {"fn/a1": ("fn/a",), "fn/a2": ("fn/a",), "fn/b1": ("fn/b",), "fn/b2": ("fn/b",)}
    kube = FakeKube({k: v[0] for k, v in pdbs_of.items()}, refuse=set())
    s = steps(kube, pdbs_of)
    d = Decision(status=NodeRepairStatus(), evict=[*pdbs_of, "fn/free-1", "fn/free-2"])
    asyncio.run(s.act(d, NOW, NodeRepairSpec(node_name="n1")))
    assert sorted(kube.sent) == sorted(d.evict)
    assert kube.most["fn/a"] == kube.most["fn/b"] == 1, "one request per budget at a time"
    assert kube.sent[:4] == ["fn/a1", "fn/b1", "fn/free-1", "fn/free-2"], "groups in parallel"
    assert {k for _, k in s.state.sent} == set(d.evict)


def test_a_refusal_ends_its_budgets_turn_until_the_next_pass() -> None:
    pdbs_of = {"fn/a1": ("fn/a",), "fn/a2": ("fn/a",), "fn/a3": ("fn/a",)}
    kube = FakeKube({k: "fn/a" for k in pdbs_of}, refuse={"fn/a2"})
    s = steps(kube, pdbs_of)
    asyncio.run(
        s.act(
            Decision(status=NodeRepairStatus(), evict=list(pdbs_of)),
            NOW,
            NodeRepairSpec(node_name="n1"),
        )
    )
    assert kube.sent == ["fn/a1", "fn/a2"], "a3 would be refused too: not sent"
    assert ("evict", "fn/a1") in s.state.sent and ("evict", "fn/a3") not in s.state.sent
    assert set(s.state.blocked) == {"fn/a2"} and s.state.blocked["fn/a2"].pdbs == ("fn/a",)


def test_a_slow_eviction_gets_the_next_one_sent_beside_it(monkeypatch: Any) -> None:
    """One asleep in the API server (a conflict on its budget) must not hold the rest;
    those answering fast stay one at a time; never more than the limit at once."""
    keys = [f"fn/a{n}" for n in range(8)]
    # With the real hedge (0.25 s), answers after 1 ms go strictly in turn.
    fast = FakeKube({k: "fn/a" for k in keys}, refuse=set())
    asyncio.run(
        steps(fast, {k: ("fn/a",) for k in keys}).act(
            Decision(status=NodeRepairStatus(), evict=keys), NOW, NodeRepairSpec(node_name="n1")
        )
    )
    assert fast.most["fn/a"] == 1, "answers within the hedge: strictly in turn"

    monkeypatch.setattr(act_pods, "EVICTION_HEDGE", 0.02)
    slow = {"fn/a0": 0.3, "fn/a1": 0.3, "fn/a2": 0.3, "fn/a3": 0.3}
    kube = FakeKube({k: "fn/a" for k in keys}, refuse=set(), slow=slow)
    s = steps(kube, {k: ("fn/a",) for k in keys})
    asyncio.run(
        s.act(Decision(status=NodeRepairStatus(), evict=keys), NOW, NodeRepairSpec(node_name="n1"))
    )
    assert kube.sent == keys, "in order"
    assert kube.most["fn/a"] == act_pods.EVICTIONS_IN_FLIGHT == 3, "hedged, up to the limit"
    assert {k for _, k in s.state.sent} == set(keys)


def test_a_refusal_beside_a_slow_eviction_stops_the_turn(monkeypatch: Any) -> None:
    monkeypatch.setattr(act_pods, "EVICTION_HEDGE", 0.02)
    keys = ["fn/a0", "fn/a1", "fn/a2", "fn/a3", "fn/a4"]
    # a1 answers at its first yield, well before the next hedge would send a2
    kube = FakeKube({k: "fn/a" for k in keys}, refuse={"fn/a1"}, slow={"fn/a0": 0.2, "fn/a1": 0})
    s = steps(kube, {k: ("fn/a",) for k in keys})
    asyncio.run(
        s.act(Decision(status=NodeRepairStatus(), evict=keys), NOW, NodeRepairSpec(node_name="n1"))
    )
    # a0 is asleep, a1 beside it is refused: nothing more is sent, a0's answer still counts
    assert kube.sent == ["fn/a0", "fn/a1"]
    assert ("evict", "fn/a0") in s.state.sent and set(s.state.blocked) == {"fn/a1"}


def test_a_repair_being_deleted_sends_no_more_marks_or_evictions() -> None:
    """Invariant 9: the deletion handler sets `stopping` before it waits for the pass
    in flight; the pass then sends nothing more (its give-back undoes what was sent)."""
    keys = ["fn/a0", "fn/a1", "fn/a2"]
    kube = FakeKube({k: "fn/a" for k in keys}, refuse=set())
    s = steps(kube, {k: ("fn/a",) for k in keys})
    first = kube.evict

    async def evict_then_delete(key: str, grace: int | None) -> Eviction:
        s.state.guard.stopping = True  # the repair is deleted while its first eviction flies
        return await first(key, grace)

    kube.evict = evict_then_delete  # type: ignore[method-assign]
    d = Decision(status=NodeRepairStatus(), evict=keys)
    asyncio.run(s.act(d, NOW, NodeRepairSpec(node_name="n1")))
    assert kube.sent == ["fn/a0"], "none sent after the deletion began"
    marks = Decision(status=NodeRepairStatus(), mark_draining=["fn/b"], evict=["fn/a1"])
    asyncio.run(s.act(marks, NOW, NodeRepairSpec(node_name="n1")))
    assert kube.sent == ["fn/a0"] and ("drain", "fn/b") not in s.state.sent


def test_a_refusal_names_the_budgets_of_the_pdb_index_not_of_the_message() -> None:
    """A 429 whose message names no budget (a reworded or translated message) still
    holds the pod under the budgets the index says cover it, with no extra Event."""
    posted: list[Any] = []
    s = steps(FakeKube({}, refuse=set()), {"fn/a1": ("fn/a",)})
    s.report.post = lambda events, node: posted.extend(events)  # type: ignore[method-assign]
    s.record(Eviction("fn/a1", "blocked", "Cannot evict pod (reworded)", ()), NOW)
    assert s.state.blocked["fn/a1"].pdbs == ("fn/a",)
    assert posted == []
    # A pod the index knows no budget of keeps what the answer named, or none.
    s.record(Eviction("fn/b1", "blocked", "The disruption budget b needs 1", ("fn/b",)), NOW)
    assert s.state.blocked["fn/b1"].pdbs == ("fn/b",)
    s.record(Eviction("fn/a1", "error", "500 Internal Server Error"), NOW)
    assert s.state.blocked["fn/a1"].pdbs == () and len(posted) == 1
