"""Node markers (DESIGN "Node markers"): the lock, cordon and taint patches (no cluster)."""

from __future__ import annotations

from typing import Any

from pitstop import constants as C
from pitstop.cluster import nodes

OURS = {"key": C.TAINT_MAINTENANCE, "effect": "NoSchedule"}
OTHER = {"key": "dedicated", "value": "faas", "effect": "NoSchedule"}


def node(
    *,
    unschedulable: bool | None = None,
    taints: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    rv: str = "42",
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if unschedulable is not None:
        spec["unschedulable"] = unschedulable
    if taints is not None:
        spec["taints"] = taints
    meta: dict[str, Any] = {"name": "n1", "resourceVersion": rv}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": spec}


def locked(repair: str = "r1", was: str = "false", **kw: Any) -> dict[str, Any]:
    return node(
        annotations={C.ANNOTATION_REPAIR: repair, C.ANNOTATION_WAS_UNSCHEDULABLE: was}, **kw
    )


def apply(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386), as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = apply(out.get(k, {}), v)
    return out


# --- lock_and_cordon ---


def test_lock_and_cordon_is_conditional_on_resource_version() -> None:
    patch = nodes.lock_and_cordon(node(rv="77"), "r1")
    assert patch["metadata"]["resourceVersion"] == "77"


def test_lock_and_cordon_sets_lock_cordon_and_taint() -> None:
    after = apply(node(), nodes.lock_and_cordon(node(), "r1"))
    assert nodes.lock_holder(after) == "r1"
    assert after["spec"]["unschedulable"] is True
    assert after["spec"]["taints"] == [OURS]
    assert nodes.is_cordoned(after)


def test_lock_and_cordon_records_schedulable_node_as_false() -> None:
    patch = nodes.lock_and_cordon(node(unschedulable=False), "r1")
    assert patch["metadata"]["annotations"][C.ANNOTATION_WAS_UNSCHEDULABLE] == "false"


def test_lock_and_cordon_records_already_cordoned_node_as_true() -> None:
    patch = nodes.lock_and_cordon(node(unschedulable=True), "r1")
    assert patch["metadata"]["annotations"][C.ANNOTATION_WAS_UNSCHEDULABLE] == "true"


def test_lock_and_cordon_keeps_an_existing_record() -> None:
    """Inherited from a vanished repair: the state before *its* cordon counts."""
    before = locked("gone", was="false", unschedulable=True, taints=[OURS])
    patch = nodes.lock_and_cordon(before, "r2")
    assert C.ANNOTATION_WAS_UNSCHEDULABLE not in patch["metadata"]["annotations"]
    after = apply(before, patch)
    assert nodes.lock_holder(after) == "r2"
    assert not nodes.was_unschedulable(after)


def test_lock_and_cordon_keeps_other_taints() -> None:
    patch = nodes.lock_and_cordon(node(taints=[OTHER]), "r1")
    assert patch["spec"]["taints"] == [OTHER, OURS]


def test_lock_and_cordon_adds_our_taint_only_once() -> None:
    patch = nodes.lock_and_cordon(node(taints=[OTHER, OURS]), "r1")
    assert patch["spec"]["taints"] == [OTHER, OURS]


def test_lock_and_cordon_does_not_mutate_the_node() -> None:
    before = node(taints=[OTHER])
    nodes.lock_and_cordon(before, "r1")
    assert before == node(taints=[OTHER])


# --- cordon ---


def test_cordon_restores_cordon_and_taint_conditionally() -> None:
    before = locked(unschedulable=False, taints=[OTHER], rv="9")
    patch = nodes.cordon(before)
    assert patch["metadata"] == {"resourceVersion": "9"}  # the lock is untouched
    assert patch["spec"] == {"unschedulable": True, "taints": [OTHER, OURS]}


# --- release ---


def test_release_uncordons_a_node_that_was_schedulable() -> None:
    before = locked(was="false", unschedulable=True, taints=[OURS])
    after = apply(before, nodes.release(before))
    assert "unschedulable" not in after["spec"]
    assert "taints" not in after["spec"]
    assert nodes.lock_holder(after) is None
    assert not nodes.is_cordoned(after)


def test_release_leaves_a_previously_cordoned_node_cordoned() -> None:
    before = locked(was="true", unschedulable=True, taints=[OURS])
    after = apply(before, nodes.release(before))
    assert after["spec"]["unschedulable"] is True
    assert not nodes.has_taint(after)


def test_release_removes_only_our_taint() -> None:
    before = locked(unschedulable=True, taints=[OTHER, OURS])
    assert nodes.release(before)["spec"]["taints"] == [OTHER]


def test_release_removes_both_lock_annotations() -> None:
    before = locked(unschedulable=True, taints=[OURS])
    before["metadata"]["annotations"]["unrelated"] = "keep"
    after = apply(before, nodes.release(before))
    assert after["metadata"]["annotations"] == {"unrelated": "keep"}


def test_release_is_conditional_on_resource_version() -> None:
    assert nodes.release(locked(rv="5"))["metadata"]["resourceVersion"] == "5"


# --- lock_holder / is_cordoned ---


def test_lock_holder_names_the_repair() -> None:
    assert nodes.lock_holder(locked("r9")) == "r9"


def test_lock_holder_is_none_without_or_with_empty_annotation() -> None:
    assert nodes.lock_holder(node()) is None
    assert nodes.lock_holder(node(annotations={C.ANNOTATION_REPAIR: ""})) is None


def test_is_cordoned_needs_both_unschedulable_and_our_taint() -> None:
    assert nodes.is_cordoned(node(unschedulable=True, taints=[OURS]))
    assert not nodes.is_cordoned(node(unschedulable=True))
    assert not nodes.is_cordoned(node(unschedulable=True, taints=[OTHER]))
    assert not nodes.is_cordoned(node(taints=[OURS]))


def test_condition_status_reads_a_node_condition() -> None:
    body = node()
    body["status"] = {"conditions": [{"type": "Ready", "status": "False"}]}
    assert nodes.condition_status(body, "Ready") == "False"
    assert nodes.condition_status(body, "KernelDeadlock") is None


def test_orphaned_lock_names_a_holder_that_no_longer_exists() -> None:
    assert nodes.orphaned_lock(locked("gone"), ["other"]) == "gone"
    assert nodes.orphaned_lock(locked("gone"), []) == "gone"


def test_orphaned_lock_is_none_while_the_holder_exists_or_without_a_lock() -> None:
    assert nodes.orphaned_lock(locked("r1"), ["r0", "r1"]) is None
    assert nodes.orphaned_lock(node(), []) is None
    assert nodes.orphaned_lock(node(annotations={C.ANNOTATION_REPAIR: ""}), []) is None


def test_releasing_an_orphaned_lock_keeps_a_cordon_that_predates_the_repair() -> None:
    """The sweep gives the node back with release(): what the record says is restored."""
    before = locked("gone", was="true", unschedulable=True, taints=[OTHER, OURS])
    after = apply(before, nodes.release(before))
    assert after["spec"]["unschedulable"] is True
    assert after["spec"]["taints"] == [OTHER]
    assert nodes.lock_holder(after) is None
    mine = locked("gone", was="false", unschedulable=True, taints=[OURS])
    assert not apply(mine, nodes.release(mine))["spec"].get("unschedulable")
