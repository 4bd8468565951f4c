"""The drain half of the state machine, through its entry pitstop.repair.machine.decide
(no cluster).

Observations are built from small factories; each test checks one behaviour. The
property tests at the end check the DESIGN invariants over many random observations:

1. no busy instance is evicted unless the task timeout passed with onTaskTimeout: Evict;
2. no gated sync instance is evicted before it is deregistered;
3. nothing touches an instance before the node's lock is the repair's.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pitstop import constants as C
from pitstop.conditions import find
from pitstop.instances import contract
from pitstop.instances.contract import Budget, TaskCount
from pitstop.models import (
    Condition,
    ConditionStatus,
    DrainSpec,
    InstanceCounts,
    NodeRepairSpec,
    NodeRepairStatus,
    OnFailure,
    OnTaskTimeout,
    Phase,
)
from pitstop.repair.drain import Blocked, Decision, Instance, Observation, mark_time
from pitstop.repair.flow import task_timeout
from pitstop.repair.machine import decide

NAME = "r1"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TAINT = {"key": C.TAINT_MAINTENANCE, "effect": "NoSchedule"}


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


# --- factories ---


def inst(
    name: str,
    kind: str = "async",
    *,
    gated: bool = False,
    serving: str | None = None,
    ready: bool = False,
    tasks: int | str = 0,
    draining: bool = True,
    terminating: bool = False,
    since: float = 3600,
) -> Instance:
    """One instance in namespace `fn`; `tasks` as a str is an invalid annotation value.
    Its drain signal (if `draining`) and its closed gate (if `serving` is False) date
    from `since` seconds before NOW: by default as old as the repair."""
    count = TaskCount(0, invalid=tasks) if isinstance(tasks, str) else TaskCount(tasks)
    return Instance(
        key=f"fn/{name}",
        kind=kind,
        gated=gated,
        serving=serving,
        ready_endpoint=ready,
        tasks=count,
        draining=draining,
        terminating=terminating,
        draining_since=ago(since) if draining else None,
        gate_closed_since=ago(since) if serving == "False" else None,
    )


def routed(name: str, **kw: Any) -> Instance:
    """A gated sync instance still in routing."""
    return inst(name, "sync", gated=True, serving="True", ready=True, **kw)


def deregistered(name: str, **kw: Any) -> Instance:
    """A gated sync instance confirmed out of routing."""
    return inst(name, "sync", gated=True, serving="False", ready=False, **kw)


def ungated(name: str, **kw: Any) -> Instance:
    """A sync instance without the serving gate (a ready endpoint until evicted)."""
    return inst(name, "sync", gated=False, ready=True, **kw)


def node(
    holder: str | None = NAME, *, cordoned: bool = True, was: str | None = "false"
) -> dict[str, Any]:
    annotations: dict[str, str] = {}
    if holder is not None:
        annotations[C.ANNOTATION_REPAIR] = holder
        if was is not None:
            annotations[C.ANNOTATION_WAS_UNSCHEDULABLE] = was
    spec: dict[str, Any] = {"taints": [TAINT]} if cordoned else {}
    if cordoned:
        spec["unschedulable"] = True
    return {
        "metadata": {"name": "n1", "resourceVersion": "1", "annotations": annotations},
        "spec": spec,
    }


def free_node() -> dict[str, Any]:
    return node(None, cordoned=False)


def spec(
    *,
    task_timeout: int = 1800,
    on_task_timeout: OnTaskTimeout = OnTaskTimeout.EVICT,
    eviction_timeout: int = 600,
    on_failure: OnFailure = OnFailure.KEEP_CORDONED,
    dry_run: bool = False,
) -> NodeRepairSpec:
    return NodeRepairSpec(
        node_name="n1",
        dry_run=dry_run,
        on_failure=on_failure,
        drain=DrainSpec(
            task_timeout_seconds=task_timeout,
            on_task_timeout=on_task_timeout,
            eviction_timeout_seconds=eviction_timeout,
        ),
    )


def cond(type_: str, status: bool, reason: str, at: datetime | None = None) -> Condition:
    return Condition(
        type=type_,
        status=ConditionStatus.TRUE if status else ConditionStatus.FALSE,
        reason=reason,
        message="",
        last_transition_time=at or ago(60),
    )


CORDONED = cond(C.COND_CORDONED, True, C.REASON_CORDONED, ago(3600))
"""The repair took the node as it started: the instances' marks (by default as old as
the repair) are its own."""
DEREGISTERED = cond(C.COND_DEREGISTERED, True, C.REASON_DEREGISTERED)
DRAINED = cond(C.COND_TASKS_DRAINED, True, C.REASON_TASKS_DRAINED)
TIMED_OUT = cond(C.COND_TASKS_DRAINED, False, C.REASON_TASK_TIMEOUT)
DEREG_TIMED_OUT = cond(C.COND_DEREGISTERED, False, C.REASON_DEREGISTRATION_TIMEOUT)


def status(
    phase: Phase | None = None, since: float = 0, conditions: list[Condition] | None = None
) -> NodeRepairStatus:
    """A repair status in `phase`, entered `since` seconds before NOW."""
    if phase is None:
        return NodeRepairStatus()
    if conditions is None:
        conditions = {
            Phase.PENDING: [],
            Phase.CORDONING: [],
            Phase.DEREGISTERING: [CORDONED],
            Phase.WAITING_FOR_TASKS: [CORDONED, DEREGISTERED],
            Phase.EVICTING: [CORDONED, DEREGISTERED, DRAINED],
        }.get(phase, [CORDONED, DEREGISTERED, DRAINED])
    return NodeRepairStatus(
        phase=phase,
        conditions=conditions,
        start_time=ago(3600),
        phase_start_time=ago(since),
    )


def observe(
    st: NodeRepairStatus | None = None,
    instances: list[Instance] | None = None,
    *,
    the_node: dict[str, Any] | str | None = "locked",
    sp: NodeRepairSpec | None = None,
    holder_active: bool = False,
    blocked: dict[str, Blocked] | None = None,
    blocking_pdbs: tuple[str, ...] = (),
    budgets: dict[str, Budget] | None = None,
    evicted: frozenset[str] = frozenset(),
    uncounted: frozenset[str] | None = None,
    taken_out: frozenset[str] = frozenset(),
    now: datetime = NOW,
    listed: int | None = 0,
) -> Observation:
    """`listed`: the instances the API server lists on the node when `instances` is
    empty (by default it agrees with the watch)."""
    return Observation(
        now=now,
        name=NAME,
        generation=4,
        spec=sp or spec(),
        status=st or status(),
        node=node() if the_node == "locked" else the_node,  # type: ignore[arg-type]
        holder_active=holder_active,
        instances=instances or [],
        blocked=blocked or {},
        blocking_pdbs=blocking_pdbs,
        budgets=budgets or {},
        evicted=evicted,
        uncounted=evicted if uncounted is None else uncounted,
        taken_out=taken_out,
        listed=listed,
    )


def pod_actions(d: Decision) -> list[str]:
    return [*d.mark_draining, *d.deregister, *d.evict]


def condition(d: Decision, type_: str) -> Condition:
    found = find(d.status.conditions, type_)
    assert found is not None, f"no {type_} condition in {d.status.conditions}"
    return found


def reasons(d: Decision, type_: str = "Warning") -> list[str]:
    return [e.reason for e in d.events if e.type == type_]


def blocked_until(retry_at: datetime, *pdbs: str) -> Blocked:
    return Blocked(retry_at=retry_at, pdbs=pdbs, message="blocked")


# --- taking the node ---


def test_fresh_repair_on_a_free_node_takes_the_lock_and_touches_no_instance() -> None:
    d = decide(observe(instances=[routed("a"), inst("b", tasks=2)], the_node=free_node()))
    assert d.take_lock
    assert d.status.phase == Phase.CORDONING
    assert pod_actions(d) == []
    assert not d.recordon
    assert d.status.start_time == NOW
    assert d.status.phase_start_time == NOW
    assert d.status.observed_generation == 4


def test_fresh_repair_sets_no_cordoned_condition_before_the_lock_is_held() -> None:
    d = decide(observe(the_node=free_node()))
    assert find(d.status.conditions, C.COND_CORDONED) is None


def test_lock_held_by_an_active_repair_waits_pending_with_node_busy() -> None:
    d = decide(observe(instances=[inst("a")], the_node=node("r0"), holder_active=True))
    assert d.status.phase == Phase.PENDING
    assert not d.take_lock
    assert pod_actions(d) == []
    assert d.status.message is not None and C.REASON_NODE_BUSY in d.status.message
    assert "r0" in d.status.message
    assert [e.reason for e in d.events] == [C.REASON_NODE_BUSY]


def test_lock_held_by_an_inactive_or_vanished_repair_is_taken_over() -> None:
    d = decide(observe(instances=[inst("a")], the_node=node("r0"), holder_active=False))
    assert d.take_lock
    assert d.status.phase == Phase.CORDONING
    assert pod_actions(d) == []


def test_lock_lost_to_another_repair_mid_drain_fails_with_lock_lost() -> None:
    obs = observe(status(Phase.EVICTING), [inst("a")], the_node=node("r0"), holder_active=True)
    d = decide(obs)
    assert d.status.phase == Phase.FAILED
    assert d.status.message is not None and d.status.message.startswith(C.REASON_LOCK_LOST)
    assert pod_actions(d) == []
    assert not d.release  # not ours to give back


def test_lock_annotation_gone_mid_drain_is_taken_again_before_any_pod_action() -> None:
    d = decide(observe(status(Phase.EVICTING), [inst("a")], the_node=node(None)))
    assert d.take_lock
    assert d.status.phase == Phase.EVICTING
    assert pod_actions(d) == []


def test_missing_node_fails_with_node_not_found() -> None:
    d = decide(observe(instances=[inst("a")], the_node=None))
    assert d.status.phase == Phase.FAILED
    assert d.status.message is not None and d.status.message.startswith(C.REASON_NODE_NOT_FOUND)
    assert reasons(d) == [C.REASON_NODE_NOT_FOUND]
    assert d.status.completion_time == NOW
    assert pod_actions(d) == []
    assert not d.release


def test_locked_but_uncordoned_node_is_recordoned() -> None:
    d = decide(observe(status(Phase.WAITING_FOR_TASKS), the_node=node(cordoned=False)))
    assert d.recordon
    assert not d.take_lock


def test_locked_and_cordoned_node_needs_no_recordon() -> None:
    assert not decide(observe(status(Phase.CORDONING))).recordon


def test_holding_the_lock_sets_cordoned_once_and_records_prior_schedulability() -> None:
    d = decide(observe(status(Phase.CORDONING), [inst("a", tasks=1)], the_node=node(was="true")))
    assert condition(d, C.COND_CORDONED).status == ConditionStatus.TRUE
    assert d.status.node is not None and d.status.node.was_unschedulable is True
    assert C.REASON_CORDONED in [e.reason for e in d.events]
    again = decide(dataclasses.replace(observe(status(Phase.CORDONING)), status=d.status))
    assert C.REASON_CORDONED not in [e.reason for e in again.events]


# --- Deregistering ---


def test_gated_sync_instances_get_deregistered() -> None:
    obs = observe(status(Phase.DEREGISTERING), [routed("a"), inst("b"), ungated("c")])
    assert decide(obs).deregister == ["fn/a"]


def test_sync_instance_with_serving_unset_is_deregistered() -> None:
    obs = observe(status(Phase.DEREGISTERING), [inst("a", "sync", gated=True, serving=None)])
    assert decide(obs).deregister == ["fn/a"]


def test_sync_instance_already_serving_false_is_not_deregistered_again() -> None:
    obs = observe(status(Phase.DEREGISTERING), [inst("a", "sync", gated=True, serving="False")])
    assert decide(obs).deregister == []


def test_every_live_instance_without_the_drain_signal_is_marked_draining() -> None:
    instances = [
        routed("a", draining=False),
        inst("b", draining=False),
        ungated("c", draining=False),
        inst("d", draining=True),
        inst("e", draining=False, terminating=True),
    ]
    d = decide(observe(status(Phase.DEREGISTERING), instances))
    assert d.mark_draining == ["fn/a", "fn/b", "fn/c"]


def test_terminating_instances_are_neither_marked_nor_deregistered() -> None:
    obs = observe(status(Phase.DEREGISTERING), [routed("a", draining=False, terminating=True)])
    d = decide(obs)
    assert d.mark_draining == [] and d.deregister == []


@pytest.mark.parametrize(
    "instance",
    [
        routed("a"),
        inst("a", "sync", gated=True, serving="False", ready=True),
        inst("a", "sync", gated=True, serving="True", ready=False),
        inst("a", "sync", gated=True, serving=None, ready=False),
    ],
    ids=["routed", "still-ready-endpoint", "serving-true", "serving-unset"],
)
def test_stays_deregistering_while_a_gated_sync_instance_is_routed(instance: Instance) -> None:
    d = decide(observe(status(Phase.DEREGISTERING), [instance, deregistered("b")]))
    assert d.status.phase == Phase.DEREGISTERING
    assert d.evict == []
    dereg = condition(d, C.COND_DEREGISTERED)
    assert dereg.status == ConditionStatus.FALSE
    assert dereg.reason == C.REASON_DEREGISTERING
    assert "fn/a" in (dereg.message or "")


def test_moves_to_waiting_for_tasks_once_all_gated_sync_instances_are_out() -> None:
    d = decide(observe(status(Phase.DEREGISTERING), [deregistered("a"), inst("b", tasks=2)]))
    assert d.status.phase == Phase.WAITING_FOR_TASKS
    assert d.status.phase_start_time == NOW
    dereg = condition(d, C.COND_DEREGISTERED)
    assert (dereg.status, dereg.reason) == (ConditionStatus.TRUE, C.REASON_DEREGISTERED)
    assert d.evict == []


def test_terminating_routed_instance_does_not_hold_deregistering() -> None:
    d = decide(observe(status(Phase.DEREGISTERING), [routed("a", terminating=True)]))
    assert d.status.phase != Phase.DEREGISTERING


def test_ungated_sync_instance_gets_a_no_serving_gate_warning() -> None:
    d = decide(observe(status(Phase.DEREGISTERING), [ungated("a"), inst("b", tasks=1)]))
    assert d.status.phase == Phase.WAITING_FOR_TASKS
    assert reasons(d) == [C.REASON_NO_SERVING_GATE]
    assert "fn/a" in d.events[[e.reason for e in d.events].index(C.REASON_NO_SERVING_GATE)].message
    assert d.status.instances is not None and d.status.instances.no_serving_gate == 1


# --- the cascade through steps that are already done ---


def test_no_sync_instances_and_no_tasks_reach_evicting_in_the_same_pass() -> None:
    st = status(Phase.CORDONING, conditions=[CORDONED])  # signalled since it took the node
    d = decide(observe(st, [inst("a"), inst("b")]))
    assert d.status.phase == Phase.EVICTING
    assert d.evict == ["fn/a", "fn/b"]
    assert condition(d, C.COND_DEREGISTERED).status == ConditionStatus.TRUE
    assert condition(d, C.COND_TASKS_DRAINED).status == ConditionStatus.TRUE
    assert d.wake_at == NOW + timedelta(seconds=600)


def test_empty_node_reaches_repairing_in_the_same_pass() -> None:
    d = decide(observe(status(Phase.CORDONING), []))
    assert d.status.phase == Phase.REPAIRING
    assert condition(d, C.COND_INSTANCES_OFFLINE).status == ConditionStatus.TRUE
    assert condition(d, C.COND_REPAIR_ALLOWED).status == ConditionStatus.TRUE


def test_deregistered_sync_and_idle_async_instances_are_evicted_after_the_cascade() -> None:
    d = decide(observe(status(Phase.DEREGISTERING), [deregistered("a"), inst("b"), ungated("c")]))
    assert d.status.phase == Phase.EVICTING
    assert sorted(d.evict) == ["fn/a", "fn/b", "fn/c"]


# --- WaitingForTasks and invariant 1 ---


def test_waits_while_an_instance_has_tasks_in_flight() -> None:
    d = decide(observe(status(Phase.WAITING_FOR_TASKS, since=10), [inst("a", tasks=3), inst("b")]))
    assert d.status.phase == Phase.WAITING_FOR_TASKS
    assert d.evict == []
    drained = condition(d, C.COND_TASKS_DRAINED)
    assert (drained.status, drained.reason) == (ConditionStatus.FALSE, C.REASON_WAITING_FOR_TASKS)
    assert d.status.instances is not None and d.status.instances.inflight_tasks == 3


def test_waiting_wakes_at_phase_start_plus_task_timeout() -> None:
    st = status(Phase.WAITING_FOR_TASKS, since=100)
    d = decide(observe(st, [inst("a", tasks=1)], sp=spec(task_timeout=1800)))
    assert st.phase_start_time is not None
    assert d.wake_at == st.phase_start_time + timedelta(seconds=1800)


def test_invalid_task_count_is_busy_and_posts_a_warning() -> None:
    d = decide(observe(status(Phase.WAITING_FOR_TASKS, since=10), [inst("a", tasks="abc")]))
    assert d.status.phase == Phase.WAITING_FOR_TASKS
    assert d.evict == []
    assert reasons(d) == [C.REASON_INVALID_TASK_COUNT]
    assert "'abc'" in d.events[0].message
    assert d.status.instances is not None and d.status.instances.invalid_task_counts == 1


def test_tasks_finished_moves_to_evicting() -> None:
    d = decide(observe(status(Phase.WAITING_FOR_TASKS, since=10), [inst("a", tasks=0)]))
    assert d.status.phase == Phase.EVICTING
    assert condition(d, C.COND_TASKS_DRAINED).status == ConditionStatus.TRUE
    assert d.evict == ["fn/a"]


def test_task_timeout_with_fail_fails_the_repair() -> None:
    sp = spec(task_timeout=60, on_task_timeout=OnTaskTimeout.FAIL)
    d = decide(observe(status(Phase.WAITING_FOR_TASKS, since=60), [inst("a", tasks=2)], sp=sp))
    assert d.status.phase == Phase.FAILED
    assert d.status.message is not None and d.status.message.startswith(C.REASON_TASK_TIMEOUT)
    assert reasons(d) == [C.REASON_TASK_TIMEOUT]
    assert d.evict == []


def test_task_timeout_with_evict_evicts_busy_instances() -> None:
    sp = spec(task_timeout=60, on_task_timeout=OnTaskTimeout.EVICT)
    instances = [inst("a", tasks=2), inst("b", tasks="x"), inst("c")]
    d = decide(observe(status(Phase.WAITING_FOR_TASKS, since=61), instances, sp=sp))
    assert d.status.phase == Phase.EVICTING
    drained = condition(d, C.COND_TASKS_DRAINED)
    assert (drained.status, drained.reason) == (ConditionStatus.FALSE, C.REASON_TASK_TIMEOUT)
    assert sorted(d.evict) == ["fn/a", "fn/b", "fn/c"]
    assert C.REASON_TASK_TIMEOUT in reasons(d)


def test_task_timeout_does_not_evict_a_routed_sync_instance() -> None:
    """Invariant 2 holds even when the task timeout forces evictions."""
    sp = spec(task_timeout=60)
    instances = [routed("a", tasks=2), inst("b", tasks=2)]
    d = decide(observe(status(Phase.WAITING_FOR_TASKS, since=61), instances, sp=sp))
    assert d.evict == ["fn/b"]
    assert d.deregister == ["fn/a"]


def test_forced_evictions_continue_in_later_passes() -> None:
    st = status(Phase.EVICTING, since=5, conditions=[CORDONED, DEREGISTERED, TIMED_OUT])
    assert decide(observe(st, [inst("a", tasks=4)])).evict == ["fn/a"]


@pytest.mark.parametrize("tasks", [1, "-1"], ids=["count", "invalid"])
def test_instance_busy_again_while_evicting_is_not_evicted(tasks: int | str) -> None:
    d = decide(observe(status(Phase.EVICTING, since=5), [inst("a", tasks=tasks), inst("b")]))
    assert d.evict == ["fn/b"]
    assert d.status.phase == Phase.EVICTING


def test_routed_sync_instance_appearing_while_evicting_is_deregistered_not_evicted() -> None:
    d = decide(observe(status(Phase.EVICTING, since=5), [routed("a", draining=False)]))
    assert d.evict == []
    assert d.deregister == ["fn/a"]
    assert d.mark_draining == ["fn/a"]


# --- Evicting ---


def test_terminating_instances_are_never_evicted_again() -> None:
    d = decide(observe(status(Phase.EVICTING, since=5), [inst("a", terminating=True), inst("b")]))
    assert d.evict == ["fn/b"]
    assert d.status.phase == Phase.EVICTING
    assert d.status.instances is not None and d.status.instances.remaining == 2


def test_blocked_instance_waits_for_its_retry_time() -> None:
    retry = NOW + timedelta(seconds=2)
    obs = observe(
        status(Phase.EVICTING, since=5),
        [inst("a"), inst("b")],
        blocked={"fn/a": blocked_until(retry, "fn/pdb")},
    )
    d = decide(obs)
    assert d.evict == ["fn/b"]
    assert d.wake_at is not None and d.wake_at <= retry


def test_blocked_instance_is_retried_once_its_retry_time_passed() -> None:
    obs = observe(
        status(Phase.EVICTING, since=5),
        [inst("a")],
        blocked={"fn/a": blocked_until(NOW - timedelta(seconds=1), "fn/pdb")},
    )
    assert decide(obs).evict == ["fn/a"]


def test_blocked_condition_names_the_pdbs() -> None:
    obs = observe(
        status(Phase.EVICTING, since=5),
        [inst("a"), inst("b")],
        blocked={
            "fn/a": blocked_until(NOW + timedelta(seconds=1), "fn/pdb-2"),
            "fn/b": blocked_until(NOW + timedelta(seconds=1), "fn/pdb-1", "fn/pdb-2"),
        },
    )
    offline = condition(decide(obs), C.COND_INSTANCES_OFFLINE)
    # Refused by budgets the index does not know yet: pacing, until half the timeout.
    assert (offline.status, offline.reason) == (ConditionStatus.FALSE, C.REASON_EVICTIONS_PACED)
    assert "fn/pdb-1, fn/pdb-2" in (offline.message or "")


def test_refusals_of_instances_already_gone_are_ignored() -> None:
    obs = observe(
        status(Phase.EVICTING, since=5),
        [inst("a")],
        blocked={"fn/gone": blocked_until(NOW + timedelta(seconds=1), "fn/pdb")},
    )
    d = decide(obs)
    assert condition(d, C.COND_INSTANCES_OFFLINE).reason == C.REASON_EVICTING
    assert d.evict == ["fn/a"]


def test_eviction_timeout_fails_naming_the_pdbs() -> None:
    obs = observe(
        status(Phase.EVICTING, since=600),
        [inst("a")],
        sp=spec(eviction_timeout=600),
        blocked={"fn/a": blocked_until(NOW + timedelta(seconds=1), "fn/pdb")},
    )
    d = decide(obs)
    assert d.status.phase == Phase.FAILED
    assert d.status.message is not None
    assert d.status.message.startswith(C.REASON_EVICTION_TIMEOUT)
    assert "fn/pdb" in d.status.message
    assert d.evict == []
    assert reasons(d) == [C.REASON_EVICTION_TIMEOUT]


def test_eviction_deadline_is_the_wake_time_while_evicting() -> None:
    d = decide(observe(status(Phase.EVICTING, since=100), [inst("a", terminating=True)]))
    assert d.wake_at == ago(100) + timedelta(seconds=600)


def test_all_instances_gone_allows_the_repair() -> None:
    d = decide(observe(status(Phase.EVICTING, since=30), []))
    assert d.status.phase == Phase.REPAIRING
    for type_, reason in [
        (C.COND_INSTANCES_OFFLINE, C.REASON_INSTANCES_OFFLINE),
        (C.COND_REPAIR_ALLOWED, C.REASON_REPAIR_ALLOWED),
    ]:
        c = condition(d, type_)
        assert (c.status, c.reason, c.last_transition_time) == (ConditionStatus.TRUE, reason, NOW)
    assert any(e.reason == C.REASON_REPAIR_ALLOWED and e.on_node for e in d.events)
    # ... and the repair hook starts in the same pass (Manual: waits for a human).
    assert d.status.repair is not None and d.status.repair.attempts == 1
    assert d.status.message is not None and d.status.message.startswith("Repairing: attempt 1")


@pytest.mark.parametrize("listed", [3, None])
@pytest.mark.parametrize("phase", [Phase.CORDONING, Phase.EVICTING])
def test_a_node_the_watch_shows_empty_is_not_drained_while_the_api_server_lists_more(
    listed: int | None, phase: Phase
) -> None:
    # The simulation's seed 27 (and the bench's task series, loaded): pods bound just
    # before the cordon had not reached the watch; the node was declared ready for
    # repair with them running on it. A failed read (None) proves nothing either.
    d = decide(observe(status(phase, since=30), [], listed=listed))
    assert d.status.phase == Phase.EVICTING
    assert find(d.status.conditions, C.COND_REPAIR_ALLOWED) is None
    offline = condition(d, C.COND_INSTANCES_OFFLINE)
    assert offline.status == ConditionStatus.FALSE
    assert "waiting for the watch" in offline.message
    assert d.wake_at == NOW + timedelta(seconds=1)


# --- onFailure ---


def eviction_timeout(on_failure: OnFailure, the_node: dict[str, Any] | None) -> Decision:
    return decide(
        observe(
            status(Phase.EVICTING, since=601),
            [inst("a")],
            sp=spec(on_failure=on_failure),
            the_node=the_node,
        )
    )


def test_on_failure_uncordon_releases_a_node_we_hold() -> None:
    d = eviction_timeout(OnFailure.UNCORDON, node())
    assert d.status.phase == Phase.FAILED
    assert d.release


def test_on_failure_keep_cordoned_does_not_release() -> None:
    d = eviction_timeout(OnFailure.KEEP_CORDONED, node())
    assert d.status.phase == Phase.FAILED
    assert not d.release


def test_on_failure_uncordon_never_releases_a_node_held_by_another_repair() -> None:
    obs = observe(
        status(Phase.EVICTING),
        sp=spec(on_failure=OnFailure.UNCORDON),
        the_node=node("r0"),
        holder_active=True,
    )
    d = decide(obs)
    assert d.status.phase == Phase.FAILED
    assert not d.release


def test_on_failure_uncordon_with_task_timeout_fail_releases() -> None:
    sp = spec(task_timeout=60, on_task_timeout=OnTaskTimeout.FAIL, on_failure=OnFailure.UNCORDON)
    d = decide(observe(status(Phase.WAITING_FOR_TASKS, since=61), [inst("a", tasks=1)], sp=sp))
    assert d.status.phase == Phase.FAILED
    assert d.release


# --- dry run ---


def dry_run(**kw: Any) -> Decision:
    instances = [routed("s1", tasks=2), ungated("s2"), inst("a1", tasks=3), inst("a2", tasks="?")]
    return decide(observe(instances=instances, sp=spec(dry_run=True), the_node=free_node(), **kw))


def test_dry_run_takes_no_lock_and_touches_nothing() -> None:
    d = dry_run()
    assert not d.take_lock and not d.recordon and not d.release
    assert pod_actions(d) == []
    assert d.status.phase == Phase.PENDING


def test_dry_run_reports_the_plan() -> None:
    d = dry_run(blocking_pdbs=("fn/pdb",))
    plan = d.status.plan
    assert plan is not None
    assert plan.sync == ["fn/s1", "fn/s2"]
    assert plan.async_ == ["fn/a1", "fn/a2"]
    assert plan.no_serving_gate == ["fn/s2"]
    assert plan.inflight_tasks == 5
    assert plan.blocking_pdbs == ["fn/pdb"]
    assert plan.wire()["blockingPDBs"] == ["fn/pdb"]


def test_dry_run_message_is_one_line_naming_the_blocking_pdbs() -> None:
    message = dry_run(blocking_pdbs=("fn/pdb",)).status.message
    assert message is not None and "\n" not in message
    assert message.startswith("Dry run")
    assert "fn/pdb" in message


def test_dry_run_on_a_locked_node_takes_nothing_and_says_so() -> None:
    obs = observe(sp=spec(dry_run=True), the_node=node("r0"), holder_active=True)
    d = decide(obs)
    assert not d.take_lock
    assert d.status.message is not None and "r0" in d.status.message


def test_dry_run_on_a_missing_node_does_not_fail() -> None:
    d = decide(observe(sp=spec(dry_run=True), the_node=None))
    assert d.status.phase == Phase.PENDING
    assert d.status.plan is None


# --- final phases ---


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED])
def test_final_phases_change_nothing(phase: Phase) -> None:
    st = status(phase, since=10_000)
    for the_node in (node(), free_node(), None):
        d = decide(observe(st, [routed("a", draining=False), inst("b")], the_node=the_node))
        assert d.status == st
        assert not (d.take_lock or d.recordon or d.release)
        assert pod_actions(d) == [] and d.events == [] and d.wake_at is None


def test_decide_does_not_mutate_the_observed_status() -> None:
    st = status(Phase.DEREGISTERING)
    before = st.model_copy(deep=True)
    decide(observe(st, [deregistered("a"), inst("b")]))
    assert st == before


# --- counts ---


def test_instance_counts() -> None:
    instances = [
        deregistered("s1"),
        routed("s2", tasks=2),
        ungated("s3"),
        inst("a1", tasks=4),
        inst("a2", tasks="bad"),
    ]
    d = decide(observe(status(Phase.DEREGISTERING), instances))
    assert d.status.instances == InstanceCounts(
        total=5,
        sync=3,
        async_=2,
        deregistered=1,
        inflight_tasks=6,
        remaining=5,
        no_serving_gate=1,
        invalid_task_counts=1,
    )


def test_totals_keep_their_high_water_mark_as_instances_leave() -> None:
    st = status(Phase.EVICTING, since=5)
    st.instances = InstanceCounts(total=5, sync=2, async_=3, remaining=5)
    d = decide(observe(st, [inst("a")]))
    assert d.status.instances is not None
    assert (d.status.instances.total, d.status.instances.remaining) == (5, 1)


# --- evictions capped by what each PodDisruptionBudget allows ---


def covered(name: str, *pdbs: str, **kw: Any) -> Instance:
    """An idle async instance under the given budgets."""
    return dataclasses.replace(inst(name, **kw), pdbs=pdbs or ("fn/pdb",))


def evicting(instances: list[Instance], **kw: Any) -> Decision:
    return decide(observe(status(Phase.EVICTING, since=5), instances, **kw))


def test_evictions_under_a_pdb_stop_at_what_it_allows() -> None:
    d = evicting([covered(f"p{n}") for n in range(5)], budgets={"fn/pdb": Budget("fn/pdb", 2)})
    assert d.evict == ["fn/p0", "fn/p1"]


def test_a_pdb_that_allows_nothing_holds_every_eviction_and_says_so() -> None:
    d = evicting([covered("a"), covered("b")], budgets={"fn/pdb": Budget("fn/pdb", 0)})
    assert d.evict == []
    offline = condition(d, C.COND_INSTANCES_OFFLINE)
    assert (offline.status, offline.reason) == (ConditionStatus.FALSE, C.REASON_EVICTION_BLOCKED)
    assert offline.message == "2 instances left; 2 wait for fn/pdb"
    assert d.status.phase == Phase.EVICTING


def test_held_evictions_post_one_event_naming_the_budgets() -> None:
    d = evicting([covered(f"p{n}") for n in range(20)], budgets={"fn/pdb": Budget("fn/pdb", 1)})
    (event,) = [e for e in d.events if e.reason == C.REASON_EVICTIONS_PACED]
    assert event.type == "Normal" and "fn/pdb" in event.message
    # The same words on every pass and whatever the counts: the driver posts it once.
    again = evicting([covered(f"p{n}") for n in range(3)], budgets=paced(3))
    assert [e for e in again.events if e.reason == C.REASON_EVICTIONS_PACED] == [event]


def test_held_evictions_wait_for_the_budget_not_a_timer() -> None:
    # The PDB's watch event wakes the repair; only the eviction deadline is a timer.
    d = evicting([covered("a")], budgets={"fn/pdb": Budget("fn/pdb", 0)})
    assert d.wake_at == ago(5) + timedelta(seconds=600)


def test_accepted_evictions_not_yet_counted_by_the_pdb_take_its_room() -> None:
    pods = [covered("a"), covered("b", terminating=True), covered("c"), covered("d")]
    d = evicting(pods, budgets={"fn/pdb": Budget("fn/pdb", 3)}, evicted=frozenset({"fn/a", "fn/b"}))
    assert d.evict == ["fn/c"], "3 allowed, 2 of ours still in flight: room for 1"


def test_accepted_evictions_the_pdb_counts_are_not_subtracted_twice() -> None:
    pods = [covered("a"), covered("c"), covered("d")]
    budgets = {"fn/pdb": Budget("fn/pdb", 2, frozenset({"fn/a"}))}
    d = evicting(pods, budgets=budgets, evicted=frozenset({"fn/a"}))
    assert d.evict == ["fn/c", "fn/d"]
    # ... nor once the PDB has dropped it from disruptedPods (the driver remembers it counted).
    budgets = {"fn/pdb": Budget("fn/pdb", 2)}
    d = evicting(pods, budgets=budgets, evicted=frozenset({"fn/a"}), uncounted=frozenset())
    assert d.evict == ["fn/c", "fn/d"]


def test_accepted_evictions_are_never_sent_again() -> None:
    d = evicting([covered("a"), inst("b")], evicted=frozenset({"fn/a"}))
    assert d.evict == ["fn/b"]


def test_a_pod_under_several_pdbs_takes_the_minimum() -> None:
    budgets = {"fn/wide": Budget("fn/wide", 10), "fn/narrow": Budget("fn/narrow", 1)}
    pods = [covered(f"p{n}", "fn/wide", "fn/narrow") for n in range(4)]
    assert evicting(pods, budgets=budgets).evict == ["fn/p0"]


def test_budgets_are_capped_each_on_their_own() -> None:
    budgets = {"fn/one": Budget("fn/one", 1), "fn/two": Budget("fn/two", 2)}
    pods = [covered(f"a{n}", "fn/one") for n in range(3)] + [
        covered(f"b{n}", "fn/two") for n in range(3)
    ]
    assert evicting(pods, budgets=budgets).evict == ["fn/a0", "fn/b0", "fn/b1"]


def test_pods_without_a_pdb_are_not_limited() -> None:
    pods = [covered("a"), covered("b"), inst("free-1"), inst("free-2")]
    d = evicting(pods, budgets={"fn/pdb": Budget("fn/pdb", 0)})
    assert d.evict == ["fn/free-1", "fn/free-2"]


def test_busy_or_routed_pods_take_no_room_from_the_budget() -> None:
    # Invariants 1-2 come first; the room goes to the pods that may leave.
    pods = [covered("busy", tasks=1), covered("idle")]
    assert evicting(pods, budgets={"fn/pdb": Budget("fn/pdb", 1)}).evict == ["fn/idle"]
    routed_one = dataclasses.replace(routed("web"), pdbs=("fn/pdb",))
    d = evicting([routed_one, covered("idle")], budgets={"fn/pdb": Budget("fn/pdb", 1)})
    assert d.evict == ["fn/idle"]


def test_a_refused_eviction_still_waits_for_its_backoff() -> None:
    # The 429 path stays: the API server is the authority, the cap only saves requests.
    retry = NOW + timedelta(seconds=2)
    d = evicting(
        [covered("a"), covered("b")],
        budgets={"fn/pdb": Budget("fn/pdb", 5)},
        blocked={"fn/a": blocked_until(retry, "fn/pdb")},
    )
    assert d.evict == ["fn/b"]
    assert d.wake_at == retry


def test_eviction_timeout_names_the_pdbs_that_hold_instances() -> None:
    obs = observe(
        status(Phase.EVICTING, since=600),
        [covered("a")],
        sp=spec(eviction_timeout=600),
        budgets={"fn/pdb": Budget("fn/pdb", 0)},
    )
    d = decide(obs)
    assert d.status.phase == Phase.FAILED
    assert "blocked by fn/pdb" in (d.status.message or "")


def test_a_pdb_that_allows_all_leaves_the_condition_evicting() -> None:
    d = evicting([covered("a"), covered("b")], budgets={"fn/pdb": Budget("fn/pdb", 2)})
    assert d.evict == ["fn/a", "fn/b"]
    assert condition(d, C.COND_INSTANCES_OFFLINE).reason == C.REASON_EVICTING
    assert [e for e in d.events if e.reason == C.REASON_EVICTION_BLOCKED] == []


def test_dry_run_plan_is_not_capped() -> None:
    d = decide(
        observe(
            status(),
            [covered("a"), covered("b")],
            sp=spec(dry_run=True),
            budgets={"fn/pdb": Budget("fn/pdb", 0)},
            blocking_pdbs=("fn/pdb",),
        )
    )
    assert d.evict == [] and d.status.plan is not None
    assert d.status.plan.async_ == ["fn/a", "fn/b"]
    assert d.status.plan.blocking_pdbs == ["fn/pdb"]


# --- regressions: a status without phaseStartTime, invalid counts while evicting ---


def test_missing_phase_start_time_still_lets_the_task_timeout_fire() -> None:
    st = status(Phase.WAITING_FOR_TASKS)
    st.phase_start_time = None
    sp = spec(task_timeout=60)
    first = decide(observe(st, [inst("a", tasks=1)], sp=sp))
    later = NOW + timedelta(seconds=61)
    second = decide(observe(first.status, [inst("a", tasks=1)], sp=sp, now=later))
    assert second.status.phase == Phase.EVICTING


def test_invalid_task_count_seen_while_evicting_posts_a_warning() -> None:
    d = decide(observe(status(Phase.EVICTING, since=5), [inst("a", tasks="abc")]))
    assert d.evict == []
    assert C.REASON_INVALID_TASK_COUNT in reasons(d)


# --- properties over random observations ---

PHASES = [
    None,
    Phase.PENDING,
    Phase.CORDONING,
    Phase.DEREGISTERING,
    Phase.WAITING_FOR_TASKS,
    Phase.EVICTING,
]


def random_instance(rng: random.Random, i: int) -> Instance:
    one = inst(
        f"p{i}",
        rng.choice(["sync", "async"]),
        gated=rng.random() < 0.6,
        serving=rng.choice([None, "True", "False"]),
        ready=rng.random() < 0.5,
        tasks=rng.choice([0, 0, 1, 5, "abc", "-1"]),
        draining=rng.random() < 0.7,
        terminating=rng.random() < 0.15,
    )
    pdbs = tuple(p for p in RANDOM_PDBS if rng.random() < 0.4)
    # Each step of its own, some long before the task timeout, some just now (one a
    # budget held back), some without a time (a value that is no time), some older than
    # the repair's taking of the node (a mark a give-back took off, still in the view).
    times = [None, ago(10), ago(100), *[ago(3000)] * 5, ago(7000)]
    return dataclasses.replace(
        one,
        pdbs=pdbs,
        pod_ready=rng.random() < 0.9,
        draining_since=rng.choice(times) if one.draining else None,
        gate_closed_since=rng.choice(times) if one.serving == "False" else None,
    )


RANDOM_PDBS = ("fn/pdb", "fn/other", "fn/unindexed")


def random_observation(rng: random.Random) -> Observation:
    on_timeout = rng.choice(list(OnTaskTimeout))
    sp = spec(
        task_timeout=rng.choice([60, 1800]),
        on_task_timeout=on_timeout,
        eviction_timeout=rng.choice([60, 600]),
        on_failure=rng.choice(list(OnFailure)),
        dry_run=rng.random() < 0.1,
    )
    phase = rng.choice(PHASES)
    st = status(phase, since=rng.choice([0, 30, 59, 60, 599, 600, 1800, 5000]))
    if phase in (Phase.PENDING, Phase.CORDONING) and rng.random() < 0.5:
        st.conditions = [CORDONED]  # took the node in an earlier pass, its status not moved yet
    if phase == Phase.EVICTING:
        drained = [DRAINED]
        if on_timeout == OnTaskTimeout.EVICT:
            drained.append(TIMED_OUT)  # the task timeout passed earlier, with Evict
        # the deregistration timed out earlier too, or not
        st.conditions = [CORDONED, rng.choice([DEREGISTERED, DEREG_TIMED_OUT]), rng.choice(drained)]
    holder = rng.choice([None, NAME, NAME, NAME, "r0"])
    the_node = None if rng.random() < 0.05 else node(holder, cordoned=rng.random() < 0.8)
    instances = [random_instance(rng, i) for i in range(rng.randint(0, 6))]
    blocked = {
        i.key: blocked_until(NOW + timedelta(seconds=rng.choice([-5, 5])), "fn/pdb")
        for i in instances
        if rng.random() < 0.2
    }
    return observe(
        st,
        instances,
        the_node=the_node,
        sp=sp,
        holder_active=rng.random() < 0.5,
        blocked=blocked,
        blocking_pdbs=("fn/pdb",) if rng.random() < 0.3 else (),
        budgets={
            k: Budget(k, rng.choice([0, 1, 2, 5, 10]), frozenset(disrupted))
            for k in RANDOM_PDBS[: rng.choice([0, 1, 2])]
            if (disrupted := {i.key for i in instances if rng.random() < 0.2}) is not None
        },
        evicted=(evicted := frozenset(i.key for i in instances if rng.random() < 0.1)),
        uncounted=frozenset(k for k in evicted if rng.random() < 0.7),
    )


def assert_invariants(obs: Observation, d: Decision) -> None:
    by_key = {i.key: i for i in obs.instances}
    touched = pod_actions(d)
    holder = (
        None if obs.node is None else obs.node["metadata"]["annotations"].get(C.ANNOTATION_REPAIR)
    )
    # Invariant 3: no pod is touched unless the node's lock is ours (and never in a dry run
    # or in the pass that takes the lock).
    if touched or d.recordon:
        assert holder == NAME, f"pod actions without the lock: {touched}"
        assert not d.take_lock
        assert not obs.spec.dry_run
    assert len(d.evict) == len(set(d.evict)), "an instance evicted twice in one pass"
    for key in d.evict:
        i = by_key[key]
        assert not i.terminating, f"{key} is already terminating"
        timeout = timedelta(seconds=task_timeout(obs.spec, d.status))
        # Invariants 1 and 9: busy instances (or those not yet signalled) only after the
        # task timeout with onTaskTimeout: Evict, the repair's and the instance's own,
        # counted from its drain signal.
        if i.tasks.busy or not i.draining:
            drained = find(d.status.conditions, C.COND_TASKS_DRAINED)
            assert drained is not None and drained.reason == C.REASON_TASK_TIMEOUT, key
            assert obs.spec.drain.on_task_timeout == OnTaskTimeout.EVICT, key
            assert i.draining_since is not None, f"{key} evicted without its drain signal"
            assert i.draining_since + timeout <= obs.now, f"{key}: its own timeout not passed"
        # Invariant 1: a count or a timeout counts only from this repair's own mark,
        # made after it took the node (an older one a give-back took off).
        assert _marked_by_us(i, d), f"{key} evicted without a drain mark of this repair"
        # Invariants 2 and 9: a gated sync instance only once it is out of routing — or
        # once its own gate was closed for the whole timeout and routing still ignored
        # it (DeregistrationTimeout: eviction is then what takes it out).
        if i.sync and i.gated and not (i.serving == "False" and not i.ready_endpoint):
            dereg = find(d.status.conditions, C.COND_DEREGISTERED)
            assert dereg is not None and dereg.reason == C.REASON_DEREGISTRATION_TIMEOUT, (
                f"{key} still routed"
            )
            assert i.serving == "False" and i.gate_closed_since is not None, (
                f"{key} evicted with its gate open"
            )
            assert i.gate_closed_since + timeout <= obs.now, (
                f"{key} still routed before its own deregistration timeout"
            )
        b = obs.blocked.get(key)
        assert b is None or b.retry_at <= obs.now, f"{key} retried before its backoff"
        assert key not in obs.evicted, f"{key} was evicted already"
    # The cap: no budget gets more evictions than it allows, less ours in flight.
    for k, b in obs.budgets.items():
        in_flight = sum(
            1
            for i in obs.instances
            if k in i.pdbs and i.key in obs.uncounted and i.key not in b.disrupted
        )
        sent = sum(1 for key in d.evict if k in by_key[key].pdbs and by_key[key].pod_ready)
        assert sent <= max(0, b.allowed - in_flight), f"{k}: {sent} evictions, room {b}"
    if d.evict:
        assert d.status.phase == Phase.EVICTING
    if d.release:
        assert d.status.phase == Phase.FAILED and holder == NAME
        assert obs.spec.on_failure == OnFailure.UNCORDON


SEEDS = range(4000)


def test_invariants_hold_for_random_observations() -> None:
    rng = random.Random(20240501)
    evictions = busy_evictions = routed_evictions = capped = marked_again = 0
    for _ in SEEDS:
        obs = random_observation(rng)
        d = decide(obs)
        assert_invariants(obs, d)
        marked_again += sum(1 for i in obs.instances if i.draining and i.key in d.mark_draining)
        evictions += len(d.evict)
        busy_evictions += sum(1 for k in d.evict if _busy(obs, k))
        routed_evictions += sum(1 for i in obs.instances if i.key in d.evict and i.ready_endpoint)
        capped += len(decide(dataclasses.replace(obs, budgets={})).evict) - len(d.evict)
    # The generator must reach the interesting cases, or the test proves nothing.
    # (fewer than without marks older than the repair: those are marked again instead)
    assert evictions > 100
    assert busy_evictions > 35
    assert marked_again > 500, "marks older than the repair's taking of the node"
    assert routed_evictions > 40, "some still routed after their own deregistration timeout"
    assert capped > 0, "the budgets held some evictions back"


def _marked_by_us(i: Instance, d: Decision) -> bool:
    taken = find(d.status.conditions, C.COND_CORDONED)
    assert taken is not None and taken.last_transition_time is not None
    return i.draining_since is not None and i.draining_since >= taken.last_transition_time


def _busy(obs: Observation, key: str) -> bool:
    return next(i for i in obs.instances if i.key == key).tasks.busy


def test_decide_is_a_fixpoint_on_its_own_status() -> None:
    """Level-triggered (invariant 6): deciding again on the status just decided, with the
    same cluster, changes nothing and asks for the same actions."""
    rng = random.Random(7)
    for _ in SEEDS:
        obs = random_observation(rng)
        first = decide(obs)
        second = decide(dataclasses.replace(obs, status=first.status))
        assert_invariants(obs, second)
        if first.status.phase in (Phase.FAILED, Phase.SUCCEEDED, Phase.ABORTED):
            continue
        assert second.status.phase == first.status.phase
        assert second.status.conditions == first.status.conditions
        assert (second.take_lock, second.recordon) == (first.take_lock, first.recordon)
        assert second.evict == first.evict
        assert second.deregister == first.deregister
        assert second.mark_draining == first.mark_draining


def test_deregistration_waits_for_the_endpointslices_until_the_task_timeout() -> None:
    routed = inst("a", "sync", gated=True, serving="False", ready=True)
    d = decide(observe(status(Phase.DEREGISTERING, since=30), [routed], sp=spec(task_timeout=60)))
    assert d.status.phase == Phase.DEREGISTERING and d.evict == []
    assert d.wake_at == NOW + timedelta(seconds=30), "wakes when the timeout passes"


def test_deregistration_timeout_moves_on_when_routing_ignores_the_gate() -> None:
    """A Service with publishNotReadyAddresses keeps the endpoint ready although the
    gate is closed: after the task timeout the repair goes on, says so, and eviction
    is what takes the instance out of routing."""
    routed = inst("a", "sync", gated=True, serving="False", ready=True)
    d = decide(observe(status(Phase.DEREGISTERING, since=61), [routed], sp=spec(task_timeout=60)))
    cond = find(d.status.conditions, C.COND_DEREGISTERED)
    assert cond is not None and cond.reason == C.REASON_DEREGISTRATION_TIMEOUT
    assert C.REASON_DEREGISTRATION_TIMEOUT in reasons(d)
    assert d.status.phase == Phase.EVICTING and d.evict == ["fn/a"]


# --- task sources of InstanceProfiles ---


def sourced(name: str, **tasks: Any) -> Instance:
    """An async instance whose count comes from a profile's prometheus source."""
    return dataclasses.replace(
        inst(name), tasks=TaskCount(0, source="prometheus", **tasks), profile="fn"
    )


