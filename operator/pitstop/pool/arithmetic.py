"""Pool logic of RepairPolicies, pure: which nodes belong to a pool, which are
unhealthy (and when the next one will be), the pool's limits, and whether a
NodeRepair may start now (admission). One place for the arithmetic of DESIGN.md's
"Pool arithmetic"; pitstop.pool.daemon and pitstop.repair.daemon call it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pitstop import constants, selectors
from pitstop.models import FINAL_PHASES, Phase, RepairPolicySpec
from pitstop.quantities import parse_duration, parse_int_or_percent

C = constants


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    conditions: Mapping[str, tuple[str, datetime | None]]
    """type → (status, lastTransitionTime)"""
    unschedulable: bool
    lock: str | None

    @property
    def ready(self) -> bool:
        return self.conditions.get("Ready", ("Unknown", None))[0] == "True"

    @property
    def excluded(self) -> bool:
        """Labelled pitstop.dev/exclude-from-repair=true: no automatic repair."""
        return self.labels.get(C.LABEL_EXCLUDE_FROM_REPAIR) == "true"

    @property
    def available(self) -> bool:
        """Ready and schedulable: it can take new instances."""
        return self.ready and not self.unschedulable


@dataclass(frozen=True)
class RepairView:
    name: str
    node: str
    phase: str | None
    created: str
    deleting: bool = False
    dry_run: bool = False

    @property
    def active(self) -> bool:
        """Past Pending and not finished: it holds (or is taking) its node. One being
        deleted stays active while its finalizer runs (it writes Aborted, then gives
        the node back): its slot is free only once it is gone. A Succeeded one has
        given its node back already."""
        if self.phase in (None, Phase.PENDING):
            return False
        if self.deleting:
            return self.phase != Phase.SUCCEEDED
        return self.phase not in FINAL_PHASES

    @property
    def ended(self) -> bool:
        """Finished and not being deleted: a lock it left on its node (a Failed repair
        keeps its node cordoned) holds no slot, and a new repair takes it over."""
        return self.phase in FINAL_PHASES and not self.deleting

    @property
    def waiting(self) -> bool:
        return self.phase in (None, Phase.PENDING) and not self.deleting and not self.dry_run


@dataclass(frozen=True)
class Fault:
    """An unhealthy condition that has held for its duration: the cause of a repair."""

    node: str
    cause: str
    """e.g. KernelDeadlock=True for 0s"""
    key: str
    """Identifies this episode of the fault: same fault, same key (and repair name)."""


def node_view(node: Mapping[str, Any]) -> NodeView:
    meta, spec = node.get("metadata", {}), node.get("spec", {})
    conditions = {
        str(c.get("type")): (str(c.get("status")), _time(c.get("lastTransitionTime")))
        for c in (node.get("status", {}).get("conditions") or [])
    }
    return NodeView(
        name=str(meta.get("name")),
        labels=meta.get("labels") or {},
        conditions=conditions,
        unschedulable=bool(spec.get("unschedulable")),
        lock=(meta.get("annotations") or {}).get(C.ANNOTATION_REPAIR) or None,
    )


def in_pool(spec: RepairPolicySpec, node: NodeView) -> bool:
    return selectors.matches(spec.node_selector.wire(), node.labels)


def pool_of(spec: RepairPolicySpec, nodes: Iterable[NodeView]) -> list[NodeView]:
    """The nodes of the policy's pool (the selector rendered once, not once per node)."""
    selector = spec.node_selector.wire()
    return [n for n in nodes if selectors.matches(selector, n.labels)]


def fault_of(
    spec: RepairPolicySpec, node: NodeView, now: datetime
) -> tuple[Fault | None, datetime | None]:
    """The node's fault if one of the unhealthy conditions has held for its duration;
    otherwise when the earliest one that holds will have (None: none holds)."""
    due_next: datetime | None = None
    for uc in spec.unhealthy_conditions:
        status, since = node.conditions.get(uc.type, (None, None))
        if status != uc.status.value:
            continue
        duration = timedelta(seconds=parse_duration(uc.duration))
        cause = f"{uc.type}={uc.status.value} for {uc.duration}"
        if since is None:
            # No lastTransitionTime (the API allows it): how long it has held is unknown,
            # so only a 0s rule acts, and the episode's key must not move with `now`
            # (a key that did would make a new repair name on every pass).
            if not duration:
                return Fault(node.name, cause, f"{uc.type}/{uc.status.value}/unknown"), None
            continue
        due = since + duration
        if now >= due:
            return Fault(node.name, cause, f"{uc.type}/{uc.status.value}/{since.isoformat()}"), None
        due_next = due if due_next is None else min(due_next, due)
    return None, due_next


