"""The external-remediation contract, pure: which node a checker's remediation
object is for, the NodeRepair it becomes, and the conditions NodeHealthCheck reads.

NodeHealthCheck names the object after the node (or, when a template allows several
of one kind, annotates it remediation.medik8s.io/node-name) and reads `Processing`,
`Succeeded` and `PermanentNodeDeletionExpected`; Cluster API's MachineHealthCheck
names it after the Machine, which it makes the object's owner, and reads nothing
back but deletes it once the Machine is healthy. Both delete it when the node is
healthy again; that deletion gives the node back (pitstop.remediation.daemon)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pitstop import constants as C
from pitstop.conditions import set_condition
from pitstop.models import (
    FINAL_PHASES,
    Condition,
    ConditionStatus,
    NodeRepairRemediationStatus,
    Phase,
)

MAX_NAME = 253
HASH = 10
"""Hex digits of the remediation's uid in its NodeRepair's name: names are unique
per object, so a remediation made again under the same name never meets the
NodeRepair of its predecessor (which may still be giving its node back)."""


@dataclass(frozen=True)
class Target:
    """Whom a remediation object is for: a node by name, or a Cluster API Machine
    (apiVersion, namespace, name) whose status.nodeRef names it."""

    node: str | None = None
    machine: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class RepairView:
    """What the remediation mirrors of its NodeRepair."""

    name: str
    phase: Phase | None
    message: str | None
    deleting: bool = False
    replacing: str | None = None
    """The Machine (namespace/name) a Replace step of its ladder deletes, once
    recorded: the node then goes for good."""


@dataclass(frozen=True)
class Outcome:
    """Where the remediation stands: the mirrored phase, one line, and its three
    conditions as (status, reason)."""

    phase: Phase | None
    message: str
    processing: tuple[ConditionStatus, str]
    succeeded: tuple[ConditionStatus, str]
    replacing: str | None = None
    """The Machine a Replace step deletes (PermanentNodeDeletionExpected=True)."""


def repair_name(namespace: str, name: str, uid: str) -> str:
    """The NodeRepair of a remediation object: `<namespace>-<name>-<uid hash>`,
    shortened to fit a name (cluster-scoped, so the namespace is part of it)."""
    digest = hashlib.sha256(uid.encode()).hexdigest()[:HASH]
    stem = f"{namespace}-{name}"[: MAX_NAME - HASH - 1].rstrip("-.")
    return f"{stem}-{digest}"


def target(body: Mapping[str, Any]) -> Target:
    """The node a checker's object names: the Machine that owns it (Cluster API),
    else NHC's node-name annotation, else the object's own name (NHC)."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        api_version = str(ref.get("apiVersion") or "")
        group, _, version = api_version.partition("/")
        if group == C.CAPI_GROUP and version and ref.get("kind") == "Machine" and ref.get("name"):
            return Target(machine=(api_version, str(meta.get("namespace") or ""), str(ref["name"])))
    annotated = (meta.get("annotations") or {}).get(C.ANNOTATION_NHC_NODE_NAME)
    return Target(node=str(annotated or meta.get("name") or "") or None)


def machine_node(machine: Mapping[str, Any] | None) -> str | None:
    """The node of a Cluster API Machine (status.nodeRef.name), if it has one."""
    if not machine:
        return None
    return ((machine.get("status") or {}).get("nodeRef") or {}).get("name") or None


def namespace_allowed(labels: Mapping[str, str] | None) -> bool:
    """The platform admin lets a namespace's remediation objects repair nodes by
    labelling the namespace pitstop.dev/remediation-allowed=true."""
    return (labels or {}).get(C.LABEL_REMEDIATION_ALLOWED) == "true"