def test_unreadable_source_is_busy_reported_and_counted() -> None:
    broken = sourced("a", error="GET http://10.0.0.1:9100/metrics: connection refused")
    d = decide(observe(status(Phase.WAITING_FOR_TASKS), [broken, inst("b")]))
    assert d.status.phase == Phase.WAITING_FOR_TASKS and d.evict == []
    assert C.REASON_TASK_SOURCE_UNREACHABLE in reasons(d)
    (event,) = [e for e in d.events if e.reason == C.REASON_TASK_SOURCE_UNREACHABLE]
    assert "fn/a (prometheus of InstanceProfile fn)" in event.message
    assert "connection refused" in event.message
    assert d.status.instances is not None and d.status.instances.unreachable == 1
    assert "1 whose task source gives no count" in (
        condition(d, C.COND_TASKS_DRAINED).message or ""
    )


def test_unreadable_source_waits_for_the_task_timeout_then_evicts() -> None:
    broken = sourced("a", error="no answer in 1s")
    d = decide(observe(status(Phase.WAITING_FOR_TASKS, since=1801), [broken]))
    assert d.status.phase == Phase.EVICTING and d.evict == ["fn/a"]
    assert condition(d, C.COND_TASKS_DRAINED).reason == C.REASON_TASK_TIMEOUT


