"""Node markers (DESIGN "Node markers"): the lock, the cordon and the taint, and
how to put them on and take them off. Pure: builds patches, never calls the API.

The lock annotation, the prior schedulability and the cordon go on the node in
one JSON Patch guarded by `test` operations on those markers, so a crash can never
leave a cordon without the record of what to restore (invariants 4 and 6), and a
concurrent writer of the markers makes it fail rather than be overwritten."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pitstop import constants

TAINT = {"key": constants.TAINT_MAINTENANCE, "effect": "NoSchedule"}


def node_annotations(node: Mapping[str, Any]) -> Mapping[str, str]:
    return node.get("metadata", {}).get("annotations") or {}


LOCK_ANNOTATIONS = (constants.ANNOTATION_REPAIR, constants.ANNOTATION_WAS_UNSCHEDULABLE)
"""The node annotations a repair writes: its lock and its record of the prior cordon."""


def lock_holder(node: Mapping[str, Any]) -> str | None:
    """Name of the NodeRepair that holds the node, if any."""
    return node_annotations(node).get(constants.ANNOTATION_REPAIR) or None


def orphaned_lock(node: Mapping[str, Any], repairs: Iterable[str]) -> str | None:
    """The lock holder if it is none of `repairs` (the NodeRepairs of the node that
    still exist): a repair force-deleted without its finalizer left its lock behind."""
    holder = lock_holder(node)
    return holder if holder is not None and holder not in set(repairs) else None


def was_unschedulable(node: Mapping[str, Any]) -> bool:
    return bool(node_annotations(node).get(constants.ANNOTATION_WAS_UNSCHEDULABLE) == "true")


def has_taint(node: Mapping[str, Any]) -> bool:
    taints = node.get("spec", {}).get("taints") or []
    return any(t.get("key") == constants.TAINT_MAINTENANCE for t in taints)


def is_cordoned(node: Mapping[str, Any]) -> bool:
    return bool(node.get("spec", {}).get("unschedulable")) and has_taint(node)


Op = dict[str, Any]
"""One JSON Patch (RFC 6902) operation."""


def lock_and_cordon(
    node: Mapping[str, Any], repair: str, known_prior: bool | None = None
) -> list[Op]:
    """Takes the lock and cordons, guarded by what it was built from (a concurrent
    writer of the markers, e.g. a second NodeRepair, makes the patch fail and the
    caller re-reads).

    Keeps the recorded prior schedulability when the lock is already ours or is
    inherited from a vanished repair: the node's state before *that* cordon counts.
    `known_prior` is the repair's own record, for a lock it must take again after
    someone stripped the annotations (the node is then cordoned by us, not before)."""
    notes: dict[str, str] = {constants.ANNOTATION_REPAIR: repair}
    if constants.ANNOTATION_WAS_UNSCHEDULABLE not in node_annotations(node):
        prior = bool(node.get("spec", {}).get("unschedulable"))
        if known_prior is not None:
            prior = known_prior
        notes[constants.ANNOTATION_WAS_UNSCHEDULABLE] = "true" if prior else "false"
    if node.get("metadata", {}).get("annotations") is None:
        writes = [_add("/metadata/annotations", notes)]
    else:
        writes = [_add(_annotation(k), v) for k, v in notes.items()]
    return [*guards(node), *writes, *_cordon_ops(node)]


def cordon(node: Mapping[str, Any]) -> list[Op]:
    """Restores the cordon of a node we hold (someone uncordoned it mid-repair)."""
    return [*guards(node), *_cordon_ops(node)]


def release(node: Mapping[str, Any]) -> list[Op]:
    """Removes the taint and the lock; uncordons unless the node was cordoned before."""
    spec = node.get("spec", {})
    ops = guards(node)
    ops += [
        {"op": "remove", "path": _annotation(k)}
        for k in LOCK_ANNOTATIONS
        if k in node_annotations(node)
    ]
    if was_unschedulable(node):
        ops.append(_add("/spec/unschedulable", True))
    elif spec.get("unschedulable") is not None:
        ops.append({"op": "remove", "path": "/spec/unschedulable"})
    taints = [t for t in spec.get("taints") or [] if t.get("key") != TAINT["key"]]
    if taints:
        ops.append(_add("/spec/taints", taints))
    elif spec.get("taints") is not None:
        ops.append({"op": "remove", "path": "/spec/taints"})
    return ops


def guards(node: Mapping[str, Any]) -> list[Op]:
    """`test` operations on every marker a patch is built from: the lock, its record
    of the prior schedulability, the cordon and the taints. A change to any of them
    since the read fails the whole patch (422), while the node's status writes
    (heartbeats, conditions) do not, as a resourceVersion precondition would.
    A null value tests that the field is absent."""
    spec = node.get("spec", {})
    meta = node.get("metadata", {})
    if meta.get("annotations") is None:
        tests = [_test("/metadata/annotations", None)]
    else:
        tests = [_test(_annotation(k), node_annotations(node).get(k)) for k in LOCK_ANNOTATIONS]
    tests.append(_test("/spec/unschedulable", spec.get("unschedulable")))
    tests.append(_test("/spec/taints", spec.get("taints")))
    return tests


def _cordon_ops(node: Mapping[str, Any]) -> list[Op]:
    return [_add("/spec/unschedulable", True), _add("/spec/taints", _taints_with_ours(node))]


def _annotation(key: str) -> str:
    return "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")


def _test(path: str, value: Any) -> Op:
    return {"op": "test", "path": path, "value": value}


def _add(path: str, value: Any) -> Op:
    """`add` sets a member whether or not it exists (RFC 6902 4.1)."""
    return {"op": "add", "path": path, "value": value}


def _taints_with_ours(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    taints = list(node.get("spec", {}).get("taints") or [])
    if not has_taint(node):
        taints.append(dict(TAINT))
    return taints


def condition_status(node: Mapping[str, Any], type_: str) -> str | None:
    for cond in node.get("status", {}).get("conditions") or []:
        if cond.get("type") == type_:
            return str(cond.get("status"))
    return None