def checker(body: Mapping[str, Any]) -> str:
    """Who asked, for the NodeRepair's reason: the owning checker or Machine."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    if refs:
        return " ".join(f"{r.get('kind')} {r.get('name')}" for r in refs)
    return "no owner"


def node_repair(body: Mapping[str, Any], node: str) -> dict[str, Any]:
    """The NodeRepair a remediation object makes: its spec and the node, linked back
    by a label (the uid, what pitstop indexes) and an annotation (`ns/name`, for
    people). No owner reference: a cluster-scoped object cannot be owned by a
    namespaced one (the garbage collector treats the reference as unresolvable)."""
    meta = body.get("metadata") or {}
    ns, name, uid = str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid"))
    spec = dict(body.get("spec") or {})
    spec["reason"] = spec.get("reason") or f"Remediation {ns}/{name} ({checker(body)})"
    return {
        "apiVersion": C.API_VERSION,
        "kind": "NodeRepair",
        "metadata": {
            "name": repair_name(ns, name, uid),
            "labels": {C.LABEL_REMEDIATION_UID: uid},
            "annotations": {C.ANNOTATION_REMEDIATION: f"{ns}/{name}"},
        },
        "spec": {**spec, "nodeName": node},
    }


def repair_view(body: Mapping[str, Any]) -> RepairView:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    raw = status.get("phase")
    phase = Phase(raw) if isinstance(raw, str) and raw in set(Phase) else None
    return RepairView(
        name=str(meta.get("name")),
        phase=phase,
        message=status.get("message"),
        deleting=meta.get("deletionTimestamp") is not None,
        replacing=((status.get("repair") or {}).get("replace") or {}).get("machine"),
    )


T, F, U = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


def refused(reason: str, message: str) -> Outcome:
    """pitstop will not repair for this object: finished, not succeeded (so NHC
    moves on to its next remediator, where it has one)."""
    return Outcome(None, message, (F, reason), (F, reason))


def mirrored(view: RepairView) -> Outcome:
    """The NodeRepair's progress as NHC reads it: Processing while it runs (the
    phase as reason), Succeeded once it ends; a repair being deleted still runs
    until its finalizer has given the node back."""
    message = view.message or f"NodeRepair {view.name}"
    m = view.replacing
    if view.phase == Phase.SUCCEEDED:
        return Outcome(view.phase, message, (F, C.REASON_SUCCEEDED), (T, C.REASON_SUCCEEDED), m)
    if view.phase == Phase.FAILED:
        failed = (F, C.REASON_REPAIR_FAILED)
        return Outcome(view.phase, message, failed, failed, m)
    if view.phase == Phase.ABORTED:
        return Outcome(view.phase, message, (F, C.REASON_ABORTED), (F, C.REASON_ABORTED), m)
    step = (view.phase or Phase.PENDING).value
    return Outcome(view.phase, message, (T, step), (U, step), m)


def status(
    outcome: Outcome,
    old: NodeRepairRemediationStatus,
    now: datetime,
    generation: int | None,
    node: str | None,
    repair: str | None,
) -> NodeRepairRemediationStatus:
    """The remediation's new status: the three conditions (lastTransitionTime kept
    while a status holds), the node, the NodeRepair and the mirrored phase."""
    conditions: list[Condition] = list(old.conditions)
    for type_, (value, reason) in (
        (C.COND_PROCESSING, outcome.processing),
        (C.COND_SUCCEEDED, outcome.succeeded),
        (C.COND_PERMANENT_NODE_DELETION, _deletion(outcome)),
    ):
        message = outcome.message
        if type_ == C.COND_PERMANENT_NODE_DELETION:
            message = (
                "pitstop repairs the node in place; it never deletes it"
                if outcome.replacing is None
                else f"a Replace step deletes Machine {outcome.replacing}: the node goes"
            )
        conditions = set_condition(conditions, type_, value, reason, message, now, generation)
    return NodeRepairRemediationStatus(
        conditions=conditions,
        node_name=node or old.node_name,
        node_repair=repair or old.node_repair,
        phase=outcome.phase,
        message=outcome.message,
        start_time=old.start_time or (now if repair else None),
        observed_generation=generation,
    )


def _deletion(outcome: Outcome) -> tuple[ConditionStatus, str]:
    """PermanentNodeDeletionExpected: True once a Replace step of the repair's ladder
    has recorded the Machine it deletes (NHC then expects the node to go, not to
    come back healthy); otherwise the node is repaired in place."""
    if outcome.replacing is None:
        return (F, C.REASON_NODE_KEPT)
    return (T, C.REASON_NODE_REPLACED)


def finished(view: RepairView | None) -> bool:
    return view is not None and view.phase in FINAL_PHASES