def test_count_not_yet_read_after_the_signal_is_busy_without_a_warning() -> None:
    waiting = sourced("a", pending="last read predates the drain signal")
    d = decide(observe(status(Phase.WAITING_FOR_TASKS), [waiting]))
    assert d.status.phase == Phase.WAITING_FOR_TASKS and d.evict == []
    assert reasons(d) == []
    assert "1 not yet read after the drain signal" in (
        condition(d, C.COND_TASKS_DRAINED).message or ""
    )


def test_trusted_zero_from_a_source_drains() -> None:
    d = decide(observe(status(Phase.WAITING_FOR_TASKS), [sourced("a")]))
    assert d.status.phase == Phase.EVICTING and d.evict == ["fn/a"]


def test_busy_source_is_never_evicted_in_evicting() -> None:
    d = decide(observe(status(Phase.EVICTING), [sourced("a", error="x"), sourced("b")]))
    assert d.evict == ["fn/b"]


def test_conflicting_profiles_and_unacknowledged_signals_are_reported() -> None:
    i = dataclasses.replace(
        sourced("a"), other_profiles=("newer",), signal_unacknowledged="HTTP 404"
    )
    d = decide(observe(status(Phase.WAITING_FOR_TASKS), [i]))
    messages = {e.reason: e.message for e in d.events if e.type == "Warning"}
    assert messages[C.REASON_CONFLICTING_PROFILES] == (
        "fn/a is matched by InstanceProfiles fn, newer: fn, the oldest, describes it"
    )
    assert "HTTP 404" in messages[C.REASON_DRAIN_SIGNAL_UNACKNOWLEDGED]


