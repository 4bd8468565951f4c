"""Room before the drain, pure: can the other schedulable nodes hold the instances a
repair would evict? A scheduler-like fit — requests of cpu, memory and pod slots
against allocatable less what the pods already there request, taints against
tolerations, nodeSelector and required node affinity — placed first-fit-decreasing
(largest instance first, on the first node in name order that takes it).

Not modelled (docs/policies.md "Room before the drain"): inter-pod (anti)affinity,
topology spread, preferred affinity, resources other than cpu, memory and pods,
pods not yet bound to a node, and what the scheduler's own scoring would choose.
First-fit-decreasing may also miss a packing that exists; it never finds one that
does not."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pitstop import resources
from pitstop.instances import contract

BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
"""Taint effects the scheduler refuses a pod for (PreferNoSchedule only scores)."""


@dataclass(frozen=True)
class Need:
    """One instance to place: what it requests and where it may go."""

    key: str
    requests: Mapping[str, int]
    """cpu (millicores) and memory (bytes); a pod slot is added by the fit."""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    node_terms: Sequence[Mapping[str, Any]] | None = None
    """requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms (ORed); None: any."""
    tolerations: Sequence[Mapping[str, Any]] = ()

    @property
    def weight(self) -> tuple[int, int]:
        return (self.requests.get("cpu", 0), self.requests.get("memory", 0))


@dataclass
class Room:
    """A node that may take instances: what is left of its allocatable."""

    name: str
    labels: Mapping[str, str]
    taints: Sequence[Mapping[str, Any]]
    free: dict[str, int]
    """cpu, memory, pods left; may be negative (over-committed by static pods, say)."""

    def takes(self, need: Need) -> bool:
        wanted = {**need.requests, "pods": 1}
        return all(self.free.get(k, 0) >= v for k, v in wanted.items() if v)

    def take(self, need: Need) -> None:
        for k, v in {**need.requests, "pods": 1}.items():
            self.free[k] = self.free.get(k, 0) - v


def need_of(pod: Mapping[str, Any]) -> Need:
    """An instance as the fit sees it, from a pod (whole or as the pod index slims it)."""
    spec = pod.get("spec") or {}
    requests = spec.get("requests")
    if requests is None:  # a whole pod, not the index's: add up its containers
        requests = resources.pod_requests(spec)
    return Need(
        key=contract.key(pod),
        requests=requests,
        node_selector=spec.get("nodeSelector") or {},
        node_terms=required_terms(spec.get("affinity")),
        tolerations=spec.get("tolerations") or (),
    )


def required_terms(affinity: Mapping[str, Any] | None) -> list[Mapping[str, Any]] | None:
    """The nodeSelectorTerms a pod requires of its node, None when it requires none."""
    required = ((affinity or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return None
    return list(required.get("nodeSelectorTerms") or [])


def room_of(node: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> Room:
    """A node's room: its allocatable (absent counts as none, as the scheduler counts
    it) less the requests of the pods bound to it that have not finished."""
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    free = resources.amounts((node.get("status") or {}).get("allocatable"))
    for resource in resources.RESOURCES:
        free.setdefault(resource, 0)
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in contract.FINISHED_PHASES:
            continue
        used = need_of(pod)
        for k, v in {**used.requests, "pods": 1}.items():
            free[k] = free.get(k, 0) - v
    return Room(
        name=str(meta.get("name")),
        labels=meta.get("labels") or {},
        taints=spec.get("taints") or (),
        free=free,
    )


def tolerated(taint: Mapping[str, Any], tolerations: Iterable[Mapping[str, Any]]) -> bool:
    """The taint is tolerated by one of the tolerations (the core API's rule)."""
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        operator = t.get("operator") or "Equal"
        if not t.get("key"):
            if operator == "Exists":
                return True  # an empty key with Exists tolerates everything
            continue
        if t.get("key") != taint.get("key"):
            continue
        if operator == "Exists" or (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _term_matches(term: Mapping[str, Any], room: Room) -> bool:
    """One nodeSelectorTerm: all its expressions and fields hold (an empty term
    matches no node, as in the scheduler)."""
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    for req in expressions:
        key = req.get("key", "")
        if not _requirement(req, room.labels.get(key), key in room.labels):
            return False
    for req in fields:
        value = room.name if req.get("key") == "metadata.name" else None
        if not _requirement(req, value, value is not None):
            return False
    return True


def _requirement(req: Mapping[str, Any], value: str | None, present: bool) -> bool:
    op, values = req.get("operator"), req.get("values") or []
    if op == "In":
        return present and value in values
    if op == "NotIn":
        return not present or value not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and len(values) == 1:
        try:
            have, bound = int(str(value)), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def may_go(need: Need, room: Room) -> bool:
    """Whether the scheduler's filters (not resources) allow the instance on the node."""
    if any(room.labels.get(k) != v for k, v in need.node_selector.items()):
        return False
    if need.node_terms is not None and not any(_term_matches(t, room) for t in need.node_terms):
        return False
    return all(
        tolerated(t, need.tolerations) for t in room.taints if t.get("effect") in BLOCKING_EFFECTS
    )


@dataclass(frozen=True)
class Fit:
    placed: dict[str, str]
    """instance key → node it would go to."""
    unplaced: list[Need]
    left: list[Room]
    """The rooms after the placed instances took theirs."""

    @property
    def missing(self) -> dict[str, int]:
        """What the instances left over request (pod slots included): the room the
        nodes lack, at least."""
        return resources.total([{**n.requests, "pods": 1} for n in self.unplaced])


def fit(needs: Iterable[Need], rooms: Iterable[Room]) -> Fit:
    """First-fit-decreasing: the largest instances (cpu, then memory) first, each on
    the first node (by name) whose filters allow it and whose room holds it. The
    rooms are copied: the caller's are left as they were."""
    nodes = sorted((Room(r.name, r.labels, r.taints, dict(r.free)) for r in rooms), key=_name)
    placed: dict[str, str] = {}
    unplaced: list[Need] = []
    for need in sorted(needs, key=lambda n: (-n.weight[0], -n.weight[1], n.key)):
        for room in nodes:
            if may_go(need, room) and room.takes(need):
                room.take(need)
                placed[need.key] = room.name
                break
        else:
            unplaced.append(need)
    return Fit(placed, unplaced, nodes)


def _name(room: Room) -> str:
    return room.name


def shortage(
    node: str, ours: Sequence[Need], rooms: Sequence[Room], others: Sequence[Need] = ()
) -> str | None:
    """None when the node's instances (`ours`) fit on `rooms` once `others` (the
    instances of nodes already under repair, which are on their way out) took
    theirs; else a message naming how much room is missing."""
    taken = fit(others, rooms)
    result = fit(ours, taken.left)
    if not result.unplaced:
        return None
    held = f" once {len(others)} instances of nodes under repair took theirs" if others else ""
    return (
        f"{len(result.unplaced)} of {len(ours)} instances of {node} fit on none of the"
        f" {len(rooms)} other schedulable nodes{held}: missing room for"
        f" {resources.describe(result.missing)}"
    )
