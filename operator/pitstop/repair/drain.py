"""The first half of the repair state machine (pitstop.repair.machine), the drain:
Pending → Cordoning → Deregistering → WaitingForTasks → Evicting → Repairing
(RepairAllowed=True); pitstop.repair.recovery takes it from there. Pure, like
the machine: what it decides depends only on the observation.

The per-instance guards here are the invariants themselves:

1. an instance with tasks in flight is never evicted, unless the task timeout
   passed and `onTaskTimeout: Evict`;
2. a sync instance is never evicted before it is out of routing (unless it has no
   serving gate, in which case eviction is what takes it out);
3. nothing touches an instance before the node is cordoned under our lock;
9. those timeouts force an instance out only once its own passed too, counted from
   its own drain signal and gate closing: the repair's (the phase's conditions and
   Events) may have passed long before a budget let it leave service.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta

from pitstop import conditions, constants
from pitstop.cluster import nodes
from pitstop.instances import contract
from pitstop.instances.contract import Instance
from pitstop.models import (
    FINAL_PHASES,
    DryRunPlan,
    InstanceCounts,
    InstanceDeadline,
    NodeRepairStatus,
    OnTaskTimeout,
    Phase,
)
from pitstop.repair.flow import (
    Blocked,
    Decision,
    Event,
    Observation,
    auto_task_timeout,
    enter,
    fail,
    phase_start,
    resolve_task_timeout,
    set_cond,
    task_timeout,
)

__all__ = ["Blocked", "Decision", "Event", "Instance", "Observation"]

C = constants

DRAIN_PHASES = (Phase.CORDONING, Phase.DEREGISTERING, Phase.WAITING_FOR_TASKS, Phase.EVICTING)
"""Phases in which the node holds instances of ours to take offline."""


def drain(d: Decision, obs: Observation) -> None:
    """The drain phases of a repair that holds its node, cordoned: counts, drain
    signals and closed gates (until RepairAllowed: after it nothing on the node is
    ours to touch), then the phases cascade through steps that are already done,
    Pending → Cordoning → Deregistering → WaitingForTasks → Evicting → Repairing."""
    status = d.status
    if status.phase in DRAIN_PHASES or status.phase == Phase.PENDING:
        _count(d, obs)
        resolve_task_timeout(d, obs)
        _mark_and_deregister(d, obs)
    for _ in range(len(DRAIN_PHASES) + 1):
        before = status.phase
        if status.phase in (Phase.PENDING, Phase.CORDONING):
            enter(d, obs, Phase.DEREGISTERING)
        elif status.phase == Phase.DEREGISTERING:
            _deregistering(d, obs)
        elif status.phase == Phase.WAITING_FOR_TASKS:
            _waiting_for_tasks(d, obs)
        elif status.phase == Phase.EVICTING:
            _evicting(d, obs)
        if status.phase == before or status.phase in FINAL_PHASES:
            break


def taken_at(status: NodeRepairStatus) -> datetime | None:
    """When this repair took the node: its Cordoned condition turned True (set in the
    first pass that holds the lock, before any pod is touched)."""
    cond = conditions.find(status.conditions, C.COND_CORDONED)
    if cond is None or not conditions.is_true(status.conditions, C.COND_CORDONED):
        return None
    return cond.last_transition_time


def mark_time(status: NodeRepairStatus, now: datetime) -> str:
    """The value of a drain mark written now: never before the repair took the node
    (another process's clock may lag), so the mark always counts as this repair's."""
    since = taken_at(status)
    at = max(now, since) if since is not None else now
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def own_marks(obs: Observation, since: datetime | None) -> Observation:
    """A drain mark counts only if this repair made it: its time is not before the
    repair took the node. An older one is a mark a give-back already took off that a
    lagging view still shows (or one that is no time): the runtime may have taken
    tasks since, so it is treated as absent: the pod is marked again, and its count
    is trusted only once read with the new mark (invariant 1)."""
    if since is None:
        return obs
    stale = [
        i
        for i in obs.instances
        if i.draining and (i.draining_since is None or i.draining_since < since)
    ]
    if not stale:
        return obs
    keys = {i.key for i in stale}
    return dataclasses.replace(
        obs,
        instances=[
            dataclasses.replace(i, draining=False, draining_since=None) if i.key in keys else i
            for i in obs.instances
        ],
    )


def _count(d: Decision, obs: Observation) -> None:
    live = obs.instances
    old = d.status.instances or InstanceCounts()
    sync = [i for i in live if i.sync]
    total = max(old.total, len(live))
    sync_count = max(old.sync, len(sync))
    d.status.instances = InstanceCounts(
        total=total,
        sync=sync_count,
        async_=total - sync_count,
        deregistered=sum(1 for i in sync if i.gated and i.deregistered),
        inflight_tasks=sum(i.tasks.count for i in live),
        remaining=len(live),
        # Running maxima, like total: a finished repair still says what it met.
        no_serving_gate=max(old.no_serving_gate, sum(1 for i in sync if not i.gated)),
        invalid_task_counts=max(
            old.invalid_task_counts, sum(1 for i in live if i.tasks.invalid is not None)
        ),
        # Now, not a maximum: a source that failed as its pod left is no failure of
        # the finished repair (its Event says what happened).
        unreachable=sum(1 for i in live if i.tasks.error is not None),
    )


def _mark_and_deregister(d: Decision, obs: Observation) -> None:
    """Drain signal on every instance, serving=False on every gated sync one; for
    gated sync instances as far as their PodDisruptionBudgets allow: the closed gate
    makes a pod leave service (not Ready), which its budgets count; the rest stay in
    service (`d.held`) until pods of theirs are gone and replaced. Done again on
    every pass, so instances that appear later, and those held, are treated the same."""
    out = {i.key for i in obs.instances if _out_of_service(i, obs)}
    room = contract.service_room(obs.budgets, obs.instances, out)
    for i in obs.instances:
        # Only a closed gate is ours to know makes the pod not Ready: gated sync
        # instances wait for their budget, the drain signal with them (a runtime that
        # is told to drain while still routed may fail its readiness too). Others get
        # the signal at once; a runtime failing its readiness on it should let its
        # budget evict unhealthy pods (docs/runtime-integration.md).
        if i.key not in out and not i.terminating and i.sync and i.gated:
            full = contract.take_service_room(room, i, obs.now)
            if full:
                d.held[i.key] = full
                if i.unready_since is not None:  # it may count as spent by then
                    d.wake_by(i.unready_since + contract.UNREADY_FOR_GOOD)
    for i in obs.instances:
        if i.tasks.invalid is not None:
            d.events.append(
                Event(
                    "Warning",
                    C.REASON_INVALID_TASK_COUNT,
                    f"{i.key} has {C.ANNOTATION_INFLIGHT}={i.tasks.invalid!r}, not a"
                    " non-negative integer: treated as busy until the task timeout",
                )
            )
        _source_events(d, i)
        if i.terminating or i.key in d.held:
            continue
        if not i.draining:
            d.mark_draining.append(i.key)
        if i.sync and i.gated and i.serving != "False":
            d.deregister.append(i.key)


def _out_of_service(i: Instance, obs: Observation) -> bool:
    """Taken out of service by us already (drain signal or closed gate), or going."""
    return (
        i.draining or (i.gated and i.serving == "False") or i.terminating or i.key in obs.taken_out
    )


def _in_service(d: Decision, obs: Observation) -> list[Instance]:
    """The instances the drain works on now: all but those its budgets hold back."""
    return [i for i in obs.instances if i.key not in d.held]


def _held_note(d: Decision) -> str:
    pdbs = sorted({p for full in d.held.values() for p in full})
    return f"{len(d.held)} kept in service until {', '.join(pdbs)} can spare them"


def _source_events(d: Decision, i: Instance) -> None:
    """What the instance's InstanceProfile and task source have to report."""
    if i.other_profiles:
        others = ", ".join(i.other_profiles)
        d.events.append(
            Event(
                "Warning",
                C.REASON_CONFLICTING_PROFILES,
                f"{i.key} is matched by InstanceProfiles {i.profile}, {others}:"
                f" {i.profile}, the oldest, describes it",
            )
        )
    if i.tasks.error is not None:
        d.events.append(
            Event(
                "Warning",
                C.REASON_TASK_SOURCE_UNREACHABLE,
                f"{i.key} ({i.tasks.source} of InstanceProfile {i.profile}): {i.tasks.error};"
                " treated as busy until the task timeout",
            )
        )
    if i.signal_unacknowledged is not None:
        d.events.append(
            Event(
                "Warning",
                C.REASON_DRAIN_SIGNAL_UNACKNOWLEDGED,
                f"{i.key} did not acknowledge its drain signal ({i.signal_unacknowledged});"
                " still retried, its count is used as with drainSignal none",
            )
        )


def _deregistering(d: Decision, obs: Observation) -> None:
    active = _in_service(d, obs)
    gated = [i for i in active if i.sync and i.gated and not i.terminating]
    waiting = [i for i in gated if not i.deregistered]
    ungated = [i for i in active if i.sync and not i.gated]
    timeout = task_timeout(obs.spec, d.status)
    deadline = phase_start(d, obs) + timedelta(seconds=timeout)
    if waiting and obs.now >= deadline:
        # Still ready endpoints although their gate is closed: the Service publishes
        # not-ready addresses, or routing ignores readiness. Eviction will take them out.
        names = ", ".join(i.key for i in waiting[:5])
        message = (
            f"{len(waiting)} sync instances still routed after"
            f" {timeout}s with their gate closed ({names});"
            " they leave routing when evicted"
        )
        set_cond(d, obs, C.COND_DEREGISTERED, False, C.REASON_DEREGISTRATION_TIMEOUT, message)
        d.events.append(Event("Warning", C.REASON_DEREGISTRATION_TIMEOUT, message))
        enter(d, obs, Phase.WAITING_FOR_TASKS)
        return
    if waiting:
        d.wake_by(deadline)
        names = ", ".join(i.key for i in waiting[:5])
        set_cond(
            d,
            obs,
            C.COND_DEREGISTERED,
            False,
            C.REASON_DEREGISTERING,
            f"{len(gated) - len(waiting)} of {len(gated)} sync instances out of routing;"
            f" waiting for {names}",
        )
        d.status.message = f"Deregistering: {len(waiting)} sync instances still routed"
        return
    message = f"{len(gated)} sync instances out of routing"
    if d.held:
        message += f"; {_held_note(d)}"
    if ungated:
        message += f"; {len(ungated)} without the serving gate leave routing when evicted"
        for i in ungated:
            d.events.append(
                Event(
                    "Warning",
                    C.REASON_NO_SERVING_GATE,
                    f"{i.key} serves requests but has no {C.CONDITION_SERVING} readiness gate:"
                    " it leaves routing only when evicted",
                )
            )
    set_cond(d, obs, C.COND_DEREGISTERED, True, C.REASON_DEREGISTERED, message)
    d.events.append(Event("Normal", C.REASON_DEREGISTERED, message))
    enter(d, obs, Phase.WAITING_FOR_TASKS)


def _waiting_for_tasks(d: Decision, obs: Observation) -> None:
    active = _in_service(d, obs)
    busy = [i for i in active if i.tasks.busy]
    unsignalled = [i for i in active if not i.draining and not i.terminating]
    if not busy and unsignalled:
        # A count read before the drain signal landed could already be stale: the
        # runtime may take a task until it sees the signal. Wait for the signal.
        d.status.message = f"Waiting for the drain signal to reach {len(unsignalled)} instances"
        return
    if not busy:
        if d.held:
            # The instances kept in service still serve: their tasks are waited for
            # under Evicting, each before its eviction (invariant 1), and said there.
            message = (
                f"no tasks in flight on the {_n(len(active), 'instance')} out of service;"
                f" {_held_note(d)}, and drain in turn"
            )
            set_cond(d, obs, C.COND_TASKS_DRAINED, False, C.REASON_DRAINING_IN_TURN, message)
        else:
            _tasks_drained(d, obs)
        enter(d, obs, Phase.EVICTING)
        return
    deadline = phase_start(d, obs) + timedelta(seconds=task_timeout(obs.spec, d.status))
    tasks = sum(i.tasks.count for i in busy)
    invalid = [i for i in busy if i.tasks.invalid is not None]
    unreadable = [i for i in busy if i.tasks.error is not None]
    unread = [i for i in busy if i.tasks.pending is not None]
    detail = f"{_n(tasks, 'task')} in flight on {_n(len(busy), 'instance')}"
    if invalid:
        detail += f" ({len(invalid)} with an invalid {C.ANNOTATION_INFLIGHT}, counted busy)"
    if unreadable:
        detail += f" ({len(unreadable)} whose task source gives no count, counted busy)"
    if unread:
        detail += f" ({len(unread)} not yet read after the drain signal, counted busy)"
    if obs.now >= deadline:
        if obs.spec.drain.on_task_timeout == OnTaskTimeout.FAIL:
            fail(d, obs, C.REASON_TASK_TIMEOUT, f"task timeout passed with {detail}")
            return
        message = f"task timeout passed with {detail}; evicting anyway (onTaskTimeout: Evict)"
        set_cond(d, obs, C.COND_TASKS_DRAINED, False, C.REASON_TASK_TIMEOUT, message)
        d.events.append(Event("Warning", C.REASON_TASK_TIMEOUT, message))
        enter(d, obs, Phase.EVICTING)
        return
    set_cond(d, obs, C.COND_TASKS_DRAINED, False, C.REASON_WAITING_FOR_TASKS, detail)
    d.status.message = f"Waiting for {detail}"
    d.wake_by(deadline)


def _tasks_drained(d: Decision, obs: Observation) -> None:
    set_cond(d, obs, C.COND_TASKS_DRAINED, True, C.REASON_TASKS_DRAINED, "no tasks in flight")
    d.events.append(Event("Normal", C.REASON_TASKS_DRAINED, "All in-flight tasks finished"))


def _draining_in_turn(d: Decision, obs: Observation) -> None:
    """Under Evicting, after WaitingForTasks saw the instances out of service idle while
    budgets kept others in service: TasksDrained turns True once no instance left on
    the node (but those going) has tasks in flight or an untrusted count. A TaskTimeout
    stays as it is: it is what lets an instance be forced out (invariant 1)."""
    cond = conditions.find(d.status.conditions, C.COND_TASKS_DRAINED)
    if cond is None or cond.reason != C.REASON_DRAINING_IN_TURN:
        return
    left = [i for i in obs.instances if not i.terminating and i.key not in obs.evicted]
    busy = [i for i in left if i.key not in d.held and (i.tasks.busy or not i.draining)]
    if not busy and not d.held:
        _tasks_drained(d, obs)
        return
    parts = []
    if busy:
        tasks = sum(i.tasks.count for i in busy)
        parts.append(f"{_n(tasks, 'task')} in flight on {_n(len(busy), 'instance')}")
    if d.held:
        parts.append(_held_note(d))
    message = "; ".join(parts) + ": each instance drains before its eviction"
    set_cond(d, obs, C.COND_TASKS_DRAINED, False, C.REASON_DRAINING_IN_TURN, message)


def _evicting(d: Decision, obs: Observation) -> None:
    remaining = obs.instances
    _draining_in_turn(d, obs)
    if not remaining and obs.listed != 0:
        # The watch shows the node empty, the API server does not (or was not read):
        # a pod bound just before the cordon is on its way to the indexes.
        seen = "could not be listed" if obs.listed is None else f"{obs.listed} more are listed"
        message = f"no instances left as watched; {seen} on the node: waiting for the watch"
        set_cond(d, obs, C.COND_INSTANCES_OFFLINE, False, C.REASON_EVICTING, message)
        d.status.message = f"Evicting: {message}"
        d.wake_by(obs.now + LIST_AGAIN)
        return
    if not remaining:
        set_cond(
            d, obs, C.COND_INSTANCES_OFFLINE, True, C.REASON_INSTANCES_OFFLINE, "no instances left"
        )
        set_cond(
            d, obs, C.COND_REPAIR_ALLOWED, True, C.REASON_REPAIR_ALLOWED, "the node may be repaired"
        )
        d.events.append(
            Event("Normal", C.REASON_REPAIR_ALLOWED, "Node drained: ready for repair", on_node=True)
        )
        enter(d, obs, Phase.REPAIRING)
        d.status.message = "Ready for repair"
        return
    deadline = phase_start(d, obs) + timedelta(seconds=obs.spec.drain.eviction_timeout_seconds)
    blocked = {k: b for k, b in obs.blocked.items() if any(i.key == k for i in remaining)}
    pdbs = sorted({p for b in blocked.values() for p in b.pdbs})
    if obs.now >= deadline:
        # The budgets that hold instances back now, or refused them last.
        pdbs = sorted(set(pdbs) | {p for i in remaining for p in i.pdbs if _full(obs, p)})
        why = f"blocked by {', '.join(pdbs)}" if pdbs else "instances still present"
        fail(
            d,
            obs,
            C.REASON_EVICTION_TIMEOUT,
            f"{len(remaining)} instances not offline after"
            f" {obs.spec.drain.eviction_timeout_seconds}s: {why}",
        )
        return
    forced = _task_timeout_passed(d)
    unrouted = _deregistration_timed_out(d)
    room = contract.eviction_room(obs.budgets, remaining, obs.uncounted)
    held: set[str] = set()
    waiting = 0
    for i in remaining:
        if i.terminating or i.key in obs.evicted or i.key in d.held:
            continue
        if (i.tasks.busy or not i.draining) and not _own_wait_over(
            d, obs, forced, i.draining_since
        ):
            continue  # invariant 1: busy, or its count predates the drain signal; wait
        if (
            i.sync
            and i.gated
            and not i.deregistered
            and not _own_wait_over(d, obs, unrouted, i.gate_closed_since)
        ):
            continue  # invariant 2: not out of routing yet
        b = blocked.get(i.key)
        if b is not None and b.retry_at > obs.now:
            d.wake_by(b.retry_at)
            waiting += 1
            continue
        full = contract.take_room(room, i)
        if full:
            held.update(full)  # a watch event of the budget wakes the repair
            waiting += 1
            continue
        d.evict.append(i.key)
    pdbs = sorted(held | set(pdbs) | {p for full in d.held.values() for p in full})
    waiting += len(d.held)
    if pdbs:
        message = f"{len(remaining)} instances left; {waiting} wait for {', '.join(pdbs)}"
        reason = _budget_wait(d, obs, pdbs)
    else:
        reason, message = C.REASON_EVICTING, f"{len(remaining)} instances left"
    set_cond(d, obs, C.COND_INSTANCES_OFFLINE, False, reason, message)
    d.status.message = f"Evicting: {message}"
    d.wake_by(deadline)


LIST_AGAIN = timedelta(seconds=1)
"""How soon the node's pods are listed again while the API server shows instances the
watch does not (or could not be read): the indexes catch up on the next pod event."""

BLOCKED_AFTER = 0.5
"""Of evictionTimeoutSeconds: budgets that still pace the evictions this far into
Evicting put the repair at risk of its eviction timeout (a Warning)."""


def _budget_wait(d: Decision, obs: Observation, pdbs: list[str]) -> str:
    """The reason evictions wait for `pdbs`, and its Event (one per set of budgets and
    kind of wait, not one per refusal or pass). A budget pacing the drain as it was
    made to (a pod of its own on its way back) is Normal; one that allows nothing with
    every pod it covers healthy, or paces for half the eviction timeout, a Warning."""
    timeout = obs.spec.drain.eviction_timeout_seconds
    names = ", ".join(pdbs)
    stuck = [p for p in pdbs if (b := obs.budgets.get(p)) is not None and b.stuck]
    warn_at = phase_start(d, obs) + timedelta(seconds=timeout * BLOCKED_AFTER)
    if stuck:
        message = (
            f"Evictions wait for {', '.join(stuck)}: no disruption allowed with every pod"
            f" it covers healthy; the repair fails after evictionTimeoutSeconds ({timeout}s)"
            " unless the budget or its workload changes"
        )
    elif obs.now >= warn_at:
        message = (
            f"Evictions still wait for {names} after {timeout * BLOCKED_AFTER:g}s, half of"
            f" evictionTimeoutSeconds ({timeout}s): the repair fails if they do not all"
            " leave in time"
        )
    else:
        d.wake_by(warn_at)
        message = f"Evictions paced by {names}: each waits until the budget allows it"
        d.events.append(Event("Normal", C.REASON_EVICTIONS_PACED, message))
        return C.REASON_EVICTIONS_PACED
    d.events.append(Event("Warning", C.REASON_EVICTION_BLOCKED, message))
    return C.REASON_EVICTION_BLOCKED


def _full(obs: Observation, pdb: str) -> bool:
    b = obs.budgets.get(pdb)
    return b is not None and b.allowed <= 0


def _own_wait_over(
    d: Decision, obs: Observation, repair_timed_out: bool, since: datetime | None
) -> bool:
    """Invariant 9: a timeout forces an instance out only once the repair's passed
    (its condition says so) and the instance's own did too, counted from its own step
    (`since`: its drain signal, its gate closing). One a budget held back, or one that
    came later, gets its full wait; one whose step has no time (not taken yet, or a
    time that is no time) is never forced. Wakes the repair when its own passes."""
    if not repair_timed_out or since is None:
        return False
    deadline = since + timedelta(seconds=task_timeout(obs.spec, d.status))
    if deadline > obs.now:
        d.wake_by(deadline)
        return False
    return True


def _deregistration_timed_out(d: Decision) -> bool:
    cond = conditions.find(d.status.conditions, C.COND_DEREGISTERED)
    return cond is not None and cond.reason == C.REASON_DEREGISTRATION_TIMEOUT


def _task_timeout_passed(d: Decision) -> bool:
    cond = conditions.find(d.status.conditions, C.COND_TASKS_DRAINED)
    return cond is not None and cond.reason == C.REASON_TASK_TIMEOUT


def make_plan(instances: Sequence[Instance], blocking_pdbs: Sequence[str]) -> DryRunPlan:
    """What a repair of the node would do now (dry runs, and `pitstop plan`)."""
    sync = [i for i in instances if i.sync]
    return DryRunPlan(
        sync=[i.key for i in sync],
        async_=[i.key for i in instances if not i.sync],
        no_serving_gate=[i.key for i in sync if not i.gated],
        inflight_tasks=sum(i.tasks.count for i in instances),
        blocking_pdbs=list(blocking_pdbs),
        task_deadlines=[
            InstanceDeadline(
                instance=i.key,
                seconds=i.deadline.seconds,
                source=f"{i.deadline.source} of InstanceProfile {i.profile}",
            )
            for i in instances
            if i.deadline is not None
        ],
        auto_task_timeout=auto_task_timeout(instances),
    )


def dry_run(d: Decision, obs: Observation) -> Decision:
    """The plan, refreshed on every pass; the node and its instances are not touched."""
    if obs.node is None:
        d.status.plan = None
        d.status.message = f"Dry run: node {obs.spec.node_name} does not exist"
        return d
    plan = make_plan(obs.instances, obs.blocking_pdbs)
    sync = plan.sync
    d.status.plan = plan
    _count(d, obs)
    resolve_task_timeout(d, obs)
    holder = nodes.lock_holder(obs.node)
    busy = f"; node is being repaired by {holder}" if holder else ""
    blocked = f"; blocked by {', '.join(obs.blocking_pdbs)}" if obs.blocking_pdbs else ""
    d.status.message = (
        f"Dry run: would cordon {obs.spec.node_name}, deregister {len(sync)} sync instances,"
        f" wait for {plan.inflight_tasks} tasks, evict {len(obs.instances)} instances"
        f"{blocked}{busy}"
    )
    return d


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
