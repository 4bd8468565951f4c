"""The instance contract: which pods on a node are instances, of which kind, and
how many tasks each has in flight. Pure functions over pod dicts (as kopf and the
API give them), so the rules live in one place and are unit-tested without a cluster."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pitstop import constants, selectors
from pitstop.instances.sources import deadlines, matching, profiles, trust

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


def key(pod: Mapping[str, Any]) -> str:
    """namespace/name, the pod's identity across indexes, status and Events."""
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def is_instance(pod: Mapping[str, Any]) -> bool:
    """A pod `kubectl drain` would evict: not a DaemonSet pod, not a mirror pod,
    not finished."""
    meta = pod.get("metadata", {})
    if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
        return False
    if any(ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or []):
        return False
    return pod.get("status", {}).get("phase") not in FINISHED_PHASES


def has_serving_gate(pod: Mapping[str, Any]) -> bool:
    gates = pod.get("spec", {}).get("readinessGates") or []
    return any(g.get("conditionType") == constants.CONDITION_SERVING for g in gates)


def serving_status(pod: Mapping[str, Any]) -> str | None:
    """Status of the pitstop.dev/serving pod condition, None when absent."""
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == constants.CONDITION_SERVING:
            return str(cond.get("status"))
    return None


def kind(pod: Mapping[str, Any], endpoint_pods: Set[str]) -> str:
    """`sync` or `async`: the platform's label wins; otherwise a pod that declares the
    serving gate, or backs an EndpointSlice endpoint (ready or not), serves requests
    (the rule of `matching.kind`, without a profile)."""
    label = (pod.get("metadata", {}).get("labels") or {}).get(constants.LABEL_INSTANCE_TYPE)
    return matching.kind(None, label, key(pod) in endpoint_pods, has_serving_gate(pod))


@dataclass(frozen=True)
class TaskCount:
    """The runtime's in-flight count; `invalid` holds the raw annotation when it is
    not a non-negative integer, `error` why a polled source gave no count, `pending`
    why no polled count is trusted yet. Any of the three makes the pod busy."""

    count: int
    invalid: str | None = None
    error: str | None = None
    pending: str | None = None
    source: str = profiles.ANNOTATION
    """annotation, prometheus, http or knative."""

    @property
    def busy(self) -> bool:
        return (
            self.count > 0
            or self.invalid is not None
            or self.error is not None
            or self.pending is not None
        )


def inflight_tasks(pod: Mapping[str, Any]) -> TaskCount:
    """Absent annotation: the pod keeps no task count, i.e. 0."""
    raw = (pod.get("metadata", {}).get("annotations") or {}).get(constants.ANNOTATION_INFLIGHT)
    if raw is None:
        return TaskCount(0)
    text = str(raw).strip()
    if text.isdigit() and text.isascii():
        return TaskCount(int(text))
    return TaskCount(0, invalid=str(raw))


def gate_closed_since(pod: Mapping[str, Any]) -> datetime | None:
    """When its pitstop.dev/serving condition turned False (None: not False, or no
    readable lastTransitionTime)."""
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == constants.CONDITION_SERVING and c.get("status") == "False":
            return _time(c.get("lastTransitionTime"))
    return None


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return pod.get("metadata", {}).get("deletionTimestamp") is not None


def unready_since(pod: Mapping[str, Any]) -> datetime | None:
    """When its Ready condition last turned False (None: Ready, or not known)."""
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") != "True":
            return _time(c.get("lastTransitionTime"))
    return None


