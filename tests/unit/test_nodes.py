"""Node markers (DESIGN "Node markers"): the lock, cordon and taint patches (no cluster)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

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


class Refused(Exception):
    """What the API server answers 422 for: a failed `test`, a path that is not there."""


def apply(target: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON Patch (RFC 6902) as the API server applies it: all or nothing, and a
    `test` of null passes for a member that is absent (checked against
    kube-apiserver v1.35: a missing parent fails it)."""
    out = copy.deepcopy(target)
    for op in ops:
        *parents, leaf = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]
        ]
        holder: Any = out
        for part in parents:
            if not isinstance(holder, dict) or part not in holder:
                raise Refused(op)
            holder = holder[part]
        if op["op"] == "test":
            if holder.get(leaf) != op["value"]:
                raise Refused(op)
        elif op["op"] == "add":
            holder[leaf] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            if leaf not in holder:
                raise Refused(op)
            del holder[leaf]
        else:
            raise AssertionError(op)
    return out


def refused(target: dict[str, Any], ops: list[dict[str, Any]]) -> bool:
    try:
        apply(target, ops)
    except Refused:
        return True
    return False


# --- the guards: what a patch was built from must still hold ---


@pytest.mark.parametrize(
    "build",
    [
        lambda n: nodes.lock_and_cordon(n, "r2"),
        nodes.cordon,
        nodes.release,
    ],
    ids=["lock_and_cordon", "cordon", "release"],
)
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda n: n["metadata"]["annotations"].update({C.ANNOTATION_REPAIR: "r3"}), id="lock"
        ),
        pytest.param(
            lambda n: n["metadata"]["annotations"].pop(C.ANNOTATION_WAS_UNSCHEDULABLE), id="record"
        ),
        pytest.param(lambda n: n["spec"].pop("unschedulable"), id="uncordoned"),
        pytest.param(lambda n: n["spec"]["taints"].append(OTHER), id="taints"),
    ],
)
def test_a_patch_is_refused_when_a_marker_it_read_changed(build: Any, change: Any) -> None:
    read = locked("r2", unschedulable=True, taints=[OURS])
    ops = build(read)
    assert not refused(read, ops)
    now = copy.deepcopy(read)
    change(now)
    assert refused(now, ops)


def test_a_patch_ignores_what_it_did_not_read() -> None:
    """The node's status writes (kubelet heartbeats, kwok) and other annotations do not
    refuse it, where a resourceVersion precondition would."""
    read = node(taints=[OTHER], annotations={})  # as the index keeps it: no other keys
    ops = nodes.lock_and_cordon(read, "r1")
    now = copy.deepcopy(read)
    now["metadata"]["resourceVersion"] = "43"
    now["metadata"]["annotations"] = {"node.alpha.kubernetes.io/ttl": "0"}
    now["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    after = apply(now, ops)
    assert nodes.lock_holder(after) == "r1" and nodes.is_cordoned(after)
    assert after["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] == "0"


def test_a_node_without_annotations_gets_the_map_created() -> None:
    read = node()
    assert "annotations" not in read["metadata"]
    after = apply(read, nodes.lock_and_cordon(read, "r1"))
    assert nodes.lock_holder(after) == "r1"
    now = copy.deepcopy(read)
    now["metadata"]["annotations"] = {"x": "y"}
    assert refused(now, nodes.lock_and_cordon(read, "r1")), "it would replace the map"


# --- lock_and_cordon ---


def test_lock_and_cordon_sets_lock_cordon_and_taint() -> None:
    after = apply(node(), nodes.lock_and_cordon(node(), "r1"))
    assert nodes.lock_holder(after) == "r1"
    assert after["spec"]["unschedulable"] is True
    assert after["spec"]["taints"] == [OURS]
    assert nodes.is_cordoned(after)


def test_lock_and_cordon_records_schedulable_node_as_false() -> None:
    after = apply(node(unschedulable=False), nodes.lock_and_cordon(node(unschedulable=False), "r1"))
    assert after["metadata"]["annotations"][C.ANNOTATION_WAS_UNSCHEDULABLE] == "false"


def test_lock_and_cordon_records_already_cordoned_node_as_true() -> None:
    before = node(unschedulable=True, annotations={})
    after = apply(before, nodes.lock_and_cordon(before, "r1"))
    assert after["metadata"]["annotations"][C.ANNOTATION_WAS_UNSCHEDULABLE] == "true"


def test_lock_and_cordon_keeps_an_existing_record() -> None:
    """Inherited from a vanished repair: the state before *its* cordon counts."""
    before = locked("gone", was="false", unschedulable=True, taints=[OURS])
    after = apply(before, nodes.lock_and_cordon(before, "r2"))
    assert nodes.lock_holder(after) == "r2"
    assert not nodes.was_unschedulable(after)


def test_lock_and_cordon_keeps_other_taints() -> None:
    after = apply(node(taints=[OTHER]), nodes.lock_and_cordon(node(taints=[OTHER]), "r1"))
    assert after["spec"]["taints"] == [OTHER, OURS]


def test_lock_and_cordon_adds_our_taint_only_once() -> None:
    before = node(taints=[OTHER, OURS])
    assert apply(before, nodes.lock_and_cordon(before, "r1"))["spec"]["taints"] == [OTHER, OURS]


def test_lock_and_cordon_does_not_mutate_the_node() -> None:
    before = node(taints=[OTHER])
    nodes.lock_and_cordon(before, "r1")
    assert before == node(taints=[OTHER])


# --- cordon ---


def test_cordon_restores_cordon_and_taint_and_leaves_the_lock() -> None:
    before = locked(unschedulable=False, taints=[OTHER], rv="9")
    after = apply(before, nodes.cordon(before))
    assert after["metadata"] == before["metadata"]
    assert after["spec"] == {"unschedulable": True, "taints": [OTHER, OURS]}


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
    assert apply(before, nodes.release(before))["spec"]["taints"] == [OTHER]


def test_release_removes_both_lock_annotations() -> None:
    before = locked(unschedulable=True, taints=[OURS])
    before["metadata"]["annotations"]["unrelated"] = "keep"
    after = apply(before, nodes.release(before))
    assert after["metadata"]["annotations"] == {"unrelated": "keep"}


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
