"""The NodeRepair state machine's entry: `decide()` takes what is observed now and
returns the next status and the actions that move the repair forward. It holds
what every phase needs (the final phases, a dry run, a missing node, the pool's
admission, the node's lock and cordon) and hands the rest to its two halves:
pitstop.repair.drain (Pending → … → Evicting, until RepairAllowed) and
pitstop.repair.recovery (Repairing → Verifying → Uncordoning → Succeeded or Failed).

Pure and level-triggered: it never relies on having seen an earlier event, so a
restarted operator resumes from the cluster as it finds it (invariant 6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pitstop import conditions, constants
from pitstop.cluster import nodes
from pitstop.models import FINAL_PHASES, NodeRecord, Phase
from pitstop.repair import drain, recovery
from pitstop.repair.flow import Decision, Event, Observation, enter, fail, set_cond

C = constants


def decide(obs: Observation) -> Decision:
    d = _decide(obs)
    if obs.status.phase not in FINAL_PHASES:
        recovery.leftover_canary(d, obs)
    return d


def _decide(obs: Observation) -> Decision:
    status = obs.status.model_copy(deep=True)
    d = Decision(status=status)
    if status.phase in FINAL_PHASES:
        return d
    if status.start_time is None:
        status.start_time = obs.now
    if status.phase is None:
        enter(d, obs, Phase.PENDING)

    if obs.spec.dry_run:
        return drain.dry_run(d, obs)
    if obs.node is None:
        if recovery.replacing(status):  # a Replace step deleted its Machine: it goes
            recovery.repairing(d, obs)
            return d
        return fail(d, obs, C.REASON_NODE_NOT_FOUND, f"node {obs.spec.node_name} does not exist")

    if status.phase == Phase.UNCORDONING:
        recovery.uncordoning(d, obs)
        return d
    if not _hold_node(d, obs, obs.node):
        return d
    obs = drain.own_marks(obs, drain.taken_at(d.status))
    drain.drain(d, obs)
    if status.phase == Phase.REPAIRING:
        recovery.repairing(d, obs)
    elif status.phase == Phase.VERIFYING:
        recovery.verifying(d, obs)
    return d


def _hold_node(d: Decision, obs: Observation, node: Mapping[str, Any]) -> bool:
    """Every phase's first step: True once the node is under this repair's lock
    (kept cordoned, and recorded as such). Otherwise the repair waits for its pool
    (admission) or for the repair that holds the node, takes the lock (Cordoning),
    or fails on a lock another repair took mid-way."""
    status = d.status
    if obs.waiting_for and status.phase == Phase.PENDING:
        if obs.waiting_for.startswith(f"{C.REASON_WAITING_FOR_ROOM}: "):
            # Not a queue but a shortage someone may have to act on (add nodes).
            d.events.append(Event("Warning", C.REASON_WAITING_FOR_ROOM, obs.waiting_for, once=True))
            status.message = obs.waiting_for
            return False
        d.events.append(Event("Normal", C.REASON_WAITING_FOR_CAPACITY, obs.waiting_for, once=True))
        status.message = f"{C.REASON_WAITING_FOR_CAPACITY}: {obs.waiting_for}"
        return False
    holder = nodes.lock_holder(node)
    if holder != obs.name:
        if status.phase not in (Phase.PENDING, Phase.CORDONING) and holder is not None:
            fail(d, obs, C.REASON_LOCK_LOST, f"node lock taken by {holder}")
            return False
        if holder is not None and obs.holder_active:
            message = f"node is being repaired by {holder}"
            d.events.append(Event("Normal", C.REASON_NODE_BUSY, f"Waiting: {message}", once=True))
            status.message = f"{C.REASON_NODE_BUSY}: {message}"
            return False
        # Free, held by a vanished repair, or ours lost mid-drain and still free: take it.
        d.take_lock = True
        if status.phase == Phase.PENDING:
            enter(d, obs, Phase.CORDONING)
        status.message = f"Cordoning {obs.spec.node_name}"
        return False

    # We hold the lock: keep the node cordoned for as long as instances are ours.
    if not nodes.is_cordoned(node):
        d.recordon = True
    status.node = NodeRecord(was_unschedulable=nodes.was_unschedulable(node))
    if not conditions.is_true(status.conditions, C.COND_CORDONED):
        d.events.append(
            Event("Normal", C.REASON_CORDONED, "Node cordoned and tainted", on_node=True)
        )
    set_cond(d, obs, C.COND_CORDONED, True, C.REASON_CORDONED, "unschedulable, tainted, locked")
    return True
