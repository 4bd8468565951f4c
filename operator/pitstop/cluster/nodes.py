"""Node markers (DESIGN "Node markers"): the lock, the cordon and the taint, and
how to put them on and take them off. Pure: builds patches, never calls the API.

The lock annotation, the prior schedulability and the cordon go on the node in
one conditional patch, so a crash can never leave a cordon without the record of
what to restore (invariants 4 and 6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pitstop import constants

TAINT = {"key": constants.TAINT_MAINTENANCE, "effect": "NoSchedule"}


def node_annotations(node: Mapping[str, Any]) -> Mapping[str, str]:
    return node.get("metadata", {}).get("annotations") or {}


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


def lock_and_cordon(
    node: Mapping[str, Any], repair: str, known_prior: bool | None = None
) -> dict[str, Any]:
    """Takes the lock and cordons, conditional on the node's resourceVersion (a
    concurrent writer, e.g. a second NodeRepair, gets 409 and re-reads).

    Keeps the recorded prior schedulability when the lock is already ours or is
    inherited from a vanished repair: the node's state before *that* cordon counts.
    `known_prior` is the repair's own record, for a lock it must take again after
    someone stripped the annotations (the node is then cordoned by us, not before)."""
    meta = node.get("metadata", {})
    notes: dict[str, str] = {constants.ANNOTATION_REPAIR: repair}
    if constants.ANNOTATION_WAS_UNSCHEDULABLE not in node_annotations(node):
        prior = bool(node.get("spec", {}).get("unschedulable"))
        if known_prior is not None:
            prior = known_prior
        notes[constants.ANNOTATION_WAS_UNSCHEDULABLE] = "true" if prior else "false"
    return {
        "metadata": {"resourceVersion": meta.get("resourceVersion"), "annotations": notes},
        "spec": {"unschedulable": True, "taints": _taints_with_ours(node)},
    }


def cordon(node: Mapping[str, Any]) -> dict[str, Any]:
    """Restores the cordon of a node we hold (someone uncordoned it mid-repair)."""
    return {
        "metadata": {"resourceVersion": node.get("metadata", {}).get("resourceVersion")},
        "spec": {"unschedulable": True, "taints": _taints_with_ours(node)},
    }


def release(node: Mapping[str, Any]) -> dict[str, Any]:
    """Removes the taint and the lock; uncordons unless the node was cordoned before."""
    taints = [t for t in node.get("spec", {}).get("taints") or [] if t.get("key") != TAINT["key"]]
    return {
        "metadata": {
            "resourceVersion": node.get("metadata", {}).get("resourceVersion"),
            "annotations": {
                constants.ANNOTATION_REPAIR: None,
                constants.ANNOTATION_WAS_UNSCHEDULABLE: None,
            },
        },
        "spec": {"unschedulable": was_unschedulable(node) or None, "taints": taints or None},
    }


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