# --- taking instances out of service no faster than their budgets spare them ---
# A closed gate or a drain signal makes a pod not Ready, which its PDB counts: past
# its spare healthy pods it would allow no eviction at all, and the drain would wait
# until the eviction timeout (seen on real nodes: 2 of a function's pods on the node,
# maxUnavailable 1).


def in_service(name: str, **kw: Any) -> Instance:
    """A gated sync instance under fn/pdb, Ready, still routed, not yet signalled."""
    return dataclasses.replace(routed(name, draining=False, **kw), pdbs=("fn/pdb",))


def spare(n: int) -> dict[str, Budget]:
    return {"fn/pdb": Budget("fn/pdb", n, spare=n)}


def test_only_as_many_leave_service_as_their_budget_spares() -> None:
    pods = [in_service(f"p{n}") for n in range(3)]
    d = decide(observe(status(Phase.DEREGISTERING), pods, budgets=spare(1)))
    assert d.mark_draining == ["fn/p0"] and d.deregister == ["fn/p0"]
    assert sorted(d.held) == ["fn/p1", "fn/p2"]
    assert d.held["fn/p1"] == ("fn/pdb",)


def test_held_instances_do_not_hold_the_phases_back() -> None:
    # p0 is out of routing and idle; p1 waits for the budget: on to WaitingForTasks
    # and Evicting, where p0 goes; p1 is neither signalled nor evicted.
    p0 = dataclasses.replace(deregistered("p0"), pdbs=("fn/pdb",), pod_ready=False)
    d = decide(observe(status(Phase.DEREGISTERING), [p0, in_service("p1")], budgets=spare(0)))
    assert d.status.phase == Phase.EVICTING
    assert d.evict == ["fn/p0"]
    assert "fn/p1" not in pod_actions(d)
    assert "1 kept in service until fn/pdb can spare them" in (
        condition(d, C.COND_DEREGISTERED).message
    )