def is_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True: the API server counts only such a pod as a
    disruption of its budget when it is evicted."""
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


@dataclass(frozen=True)
class Instance:
    """One instance on a node, as the repair state machine sees it."""

    key: str
    """namespace/name"""
    kind: str
    """sync or async"""
    gated: bool
    """Declares the pitstop.dev/serving readiness gate."""
    serving: str | None
    """Status of the pitstop.dev/serving condition."""
    ready_endpoint: bool
    """A ready endpoint of some EndpointSlice."""
    tasks: TaskCount
    draining: bool
    """Carries the pitstop.dev/draining annotation."""
    terminating: bool
    profile: str | None = None
    """The InstanceProfile that describes it (None: the annotation contract)."""
    other_profiles: tuple[str, ...] = ()
    """Other profiles that match it too (and lost on precedence)."""
    signal_unacknowledged: str | None = None
    """Its httpPost drain signal was reported as not acknowledged: the last error."""
    pod_ready: bool = True
    """Its Ready condition is True (its eviction takes a disruption of its budgets)."""
    pdbs: tuple[str, ...] = ()
    """namespace/name of the PodDisruptionBudgets that cover it."""
    draining_since: datetime | None = None
    """When pitstop marked it draining (the annotation's time; None: not marked, or a
    value that is no time)."""
    unready_since: datetime | None = None
    """When it stopped being Ready (None: Ready, or not known)."""
    gate_closed_since: datetime | None = None
    """When its serving gate was closed (the condition's lastTransitionTime; None: not
    closed, or no time)."""
    deadline: deadlines.Deadline | None = None
    """The longest a task may run, as its runtime declares it (its profile's
    taskDeadline; None: it declares none)."""

    @property
    def sync(self) -> bool:
        return self.kind == constants.INSTANCE_SYNC

    @property
    def deregistered(self) -> bool:
        """Out of routing: serving False and confirmed by the EndpointSlices."""
        return self.serving == "False" and not self.ready_endpoint


def observe(
    pod: Mapping[str, Any],
    endpoint_ready: Iterable[bool] | None,
    match: matching.Match | None = None,
    polled: trust.Polled | None = None,
    signal_unacknowledged: str | None = None,
    pdbs: Iterable[Mapping[str, Any]] = (),
) -> Instance:
    """The instance view of a pod; `endpoint_ready` holds one flag per EndpointSlice
    entry that targets it (None: it backs no endpoint). `match` is the profile that
    describes it, `polled` what its polled task source says (None: the annotation),
    `pdbs` the PodDisruptionBudgets of its namespace."""
    k = key(pod)
    flags = list(endpoint_ready) if endpoint_ready is not None else None
    profile = match.profile if match is not None else None
    label = (pod.get("metadata", {}).get("labels") or {}).get(constants.LABEL_INSTANCE_TYPE)
    if polled is not None:
        tasks = TaskCount(
            polled.count,
            error=polled.error.message if polled.error is not None else None,
            pending=polled.pending,
            source=profiles.task_source(profile),
        )
    elif match is not None and match.uncertain and profile is None:
        # A profile might describe it, once its namespace's labels are known.
        tasks = TaskCount(0, pending="the labels of its namespace are not known yet")
    else:
        tasks = inflight_tasks(pod)
    return Instance(
        key=k,
        kind=matching.kind(profile, label, flags is not None, has_serving_gate(pod)),
        gated=has_serving_gate(pod),
        serving=serving_status(pod),
        ready_endpoint=any(flags or ()),
        tasks=tasks,
        draining=constants.ANNOTATION_DRAINING
        in (pod.get("metadata", {}).get("annotations") or {}),
        terminating=is_terminating(pod),
        profile=profile.name if profile is not None else None,
        other_profiles=match.others if match is not None else (),
        signal_unacknowledged=signal_unacknowledged,
        pod_ready=is_ready(pod),
        pdbs=tuple(pdb_key(b) for b in pdbs if covers(b, pod)),
        draining_since=_time(
            (pod.get("metadata", {}).get("annotations") or {}).get(constants.ANNOTATION_DRAINING)
        ),
        unready_since=unready_since(pod),
        gate_closed_since=gate_closed_since(pod),
        deadline=deadlines.task_deadline(pod, profile),
    )


def _time(value: Any) -> datetime | None:
    try:
        at = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return at if at is None or at.tzinfo is not None else at.replace(tzinfo=UTC)


# --- PodDisruptionBudgets ---


def pdb_key(pdb: Mapping[str, Any]) -> str:
    return f"{pdb['metadata']['namespace']}/{pdb['metadata']['name']}"


# The budget selects the pod; in `selectors` so the indexes can wake on it too.
covers = selectors.pdb_covers


def allowed(pdb: Mapping[str, Any]) -> int:
    """Disruptions the budget allows now. 0 while its status lags its spec: the API
    server refuses every eviction under such a budget too."""
    if not _current(pdb):
        return 0
    return max(0, int((pdb.get("status") or {}).get("disruptionsAllowed") or 0))


def _current(pdb: Mapping[str, Any]) -> bool:
    """Its status was computed for its current spec."""
    meta, status = pdb.get("metadata", {}), pdb.get("status") or {}
    observed, generation = status.get("observedGeneration"), meta.get("generation")
    return observed is not None and (generation is None or observed >= generation)


@dataclass(frozen=True)
class Budget:
    """A PodDisruptionBudget as the drain reads it."""

    key: str
    """namespace/name"""
    allowed: int
    """Disruptions it allows now (0 while its status lags its spec)."""
    disrupted: frozenset[str] = frozenset()
    """namespace/name of the pods whose accepted eviction it already counts
    (status.disruptedPods: evicted, not yet seen deleted by the disruption controller)."""
    spare: int = 0
    """Healthy pods above the desired (currentHealthy - desiredHealthy; 0 while its
    status lags its spec): how many of its Ready pods may stop being Ready."""
    healthy: int = 0
    """currentHealthy (0 while its status lags its spec)."""
    expected: int = 0
    """expectedPods (1 while its status lags its spec: not known to be all healthy)."""

    @property
    def stuck(self) -> bool:
        """It allows no disruption although every pod it covers is healthy and none is
        being disrupted: no pod of its own is on its way back, so its answer changes only
        when someone changes the budget or its workload (minAvailable: 100%, say)."""
        return self.allowed <= 0 and not self.disrupted and self.healthy >= self.expected


def budget(pdb: Mapping[str, Any]) -> Budget:
    ns = pdb["metadata"]["namespace"]
    status = pdb.get("status") or {}
    disrupted = status.get("disruptedPods") or ()
    healthy = int(status.get("currentHealthy") or 0)
    spare = healthy - int(status.get("desiredHealthy") or 0)
    current = _current(pdb)
    return Budget(
        pdb_key(pdb),
        allowed(pdb),
        frozenset(f"{ns}/{name}" for name in disrupted),
        spare=max(0, spare) if current else 0,
        healthy=healthy if current else 0,
        expected=int(status.get("expectedPods") or 0) if current else 1,
    )


def service_room(
    budgets: Mapping[str, Budget], instances: Iterable[Instance], out: Set[str]
) -> dict[str, int]:
    """How many more of each budget's Ready pods may be taken out of service (drain
    signal, deregistration) now. Taking a pod out makes it not Ready, and a budget
    counts that as a disruption: more than it has spare, and it allows no eviction at
    all any more (an unhealthy pod is evicted only while the budget holds), so the
    drain would wait for ever. Its spare healthy pods, less every pod of ours `out` of
    service and still there, whether or not the budget has seen it go: its status
    lags, and counting one twice only waits, never breaks the budget."""
    room = {k: b.spare for k, b in budgets.items()}
    for i in instances:
        if i.key in out:
            for p in i.pdbs:
                if p in room:
                    room[p] -= 1
    return room


UNREADY_FOR_GOOD = timedelta(seconds=120)
"""A pod not Ready for this long is taken as out of service already (crash-looping,
say): its budgets are spent on it whatever we do. One not Ready for less may be
failing its probes under load (seen for over 10 s on a busy machine), Ready again
soon unless we take it out."""


def take_service_room(room: dict[str, int], i: Instance, now: datetime) -> tuple[str, ...]:
    """Takes one from each budget of `i` if all have room; returns those that have
    none. A pod not Ready for good takes nothing: it costs its budgets nothing more."""
    spent = i.unready_since is not None and now - i.unready_since >= UNREADY_FOR_GOOD
    return _take(room, [] if spent else [p for p in i.pdbs if p in room])


def eviction_room(
    budgets: Mapping[str, Budget], instances: Iterable[Instance], uncounted: Set[str]
) -> dict[str, int]:
    """How many more evictions each budget takes now: what it allows, less the
    evictions the API server accepted that the budget as last seen does not count yet
    (`uncounted`, of pods still there; a watch event lags the eviction's answer)."""
    room = {k: b.allowed for k, b in budgets.items()}
    for i in instances:
        if i.key not in uncounted:
            continue
        for p in i.pdbs:
            if p in room and i.key not in budgets[p].disrupted:
                room[p] -= 1
    return {k: max(0, n) for k, n in room.items()}


def take_room(room: dict[str, int], i: Instance) -> tuple[str, ...]:
    """Takes one disruption from each budget of `i` if all have room (a pod under
    several budgets is held by the tightest); returns the budgets that have none.
    A pod that is not Ready takes nothing (the API server does not count it), nor
    does a budget not in `room` (unknown yet: the API server decides)."""
    return _take(room, [p for p in i.pdbs if p in room] if i.pod_ready else [])


def _take(room: dict[str, int], limits: list[str]) -> tuple[str, ...]:
    """One from each of `limits` if all have room; else nothing, and those full."""
    full = tuple(p for p in limits if room[p] <= 0)
    if not full:
        for p in limits:
            room[p] -= 1
    return full


def blocking_pdbs(
    pdbs: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> list[str]:
    """namespace/name of the PodDisruptionBudgets that cover some of `pods` and allow
    no disruption now: evicting those pods would be refused (429)."""
    pods = list(pods)
    return sorted(
        pdb_key(pdb) for pdb in pdbs if allowed(pdb) <= 0 and any(covers(pdb, p) for p in pods)
    )
