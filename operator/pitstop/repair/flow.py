"""The vocabulary of the repair state machine, shared by its two halves
(pitstop.repair.drain: cordon to RepairAllowed; pitstop.repair.recovery: repair, verify,
return): what is observed, what is decided, and the small steps both take.
Pure: no API calls, no clocks (the observation carries `now`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pitstop import conditions, constants
from pitstop.cluster import nodes
from pitstop.instances.contract import Budget, Instance
from pitstop.models import (
    AUTO,
    DEFAULT_TASK_TIMEOUT,
    NodeRepairSpec,
    NodeRepairStatus,
    OnFailure,
    Phase,
    RemediationRef,
    TaskTimeoutSource,
    TaskTimeoutStatus,
)

C = constants


@dataclass(frozen=True)
class JobState:
    name: str
    state: str
    """Running | Complete | Failed | Missing"""
    message: str = ""


@dataclass(frozen=True)
class CanaryState:
    """The canary pod (verify.canary) of the current attempt, as the driver read it."""

    name: str
    state: str
    """Running | Succeeded | Failed | Missing"""
    message: str = ""


@dataclass(frozen=True)
class WebhookAnswer:
    attempt: int
    state: str
    """Succeeded | Failed | Running | Error"""
    message: str = ""
    at: datetime | None = None
    """When it was received (a Running answer is polled again after a pause)."""
    step: int = 1
    """The ladder step (1-based) whose attempt it answers."""


@dataclass(frozen=True)
class StepState:
    """What the driver found of the running attempt of a Replace or External step."""

    step: int
    """The ladder step (1-based) and attempt it is about."""
    attempt: int
    state: str
    """Running | Succeeded | Failed | Skipped (the step cannot run here: not retried)"""
    message: str = ""
    reason: str = ""
    """Why it failed or was skipped, CamelCase (a refusal's reason)."""


@dataclass(frozen=True)
class Blocked:
    """An eviction the API refused (PDB), and when to try again."""

    retry_at: datetime
    pdbs: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class Observation:
    now: datetime
    name: str
    generation: int | None
    spec: NodeRepairSpec
    status: NodeRepairStatus
    node: Mapping[str, Any] | None
    holder_active: bool
    """The node's lock is held by another NodeRepair that still exists and is active."""
    instances: list[Instance]
    listed: int | None = None
    """When the indexes show no instance on the node: how many the API server lists
    there now (a consistent read; None: not read, or the read failed). A pod bound
    just before the cordon may not have reached the watch yet (Observe.listed)."""
    blocked: Mapping[str, Blocked] = field(default_factory=dict)
    """Evictions refused recently (kept by the driver between passes)."""
    budgets: Mapping[str, Budget] = field(default_factory=dict)
    """The PodDisruptionBudgets of the instances' namespaces, by namespace/name."""
    evicted: frozenset[str] = frozenset()
    """Instances whose eviction the API server accepted (this process sent it)."""
    uncounted: frozenset[str] = frozenset()
    """Of `evicted`, those no budget has been seen to count yet (kept by the driver)."""
    taken_out: frozenset[str] = frozenset()
    """Instances this process sent the drain signal or closed the gate of (the
    indexes lag behind those writes)."""
    blocking_pdbs: tuple[str, ...] = ()
    """For dry runs: PDBs of the node's instances that allow no disruption now."""
    waiting_for: str | None = None
    """Why the pool does not let this repair start yet (admission), if it does not."""
    repaired_mark: str | None = None
    """The NodeRepair's pitstop.dev/repaired annotation (Manual strategy)."""
    job: JobState | None = None
    """The current attempt's Job, as last read (Job strategy)."""
    webhook: WebhookAnswer | None = None
    """The webhook's last answer (Webhook strategy)."""
    remedy: StepState | None = None
    """The running Replace or External attempt, as the driver found it."""
    uid: str = ""
    """The NodeRepair's uid (names its canary pods: a repair made again under the same
    name never finds the old one's)."""
    canary: CanaryState | None = None
    """The current attempt's canary pod, as last read (verify.canary)."""


@dataclass(frozen=True)
class Event:
    type: str
    """Normal or Warning"""
    reason: str
    message: str
    on_node: bool = False
    """Also posted on the Node: only what a reader of the node's story needs (taken,
    ready for repair, repair started, returned, failed); the rest is on the repair."""
    once: bool = False
    """Posted once per repair whatever its message: a wait whose detail changes every
    pass (status.message carries it) is one Event, not one per change."""


@dataclass
class Decision:
    status: NodeRepairStatus
    take_lock: bool = False
    recordon: bool = False
    mark_draining: list[str] = field(default_factory=list)
    deregister: list[str] = field(default_factory=list)
    evict: list[str] = field(default_factory=list)
    held: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Instances kept in service for now: their budgets have no spare healthy pod
    (instance → those budgets)."""
    release: bool = False
    """Give the node back: after verification, or after a failure with onFailure: Uncordon."""
    passed: list[Phase] = field(default_factory=list)
    """Phases entered in this pass, in order (for the phase-duration metric)."""
    create_job: str | None = None
    delete_job: str | None = None
    call_webhook: tuple[int, bool] | None = None
    """(attempt, poll): call the repair webhook; poll=True asks about a call already made."""
    delete_external: RemediationRef | None = None
    """An External step's CR whose attempt ended: delete it."""
    create_canary: str | None = None
    """Create the canary pod of this name (recorded in status.verify.canary first)."""
    delete_canary: str | None = None
    """The canary pod whose run ended (passed, failed, or its attempt did): delete it."""
    events: list[Event] = field(default_factory=list)
    """Posted once per (reason, message) by the driver."""
    wake_at: datetime | None = None
    """When the answer can change without any event (a deadline, a retry)."""

    def wake_by(self, when: datetime) -> None:
        self.wake_at = when if self.wake_at is None else min(self.wake_at, when)


def fail(d: Decision, obs: Observation, reason: str, message: str) -> Decision:
    """Failed with a reason; the node stays cordoned with this repair saying why,
    unless `onFailure: Uncordon` (and only if we hold it)."""
    holder = nodes.lock_holder(obs.node) if obs.node is not None else None
    d.release = holder == obs.name and obs.spec.on_failure == OnFailure.UNCORDON
    d.status.message = f"{reason}: {message}"
    d.events.append(Event("Warning", reason, message, on_node=obs.node is not None))
    enter(d, obs, Phase.FAILED)
    d.status.completion_time = obs.now
    return d


def enter(d: Decision, obs: Observation, phase: Phase) -> None:
    d.passed.append(phase)
    d.status.phase = phase
    d.status.phase_start_time = obs.now
    d.status.observed_generation = obs.generation


def phase_start(d: Decision, obs: Observation) -> datetime:
    """The base of the phase's timeout; recorded now if a status lacks it, so the
    deadline does not move with every pass."""
    if d.status.phase_start_time is None:
        d.status.phase_start_time = obs.now
    return d.status.phase_start_time


AUTO_MARGIN_SECONDS = 10
"""Added to the deadline the instances declare, for `taskTimeoutSeconds: Auto`: a
task the runtime ends at its deadline is seen ended one poll later, and one that
started just before the drain signal ends just after its deadline counted from it."""
AUTO_CAP_SECONDS = DEFAULT_TASK_TIMEOUT
"""Auto never waits longer than a repair without it would: a runtime that lets tasks
run for hours would hold the node for hours. Longer waits are asked for by number."""


def task_timeout(spec: NodeRepairSpec, status: NodeRepairStatus) -> int:
    """The task timeout the drain uses: the spec's seconds, or what Auto resolved to
    (status.taskTimeout; the default until the first pass that holds the node)."""
    given = spec.drain.task_timeout_seconds
    if isinstance(given, int):
        return given
    return status.task_timeout.seconds if status.task_timeout is not None else DEFAULT_TASK_TIMEOUT


def auto_task_timeout(
    instances: Sequence[Instance], before: TaskTimeoutStatus | None = None
) -> TaskTimeoutStatus:
    """What `taskTimeoutSeconds: Auto` means on a node with these instances: the
    longest task deadline any of them declares plus AUTO_MARGIN_SECONDS, at most
    AUTO_CAP_SECONDS (instances that declare none wait as long); the default when
    none declares one. Never less than `before` (what an earlier pass of the repair
    resolved): instances leaving, or a profile changed mid-drain, never shorten a
    wait under way; and the default is for a node where no instance declared one, not
    for one whose declaring instances have left."""
    fresh = _auto(instances)
    if before is not None and (
        before.seconds >= fresh.seconds or fresh.source == TaskTimeoutSource.DEFAULT
    ):
        return before
    return fresh


def _auto(instances: Sequence[Instance]) -> TaskTimeoutStatus:
    top: Instance | None = None
    for i in instances:
        if i.deadline is not None and (
            top is None or top.deadline is None or i.deadline.seconds > top.deadline.seconds
        ):
            top = i
    if top is None or top.deadline is None:
        return TaskTimeoutStatus(
            seconds=DEFAULT_TASK_TIMEOUT,
            source=TaskTimeoutSource.DEFAULT,
            message=f"Auto: {DEFAULT_TASK_TIMEOUT}s, the default: no instance on the node"
            " declares a task deadline (InstanceProfile taskDeadline)",
        )
    declared = max(1, math.ceil(top.deadline.seconds))
    where = f"{top.deadline.source} of InstanceProfile {top.profile}"
    wanted = declared + AUTO_MARGIN_SECONDS
    if wanted > AUTO_CAP_SECONDS:
        return TaskTimeoutStatus(
            seconds=AUTO_CAP_SECONDS,
            source=TaskTimeoutSource.CAPPED,
            runtime_seconds=declared,
            instance=top.key,
            message=f"Auto: {AUTO_CAP_SECONDS}s, the cap: {top.key} declares a {declared}s"
            f" task deadline ({where}); give taskTimeoutSeconds in seconds to wait longer",
        )
    return TaskTimeoutStatus(
        seconds=wanted,
        source=TaskTimeoutSource.RUNTIME,
        runtime_seconds=declared,
        instance=top.key,
        message=f"Auto: {wanted}s, the {declared}s task deadline {top.key} declares"
        f" ({where}) plus {AUTO_MARGIN_SECONDS}s",
    )


def resolve_task_timeout(d: Decision, obs: Observation) -> None:
    """Keeps status.taskTimeout: Auto's answer for the node's instances now, or
    nothing when the spec gives seconds."""
    if obs.spec.drain.task_timeout_seconds == AUTO:
        d.status.task_timeout = auto_task_timeout(obs.instances, d.status.task_timeout)
    else:
        d.status.task_timeout = None


STEP_DEADLINE = timedelta(minutes=5)
"""Cordoning and Uncordoning have no timeout of their own: each is one patch of the
node, so a repair still there after this long is stuck (for the past-deadline metric)."""


def phase_deadline(spec: NodeRepairSpec, status: NodeRepairStatus) -> datetime | None:
    """When the repair's current phase times out: the moment the driver fails it or
    moves it on, so a repair still in the phase after it is stuck (not waiting). None
    for phases without a deadline (Pending waits for room in its pool) and final ones."""
    start, phase = status.phase_start_time, status.phase
    if start is None or phase is None:
        return None
    if phase in (Phase.DEREGISTERING, Phase.WAITING_FOR_TASKS):
        return start + timedelta(seconds=task_timeout(spec, status))
    if phase == Phase.EVICTING:
        return start + timedelta(seconds=spec.drain.eviction_timeout_seconds)
    if phase == Phase.REPAIRING:
        rs = status.repair
        if rs is not None and rs.next_attempt_time is not None:
            return rs.next_attempt_time  # between attempts: the next one is due then
        if rs is not None and rs.attempt_start_time is not None:
            start = rs.attempt_start_time
        return start + timedelta(seconds=spec.repair.timeout_seconds)
    if phase == Phase.VERIFYING:
        deadline = start + timedelta(seconds=spec.verify.timeout_seconds)
        canary = status.verify.canary if status.verify else None
        if canary is not None and spec.verify.canary is not None:
            ends = canary.start_time + timedelta(seconds=spec.verify.canary.timeout_seconds)
            deadline = max(deadline, ends)  # a canary started late has its full time
        return deadline
    if phase in (Phase.CORDONING, Phase.UNCORDONING):
        return start + STEP_DEADLINE
    return None


def set_cond(
    d: Decision, obs: Observation, type_: str, status: bool, reason: str, message: str
) -> None:
    d.status.conditions = conditions.set_condition(
        d.status.conditions, type_, status, reason, message, obs.now, obs.generation
    )
