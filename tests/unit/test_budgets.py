"""PodDisruptionBudgets in the instance contract (no cluster): whom a budget covers,
what it allows now, and the room it leaves for evictions already accepted."""

from __future__ import annotations

from typing import Any

from pitstop.instances import contract
from pitstop.instances.contract import Budget, Instance, TaskCount


def pod(name: str, ns: str = "fn", ready: bool = True, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": "fn"}},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pdb(
    name: str = "pdb",
    selector: dict[str, Any] | None = None,
    allowed: int = 1,
    generation: int = 1,
    observed: int | None = 1,
    disrupted: tuple[str, ...] = (),
    ns: str = "fn",
) -> dict[str, Any]:
    status: dict[str, Any] = {"disruptionsAllowed": allowed}
    if observed is not None:
        status["observedGeneration"] = observed
    if disrupted:
        status["disruptedPods"] = {p: "2024-05-01T12:00:00Z" for p in disrupted}
    return {
        "metadata": {"name": name, "namespace": ns, "generation": generation},
        "spec": {"selector": {"matchLabels": {"app": "fn"}} if selector is None else selector},
        "status": status,
    }


def instance(name: str, *pdbs: str, ready: bool = True, terminating: bool = False) -> Instance:
    return Instance(
        key=f"fn/{name}",
        kind="async",
        gated=False,
        serving=None,
        ready_endpoint=False,
        tasks=TaskCount(0),
        draining=True,
        terminating=terminating,
        pod_ready=ready,
        pdbs=pdbs,
    )


# --- coverage ---


def test_a_budget_covers_the_pods_its_selector_matches_in_its_namespace() -> None:
    assert contract.covers(pdb(), pod("a"))
    assert not contract.covers(pdb(), pod("a", app="other"))
    assert not contract.covers(pdb(), pod("a", ns="elsewhere"))


def test_an_empty_selector_covers_the_namespace_and_a_null_one_nothing() -> None:
    assert contract.covers(pdb(selector={}), pod("a", app="anything"))
    null = pdb()
    null["spec"]["selector"] = None
    assert not contract.covers(null, pod("a"))


def test_observe_names_the_budgets_of_a_pod_and_its_readiness() -> None:
    pdbs = [pdb("one"), pdb("two", selector={}), pdb("other", selector={"matchLabels": {"x": "y"}})]
    i = contract.observe(pod("a"), None, pdbs=pdbs)
    assert i.pdbs == ("fn/one", "fn/two")
    assert i.pod_ready
    assert not contract.observe(pod("b", ready=False), None).pod_ready


# --- what a budget allows now ---


def test_allowed_is_the_disruptions_the_status_allows() -> None:
    assert contract.allowed(pdb(allowed=3)) == 3
    assert contract.allowed(pdb(allowed=0)) == 0
    assert contract.allowed(pdb(allowed=-1)) == 0


def test_a_budget_whose_status_lags_its_spec_allows_nothing() -> None:
    # The API server refuses every eviction under it too (observedGeneration < generation).
    assert contract.allowed(pdb(allowed=5, generation=3, observed=2)) == 0
    assert contract.allowed(pdb(allowed=5, observed=None)) == 0


def test_budget_reads_the_disrupted_pods_as_keys() -> None:
    b = contract.budget(pdb(allowed=2, disrupted=("a", "b")))
    assert b == Budget("fn/pdb", 2, frozenset({"fn/a", "fn/b"}))


def test_blocking_pdbs_name_the_budgets_that_allow_nothing_now() -> None:
    pdbs = [pdb("open", allowed=1), pdb("shut", allowed=0), pdb("lagging", allowed=4, observed=0)]
    assert contract.blocking_pdbs(pdbs, [pod("a")]) == ["fn/lagging", "fn/shut"]
    assert contract.blocking_pdbs(pdbs, [pod("a", app="other")]) == []


# --- room for evictions ---


def test_room_is_what_each_budget_allows() -> None:
    budgets = {"fn/a": Budget("fn/a", 2), "fn/b": Budget("fn/b", 0)}
    assert contract.eviction_room(budgets, [], frozenset()) == {"fn/a": 2, "fn/b": 0}


def test_accepted_evictions_the_budget_does_not_count_yet_take_room() -> None:
    budgets = {"fn/pdb": Budget("fn/pdb", 3)}
    evicted = [instance("x", "fn/pdb"), instance("y", "fn/pdb", terminating=True)]
    room = contract.eviction_room(budgets, [*evicted, instance("z", "fn/pdb")], {"fn/x", "fn/y"})
    assert room == {"fn/pdb": 1}


def test_evictions_the_budget_already_counts_take_no_more_room() -> None:
    # disruptionsAllowed already went down for x: subtracting it again would halve the pace.
    budgets = {"fn/pdb": Budget("fn/pdb", 1, frozenset({"fn/x"}))}
    room = contract.eviction_room(budgets, [instance("x", "fn/pdb")], {"fn/x"})
    assert room == {"fn/pdb": 1}


def test_evicted_pods_that_are_gone_take_no_room() -> None:
    budgets = {"fn/pdb": Budget("fn/pdb", 1)}
    assert contract.eviction_room(budgets, [], {"fn/gone"}) == {"fn/pdb": 1}


def test_room_never_goes_below_zero() -> None:
    budgets = {"fn/pdb": Budget("fn/pdb", 0)}
    room = contract.eviction_room(budgets, [instance("x", "fn/pdb")], {"fn/x"})
    assert room == {"fn/pdb": 0}


def test_take_room_takes_one_from_every_budget_of_the_pod() -> None:
    room = {"fn/a": 2, "fn/b": 1}
    assert contract.take_room(room, instance("x", "fn/a", "fn/b")) == ()
    assert room == {"fn/a": 1, "fn/b": 0}


def test_a_pod_under_several_budgets_is_held_by_the_tightest() -> None:
    room = {"fn/a": 5, "fn/b": 0}
    assert contract.take_room(room, instance("x", "fn/a", "fn/b")) == ("fn/b",)
    assert room == {"fn/a": 5, "fn/b": 0}, "a held pod takes nothing"


def test_pods_without_a_known_budget_are_not_limited() -> None:
    room = {"fn/a": 0}
    assert contract.take_room(room, instance("x")) == ()
    assert contract.take_room(room, instance("y", "fn/not-indexed-yet")) == ()
    assert room == {"fn/a": 0}


def test_a_pod_that_is_not_ready_takes_no_disruption() -> None:
    # The API server evicts it without counting it (or refuses: the 429 path decides).
    room = {"fn/a": 0}
    assert contract.take_room(room, instance("x", "fn/a", ready=False)) == ()
    assert room == {"fn/a": 0}