def max_unhealthy(spec: RepairPolicySpec, total: int) -> int:
    return parse_int_or_percent(spec.max_unhealthy, total, round_up=False)


def min_available(spec: RepairPolicySpec, total: int) -> int:
    return parse_int_or_percent(spec.min_available, total, round_up=True)


def admit(
    candidate: RepairView,
    spec: RepairPolicySpec,
    pool: Sequence[NodeView],
    repairs: Iterable[RepairView],
) -> str | None:
    """None if `candidate` may start now in this pool, else why not (a message whose
    first word is the CamelCase reason). Repairs start in creation order: an older
    waiting repair that the limits would let start goes first."""
    names = {n.name for n in pool}
    mine = [r for r in repairs if r.node in names and r.name != candidate.name]
    refused = _limits(candidate, spec, pool, mine)
    if refused:
        return refused
    held = {n.lock for n in pool if n.lock}
    for r in sorted(mine, key=lambda r: (r.created, r.name)):
        if (r.created, r.name) >= (candidate.created, candidate.name):
            break
        if r.waiting and r.name not in held and not _limits(r, spec, pool, mine):
            return f"WaitingForCapacity: {r.name} (older) starts first"
    return None


def _limits(
    candidate: RepairView,
    spec: RepairPolicySpec,
    pool: Sequence[NodeView],
    others: list[RepairView],
) -> str | None:
    held = holders(candidate, pool, others)
    if candidate.node in held.values():
        return f"NodeBusy: {candidate.node} is being repaired"
    if len(held) >= spec.max_concurrent_repairs:
        return (
            f"MaxConcurrentRepairs: {len(held)} active repairs in the pool"
            f" (max {spec.max_concurrent_repairs})"
        )
    total = len(pool)
    floor = min_available(spec, total)
    # A node an active repair holds is out, even before its cordon shows in the index.
    taken = set(held.values())
    available = {n.name for n in pool if n.available and n.name not in taken}
    target = next((n for n in pool if n.name == candidate.node), None)
    # Repairing a node that is not available takes nothing away from the pool; but
    # a cordon under a lock is pitstop's own, and the view may not show its release
    # yet (or it comes with the next repair's take-over): only a node not Ready, or
    # cordoned by someone else, counts as out already.
    if (
        target is not None
        and target.ready
        and (target.lock not in (None, candidate.name) or not target.unschedulable)
        and len(available - {target.name}) < floor
    ):
        return (
            f"MinAvailable: {len(available)} of {total} nodes available;"
            f" the pool keeps {floor} (minAvailable {spec.min_available})"
        )
    return None


def holders(
    candidate: RepairView, pool: Sequence[NodeView], others: Iterable[RepairView]
) -> dict[str, str]:
    """The repairs that hold (or are taking) a node of the pool, besides `candidate`:
    repair name → node. The active ones, and whoever a node's lock names (the lock
    is what holds a node: a repair whose status or deletion the view shows ahead of
    its node, or one gone without giving it back), unless that repair ended (its
    lock holds no slot). A lock on the candidate's own node whose holder is gone is
    the candidate's to take over, not a second slot."""
    others = [r for r in others if r.name != candidate.name]
    held = {r.name: r.node for r in others if r.active}
    known = {r.name: r for r in others}
    for n in pool:
        if not n.lock or n.lock == candidate.name or n.lock in held:
            continue
        r = known.get(n.lock)
        if r is not None and r.ended:
            continue
        if r is None and n.name == candidate.node:
            continue
        held[n.lock] = n.name
    return held


def repair_name(node: str, fault_key: str) -> str:
    """Deterministic, so the same fault never yields two repairs (the API refuses a
    second create with the same name), also across operator restarts."""
    digest = hashlib.sha256(f"{node}/{fault_key}".encode()).hexdigest()[:10]
    kind = re.sub(r"[^a-z0-9-]", "-", fault_key.split("/", 1)[0].lower()).strip("-") or "fault"
    # A cut right after a dot of a long node name would leave ".-", which no object
    # name may hold; only names the API server refused change by the rstrip.
    base = f"{node}-{kind}"[: 253 - 11].rstrip(".")
    return f"{base}-{digest}"


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
