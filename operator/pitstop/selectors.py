"""Kubernetes label selectors (matchLabels + matchExpressions), evaluated locally."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """True when `labels` satisfy every requirement; the empty selector matches all."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req.get("key"), req.get("operator"), req.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def pdb_covers(pdb: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """The budget selects the pod: same namespace, and its selector matches (policy/v1:
    an empty selector selects every pod of the namespace, a null one none)."""
    selector = (pdb.get("spec") or {}).get("selector")
    meta = pod.get("metadata", {})
    return (
        selector is not None
        and meta.get("namespace") == pdb["metadata"]["namespace"]
        and matches(selector, meta.get("labels") or {})
    )