def test_ours_out_of_service_count_against_the_spare_even_before_the_budget_sees_them() -> None:
    # p0's gate was closed by this process; the budget's status does not show it yet.
    pods = [in_service("p0"), in_service("p1")]
    d = decide(
        observe(status(Phase.DEREGISTERING), pods, budgets=spare(1), taken_out=frozenset({"fn/p0"}))
    )
    assert "fn/p1" in d.held and "fn/p1" not in pod_actions(d)


def test_a_held_instance_leaves_service_once_the_budget_spares_one_again() -> None:
    # p0 was evicted and is gone, its replacement Ready elsewhere: the budget spares 1.
    d = decide(observe(status(Phase.EVICTING, since=30), [in_service("p1")], budgets=spare(1)))
    assert d.held == {}
    assert d.mark_draining == ["fn/p1"] and d.deregister == ["fn/p1"]
    assert d.evict == [], "not before it is out of routing and signalled (invariants 1, 2)"


def test_a_pod_not_ready_for_good_costs_its_budget_nothing() -> None:
    pod = dataclasses.replace(in_service("p0"), pod_ready=False, unready_since=ago(180))
    d = decide(observe(status(Phase.DEREGISTERING), [pod], budgets=spare(0)))
    assert d.held == {} and d.deregister == ["fn/p0"]


