"""The pool daemon's per-node views are remade when, and only when, a node changes."""

from __future__ import annotations

from typing import Any

from pitstop.pool import arithmetic
from pitstop.pool.daemon import NodeViews, parse_policies, pools_of


def node(name: str, rv: str, ready: str = "True", pool: str = "a") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": rv, "labels": {"pool": pool}},
        "spec": {},
        "status": {
            "conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]
        },
    }


def test_views_follow_resource_versions() -> None:
    views = NodeViews()
    index = {"n1": [node("n1", "1")], "n2": [node("n2", "1")]}
    first = {v.name: v for v in views.all(index)}
    assert first["n1"].ready and first["n2"].ready
    index["n1"] = [node("n1", "2", ready="False")]
    second = {v.name: v for v in views.all(index)}
    assert second["n2"] is first["n2"]  # unchanged: the same view
    assert not second["n1"].ready  # changed: made again
    del index["n2"]
    assert [v.name for v in views.all(index)] == ["n1"]
    index["n2"] = [node("n2", "1", ready="False")]  # re-created with a fresh view
    assert not {v.name: v for v in views.all(index)}["n2"].ready


def test_views_without_resource_version_are_not_cached() -> None:
    views = NodeViews()
    raw = node("n1", "")
    assert views.all({"n1": [raw]})[0].ready
    raw["status"]["conditions"][0]["status"] = "False"
    assert not views.all({"n1": [raw]})[0].ready


def test_pools_of_uses_parsed_policies() -> None:
    spec = {"nodeSelector": {"matchLabels": {"pool": "a"}}, "repairTemplate": {"spec": {}}}
    other = {"nodeSelector": {"matchLabels": {"pool": "b"}}, "repairTemplate": {"spec": {}}}
    policies = parse_policies({"pa": [spec], "pb": [other]})
    views = NodeViews().all({"n1": [node("n1", "1")], "n2": [node("n2", "1", pool="b")]})
    assert [name for name, _ in pools_of(views[0], policies)] == ["pa"]
    assert [v.name for v in arithmetic.pool_of(policies[1][1], views)] == ["n2"]
