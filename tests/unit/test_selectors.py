"""Kubernetes label selectors evaluated locally (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from pitstop.selectors import matches

LABELS = {"app": "fn", "tier": "sync"}


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    req: dict[str, Any] = {"key": key, "operator": op}
    if values:
        req["values"] = list(values)
    return {"matchExpressions": [req]}


@pytest.mark.parametrize("selector", [None, {}, {"matchLabels": {}, "matchExpressions": []}])
def test_empty_selector_matches_everything(selector: dict[str, Any] | None) -> None:
    assert matches(selector, LABELS)
    assert matches(selector, {})


def test_match_labels_all_must_match() -> None:
    assert matches({"matchLabels": {"app": "fn"}}, LABELS)
    assert matches({"matchLabels": {"app": "fn", "tier": "sync"}}, LABELS)
    assert not matches({"matchLabels": {"app": "fn", "tier": "async"}}, LABELS)
    assert not matches({"matchLabels": {"zone": "a"}}, LABELS)


def test_in() -> None:
    assert matches(expr("tier", "In", "sync", "async"), LABELS)
    assert not matches(expr("tier", "In", "batch"), LABELS)
    assert not matches(expr("zone", "In", "a"), LABELS)


def test_not_in_matches_when_key_is_absent() -> None:
    assert matches(expr("tier", "NotIn", "batch"), LABELS)
    assert not matches(expr("tier", "NotIn", "sync"), LABELS)
    assert matches(expr("zone", "NotIn", "a"), LABELS)


def test_exists() -> None:
    assert matches(expr("app", "Exists"), LABELS)
    assert not matches(expr("zone", "Exists"), LABELS)


def test_does_not_exist() -> None:
    assert matches(expr("zone", "DoesNotExist"), LABELS)
    assert not matches(expr("app", "DoesNotExist"), LABELS)


def test_labels_and_expressions_are_anded() -> None:
    selector = {
        "matchLabels": {"app": "fn"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["sync"]},
            {"key": "zone", "operator": "DoesNotExist"},
        ],
    }
    assert matches(selector, LABELS)
    assert not matches(selector, {**LABELS, "zone": "a"})
    assert not matches(selector, {**LABELS, "app": "other"})