def test_a_pod_that_just_failed_a_probe_still_costs_its_budget() -> None:
    # Ready again in a moment unless we take it out: then the budget would be spent.
    pod = dataclasses.replace(in_service("p1"), pod_ready=False, unready_since=ago(30))
    d = decide(observe(status(Phase.DEREGISTERING), [pod], budgets=spare(0)))
    assert d.held == {"fn/p1": ("fn/pdb",)} and d.deregister == []
    assert d.wake_at is not None and d.wake_at <= ago(30) + timedelta(seconds=120)


def test_pods_without_a_budget_all_leave_service_at_once() -> None:
    pods = [routed(f"p{n}", draining=False) for n in range(3)]
    d = decide(observe(status(Phase.DEREGISTERING), pods, budgets=spare(0)))
    assert d.held == {} and d.deregister == ["fn/p0", "fn/p1", "fn/p2"]


def test_a_late_instance_has_its_own_task_timeout() -> None:
    # The phase's task timeout passed (onTaskTimeout: Evict), but p1 left service
    # only 10 s ago with a task in flight: it is not forced out before its own timeout.
    timed_out = cond(C.COND_TASKS_DRAINED, False, C.REASON_TASK_TIMEOUT)
    st = status(Phase.EVICTING, since=30, conditions=[CORDONED, DEREGISTERED, timed_out])
    late = dataclasses.replace(deregistered("p1", tasks=1), draining_since=ago(10))
    early = dataclasses.replace(deregistered("p0", tasks=1), draining_since=ago(400))
    d = decide(observe(st, [early, late], sp=spec(task_timeout=300)))
    assert d.evict == ["fn/p0"]
    assert d.wake_at is not None and d.wake_at <= ago(10) + timedelta(seconds=300)


