"""kube.blocking_pdbs: PDB names from a 429 eviction answer (no cluster)."""

from __future__ import annotations

from typing import Any

from pitstop.cluster.kube import blocking_pdbs


def refusal(*causes: dict[str, str]) -> dict[str, Any]:
    return {
        "kind": "Status",
        "status": "Failure",
        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
        "reason": "TooManyRequests",
        "code": 429,
        "details": {"causes": list(causes)},
    }


def budget(message: str) -> dict[str, str]:
    return {"reason": "DisruptionBudget", "message": message}


def test_names_the_budget_in_the_pods_namespace() -> None:
    body = refusal(budget("The disruption budget fn needs 3 healthy pods and has 0 currently"))
    assert blocking_pdbs(body, "ns") == ("ns/fn",)


def test_budget_still_being_processed_is_named_too() -> None:
    body = refusal(budget("The disruption budget fn-pdb is still being processed by the server."))
    assert blocking_pdbs(body, "team") == ("team/fn-pdb",)


def test_several_budgets_keep_their_order() -> None:
    body = refusal(
        budget("The disruption budget a needs 1 healthy pods and has 0 currently"),
        budget("The disruption budget b needs 2 healthy pods and has 1 currently"),
    )
    assert blocking_pdbs(body, "ns") == ("ns/a", "ns/b")


def test_other_causes_are_ignored() -> None:
    body = refusal(
        {"reason": "FieldValueInvalid", "message": "The disruption budget x needs 1"},
        budget("Something else entirely"),
    )
    assert blocking_pdbs(body, "ns") == ()


def test_throttling_429_without_details_names_nothing() -> None:
    assert blocking_pdbs({"code": 429, "message": "too many requests"}, "ns") == ()
    assert blocking_pdbs({}, "ns") == ()
    assert blocking_pdbs({"details": None}, "ns") == ()
    assert blocking_pdbs({"details": {"causes": None}}, "ns") == ()