def test_async_instances_under_a_budget_get_the_drain_signal_at_once() -> None:
    # No gate of ours makes them not Ready: their eviction is what the budget meters.
    pods = [dataclasses.replace(inst(f"w{n}", draining=False), pdbs=("fn/pdb",)) for n in range(3)]
    d = decide(observe(status(Phase.DEREGISTERING), pods, budgets=spare(0)))
    assert d.held == {} and d.mark_draining == ["fn/w0", "fn/w1", "fn/w2"]


# --- invariant 9: deadlines per instance (issue 18, the review's cases) ---

DEREG_TIMED_OUT_AND_TASKS = [CORDONED, DEREG_TIMED_OUT, TIMED_OUT]


def test_a_held_routed_pod_released_after_both_timeouts_is_marked_not_evicted() -> None:
    # The repair's deregistration and task timeouts both passed while a budget held p1
    # in service; the budget now spares it. It has 2 tasks and is still routed: it
    # gets its drain signal and its gate closed, and waits its own timeouts.
    st = status(Phase.EVICTING, since=30, conditions=DEREG_TIMED_OUT_AND_TASKS)
    p1 = in_service("p1", tasks=2)
    d = decide(observe(st, [p1], budgets=spare(1), sp=spec(task_timeout=300)))
    assert d.mark_draining == ["fn/p1"] and d.deregister == ["fn/p1"]
    assert d.evict == [], "not evicted while routed and busy in the pass that marks it"


def test_a_pod_marked_after_the_deregistration_timeout_waits_its_own() -> None:
    # Every task drained; the repair's deregistration timed out long ago. p1's gate
    # closed 10 s ago and its EndpointSlice has not caught up: still a ready endpoint.
    st = status(Phase.EVICTING, since=30, conditions=[CORDONED, DEREG_TIMED_OUT, DRAINED])
    p1 = inst("p1", "sync", gated=True, serving="False", ready=True, since=10)
    d = decide(observe(st, [p1], sp=spec(task_timeout=300)))
    assert d.evict == []
    assert d.wake_at == ago(10) + timedelta(seconds=300), "wakes when its own wait is over"
    later = decide(
        observe(st, [p1], sp=spec(task_timeout=300), now=ago(10) + timedelta(seconds=300))
    )
    assert later.evict == ["fn/p1"], "routing ignored its closed gate for its whole wait"


def test_a_routed_pod_whose_gate_is_still_open_is_never_evicted_on_the_timeout() -> None:
    st = status(Phase.EVICTING, since=30, conditions=DEREG_TIMED_OUT_AND_TASKS)
    d = decide(observe(st, [routed("p1")]))
    assert d.deregister == ["fn/p1"] and d.evict == []


def test_a_busy_pod_signalled_after_the_task_timeout_waits_its_own() -> None:
    st = status(Phase.EVICTING, since=30, conditions=DEREG_TIMED_OUT_AND_TASKS)
    p1 = deregistered("p1", tasks=2, since=10)
    d = decide(observe(st, [p1], sp=spec(task_timeout=300)))
    assert d.evict == [] and d.wake_at == ago(10) + timedelta(seconds=300)


# --- a drain mark counts only if this repair made it (sim seeds 49 and 94) ---


def test_a_mark_a_give_back_took_off_is_not_trusted_by_the_next_repair() -> None:
    # Sim seed 49: r1 took the node 2 s ago, just after another repair's give-back
    # removed its marks. The view still shows that repair's mark (20 min old) and
    # the count read then, 0: the runtime, unmarked since, may have taken tasks.
    st = status(Phase.DEREGISTERING, since=2, conditions=[cond(*CORDONED_NOW, ago(2))])
    stale = inst("a", tasks=0, since=1200)
    d = decide(observe(st, [stale]))
    assert d.evict == [], "evicted on a count read under a mark already taken off"
    assert d.mark_draining == ["fn/a"], "marked again, by this repair"
    assert d.status.phase == Phase.WAITING_FOR_TASKS
    assert "drain signal" in (d.status.message or "")
    # Once the view shows its new mark, its count is read with it: idle, it goes.
    fresh = inst("a", tasks=0, since=1)
    later = decide(observe(d.status, [fresh]))
    assert later.evict == ["fn/a"]


def test_a_mark_older_than_the_repair_is_no_step_time_for_the_task_timeout() -> None:
    # Sim seed 94's path: the task timeout passed (onTaskTimeout: Evict). A busy pod
    # whose view shows a mark from before r1 took the node has no own wait yet: the
    # old mark's age must not force it out.
    st = status(Phase.EVICTING, since=30, conditions=[cond(*CORDONED_NOW, ago(400)), TIMED_OUT])
    busy = inst("a", tasks=2, since=3600)
    d = decide(observe(st, [busy], sp=spec(task_timeout=300)))
    assert d.evict == [] and d.mark_draining == ["fn/a"]


def test_after_the_task_timeout_a_mark_not_seen_yet_forces_nothing() -> None:
    # Sim seed 94: r1 just marked a (taken_out), its view does not show the mark yet,
    # a has tasks in flight: no time of its own to count from, so it is not forced.
    st = status(Phase.EVICTING, since=30, conditions=[CORDONED, DEREGISTERED, TIMED_OUT])
    busy = inst("a", tasks=2, draining=False)
    d = decide(observe(st, [busy], taken_out=frozenset({"fn/a"}), sp=spec(task_timeout=300)))
    assert d.evict == []


def test_a_drain_mark_is_never_stamped_before_the_repair_took_the_node() -> None:
    # Another process's clock may lag the one that took the node: its mark must still
    # count as this repair's, or the drain would wait for a mark it never sends again.
    st = status(Phase.DEREGISTERING, conditions=[cond(*CORDONED_NOW, NOW)])
    stamp = mark_time(st, NOW - timedelta(seconds=3))
    again = decide(observe(st, [dataclasses.replace(inst("a"), draining_since=_at(stamp))]))
    assert again.mark_draining == [] and again.evict == ["fn/a"]
    assert _at(mark_time(st, NOW + timedelta(microseconds=1))) > NOW, "sub-second precision"


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


CORDONED_NOW = (C.COND_CORDONED, True, C.REASON_CORDONED)


# --- what the conditions and Events say while budgets pace the drain (issue 22) ---


def test_tasks_drained_is_not_said_while_held_instances_still_serve() -> None:
    # p0 is out of service and idle; p1..p3 are kept in service by their budget and
    # still serve: their tasks are waited for later, under Evicting. Nothing may say
    # that every task on the node finished.
    p0 = dataclasses.replace(deregistered("p0"), pdbs=("fn/pdb",), pod_ready=False)
    held = [in_service(f"p{n}", tasks=3) for n in (1, 2, 3)]
    d = decide(observe(status(Phase.WAITING_FOR_TASKS), [p0, *held], budgets=spare(0)))
    assert d.status.phase == Phase.EVICTING and d.evict == ["fn/p0"]
    drained = condition(d, C.COND_TASKS_DRAINED)
    assert (drained.status, drained.reason) == (ConditionStatus.FALSE, C.REASON_DRAINING_IN_TURN)
    assert "3 kept in service until fn/pdb can spare them" in drained.message
    assert [e for e in d.events if e.reason == C.REASON_TASKS_DRAINED] == []
    # The forced eviction of invariant 1 is untouched: this is no task timeout.
    assert d.status.phase == Phase.EVICTING and "fn/p1" not in d.evict


def test_tasks_drained_once_no_instance_left_has_tasks() -> None:
    in_turn = cond(C.COND_TASKS_DRAINED, False, C.REASON_DRAINING_IN_TURN)
    st = status(Phase.EVICTING, since=30, conditions=[CORDONED, DEREGISTERED, in_turn])
    # The budget spared p1: marked and out of routing, its 2 tasks still in flight.
    busy = dataclasses.replace(deregistered("p1", tasks=2), pdbs=("fn/pdb",))
    d = decide(observe(st, [busy], budgets=spare(1)))
    drained = condition(d, C.COND_TASKS_DRAINED)
    assert (drained.status, drained.reason) == (ConditionStatus.FALSE, C.REASON_DRAINING_IN_TURN)
    assert "2 tasks in flight on 1 instance" in drained.message
    assert d.evict == []
    # Its tasks finished: now every task on the node has.
    idle = dataclasses.replace(busy, tasks=TaskCount(0))
    d = decide(observe(st, [idle], budgets=spare(1)))
    drained = condition(d, C.COND_TASKS_DRAINED)
    assert (drained.status, drained.reason) == (ConditionStatus.TRUE, C.REASON_TASKS_DRAINED)
    (event,) = [e for e in d.events if e.reason == C.REASON_TASKS_DRAINED]
    assert event.message == "All in-flight tasks finished"
    assert d.evict == ["fn/p1"]


def test_a_task_timeout_is_never_rewritten_as_drained() -> None:
    # TaskTimeout is what lets an instance be forced out (invariant 1): kept as is.
    st = status(Phase.EVICTING, since=30, conditions=[CORDONED, DEREGISTERED, TIMED_OUT])
    d = decide(observe(st, [inst("a")]))
    assert condition(d, C.COND_TASKS_DRAINED).reason == C.REASON_TASK_TIMEOUT


def test_without_held_instances_tasks_drained_is_said_as_before() -> None:
    d = decide(observe(status(Phase.WAITING_FOR_TASKS), [deregistered("a")]))
    drained = condition(d, C.COND_TASKS_DRAINED)
    assert (drained.status, drained.reason) == (ConditionStatus.TRUE, C.REASON_TASKS_DRAINED)


def paced(n: int, allowed: int = 0) -> dict[str, Budget]:
    """A maxUnavailable budget pacing the drain: a pod of its own still on its way back
    (healthy below expected), so it allows more as soon as that one is Ready."""
    return {"fn/pdb": Budget("fn/pdb", allowed, spare=0, healthy=n - 1, expected=n)}


def test_a_budget_pacing_evictions_is_normal_not_a_warning() -> None:
    d = evicting([covered("a"), covered("b")], budgets=paced(4))
    assert d.evict == []
    offline = condition(d, C.COND_INSTANCES_OFFLINE)
    assert (offline.status, offline.reason) == (ConditionStatus.FALSE, C.REASON_EVICTIONS_PACED)
    assert [e.type for e in d.events if e.reason == C.REASON_EVICTIONS_PACED] == ["Normal"]
    assert [e for e in d.events if e.type == "Warning"] == []
    # It wakes when pacing would turn into a long block: half the eviction timeout.
    assert d.wake_at == ago(5) + timedelta(seconds=300)


def test_a_budget_pacing_for_half_the_eviction_timeout_warns() -> None:
    st = status(Phase.EVICTING, since=300)
    d = decide(observe(st, [covered("a")], budgets=paced(4)))
    offline = condition(d, C.COND_INSTANCES_OFFLINE)
    assert offline.reason == C.REASON_EVICTION_BLOCKED
    (warning,) = [e for e in d.events if e.reason == C.REASON_EVICTION_BLOCKED]
    assert warning.type == "Warning" and "fn/pdb" in warning.message
    assert "300s" in warning.message and "600s" in warning.message


def test_a_budget_that_allows_nothing_with_every_pod_healthy_warns_at_once() -> None:
    # minAvailable = replicas: no pod of its own is on its way back, so nothing will
    # change its answer but someone changing the budget or the workload.
    stuck = {"fn/pdb": Budget("fn/pdb", 0, healthy=2, expected=2)}
    d = evicting([covered("a"), covered("b")], budgets=stuck)
    assert condition(d, C.COND_INSTANCES_OFFLINE).reason == C.REASON_EVICTION_BLOCKED
    assert [e.type for e in d.events if e.reason == C.REASON_EVICTION_BLOCKED] == ["Warning"]


def test_unreachable_counts_sources_unreachable_now_and_ends_at_zero() -> None:
    # A source that failed while its pod was on the node is no failure of a repair
    # that finished: the count follows the instances, and is 0 once none is left.
    st = status(Phase.EVICTING, since=5)
    st.instances = InstanceCounts(total=1, sync=1, remaining=1, unreachable=1)
    d = decide(observe(st, []))
    assert d.status.phase == Phase.REPAIRING
    assert d.status.instances is not None and d.status.instances.unreachable == 0


# --- an unlabelled gated pod whose endpoint the view lacks (long-run seed 20130) ---


def test_an_unlabelled_gated_pod_the_slices_do_not_show_yet_is_deregistered_not_evicted() -> None:
    # Ready a moment ago, already routed, its endpoint not in the operator's view: every
    # task drained. It must get its gate closed, not be evicted as async at once.
    pod = {
        "metadata": {"namespace": "fn", "name": "fresh"},
        "spec": {"nodeName": "n1", "readinessGates": [{"conditionType": C.CONDITION_SERVING}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": C.CONDITION_SERVING, "status": "True"}],
        },
    }
    fresh = dataclasses.replace(contract.observe(pod, None), draining=True, draining_since=ago(60))
    st = status(Phase.EVICTING, since=30, conditions=[CORDONED, DEREGISTERED, DRAINED])
    d = decide(observe(st, [fresh]))
    assert d.evict == [], "evicted as async while routed"
    assert d.deregister == ["fn/fresh"]
