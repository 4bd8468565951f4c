"""The pool arithmetic (pitstop.pool.arithmetic) as hypothesis properties, stated
the way DESIGN.md "Pool arithmetic" and docs/policies.md "Pool safety" say them:

- admitting a repair never makes more than `maxConcurrentRepairs` active;
- once its node is cordoned the pool keeps `minAvailable` available nodes, and a
  repair of a node that is already unavailable takes nothing away;
- repairs start in creation order, and the oldest waiting one is never held back
  by the order itself;
- a burst of admissions, made one at a time as the operator makes them, keeps the
  limits; `minAvailable` rounds up and `maxUnhealthy` (the storm guard) rounds down;
- a node is unhealthy once one of `unhealthyConditions` has held for its duration,
  and the policy's wake-up time is exactly when the next one will have.

The pools are drawn as a cluster shows them: nodes Ready or not, some cordoned by
hand, the nodes of repairs past Cordoning locked and cordoned, a Failed repair
kept cordoned, at most one active repair per node, repairs of nodes in other pools;
and as the operator's view may show them a moment late: a repair being deleted
whose finalizer has not given its node back yet, a lock left by a repair already
gone, a finished repair's lock and cordon its release has taken off already.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pitstop.models import FINAL_PHASES, Phase, RepairPolicySpec
from pitstop.pool import arithmetic
from pitstop.pool.arithmetic import NodeView, RepairView

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REASONS = {"NodeBusy", "MaxConcurrentRepairs", "MinAvailable", "WaitingForCapacity"}
ACTIVE_PHASES = [p for p in Phase if p != Phase.PENDING and p not in FINAL_PHASES]
LOCKED_PHASES = [p for p in ACTIVE_PHASES if p != Phase.CORDONING]
"""Past Cordoning a repair's node carries its lock and cordon (in Cordoning it may not yet)."""

PHASES = [None, Phase.PENDING] * 3 + list(Phase)
"""Waiting repairs are what admission is about: they are drawn more often."""
PROPS = settings(deadline=None, max_examples=150)
"""No per-example deadline: the machine is shared, and slowness is not what is tested."""


@dataclass(frozen=True)
class Pool:
    spec: RepairPolicySpec
    nodes: list[NodeView]
    repairs: list[RepairView]
    """Repairs of the pool's nodes and of nodes outside it."""

    def waiting(self) -> list[RepairView]:
        names = {n.name for n in self.nodes}
        held = {n.lock for n in self.nodes if n.lock}
        return [r for r in self.repairs if r.node in names and r.waiting and r.name not in held]


def created(second: int) -> str:
    """Creation timestamps as the API server writes them: whole seconds (ties happen)."""
    return (T0 + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%SZ")


int_or_percent = st.one_of(
    st.integers(0, 12), st.integers(0, 100).map(lambda p: f"{p}%"), st.integers(0, 12).map(str)
)


@st.composite
def pools(draw: st.DrawFn, max_nodes: int = 10) -> Pool:
    n = draw(st.integers(1, max_nodes))
    spec = RepairPolicySpec.model_validate(
        {
            "nodeSelector": {"matchLabels": {"pool": "a"}},
            "maxConcurrentRepairs": draw(st.integers(1, 4)),
            "minAvailable": draw(int_or_percent),
            "maxUnhealthy": draw(int_or_percent),
        }
    )
    names = [f"a-{i}" for i in range(n)] + ["b-0", "b-1"]  # b-*: another pool's nodes
    repairs: list[RepairView] = []
    active_on: set[str] = set()
    for i in range(draw(st.integers(0, n + 3))):
        node = draw(st.sampled_from(names))
        phase = draw(st.sampled_from(PHASES))
        deleting = draw(st.sampled_from([False] * 7 + [True]))
        view = RepairView(
            name=f"r-{i}",
            node=node,
            phase=phase,
            created=created(draw(st.integers(0, 8))),
            deleting=deleting,
            dry_run=phase in (None, Phase.PENDING) and draw(st.sampled_from([False] * 5 + [True])),
        )
        if view.active:
            if node in active_on:  # invariant 5: one active repair per node
                continue
            active_on.add(node)
        repairs.append(view)
    nodes = []
    for name in names[:n]:
        mine = [r for r in repairs if r.node == name]
        holder = next(
            (
                r.name
                for r in repairs
                if r.node == name
                and (r.phase in LOCKED_PHASES or r.phase == Phase.FAILED)
                and not r.deleting
            ),
            None,
        )
        if holder is None:  # a Cordoning repair may or may not have written its lock yet
            holder = next(
                (
                    r.name
                    for r in repairs
                    if r.node == name and r.phase == Phase.CORDONING and draw(st.booleans())
                ),
                None,
            )
        if holder is None:  # one being deleted, its node not given back yet
            holder = next(
                (
                    r.name
                    for r in mine
                    if r.deleting and r.phase not in (None, Phase.PENDING) and draw(st.booleans())
                ),
                None,
            )
        if holder is None:  # a view behind a release (a finished repair's), or an orphan
            holder = draw(
                st.sampled_from(
                    [None] * 6
                    + [r.name for r in mine if r.phase in (Phase.SUCCEEDED, Phase.ABORTED)]
                    + [f"gone-{name}"]
                )
            )
        ready = draw(st.sampled_from(["True", "True", "True", "False", "Unknown"]))
        nodes.append(
            NodeView(
                name=name,
                labels={"pool": "a"},
                conditions={"Ready": (ready, T0)},
                unschedulable=holder is not None or draw(st.sampled_from([False] * 5 + [True])),
                lock=holder,
            )
        )
    return Pool(spec, nodes, repairs)


@st.composite
def pool_and_candidate(draw: st.DrawFn) -> tuple[Pool, RepairView]:
    """A pool and a new NodeRepair of one of its nodes, waiting to be admitted."""
    pool = draw(pools())
    node = draw(st.sampled_from(pool.nodes))
    candidate = RepairView("new", node.name, Phase.PENDING, created(draw(st.integers(0, 9))))
    return pool, candidate


def held(pool: Pool, candidate: RepairView | None = None) -> dict[str, str]:
    """The repairs that hold a slot of the pool (name → node): those past Pending and
    not finished, those being deleted whose finalizer may not have given their node
    back (all but a Succeeded one), and whoever a node's lock names unless that repair
    ended and is not being deleted. The lock of a vanished repair on the candidate's
    node is no slot of its own: the candidate takes it over."""
    names = {n.name for n in pool.nodes}
    known = {r.name for r in pool.repairs}
    slots = {}
    for r in pool.repairs:
        if r.node not in names or r.phase in (None, Phase.PENDING):
            continue
        if (r.deleting and r.phase != Phase.SUCCEEDED) or r.phase not in FINAL_PHASES:
            slots[r.name] = r.node
    ended = {r.name for r in pool.repairs if r.phase in FINAL_PHASES and not r.deleting}
    for n in pool.nodes:
        if candidate is not None and n.name == candidate.node and n.lock not in known:
            continue
        if n.lock and n.lock not in ended:
            slots.setdefault(n.lock, n.name)
    return slots


def active(pool: Pool, candidate: RepairView | None = None) -> list[str]:
    return list(held(pool, candidate))


def available(pool: Pool, also_taken: Sequence[str] = ()) -> set[str]:
    """Ready, schedulable and not held by a repair (nor in `also_taken`)."""
    taken = set(held(pool).values()) | set(also_taken)
    return {n.name for n in pool.nodes if n.available and n.name not in taken}


def out_already(node: NodeView) -> bool:
    """Not available whatever the operator's view lags behind: not Ready, or cordoned
    by someone else than pitstop (a cordon under a lock may be on its way off)."""
    return not node.ready or (node.unschedulable and node.lock is None)


def floor_of(pool: Pool) -> int:
    return arithmetic.min_available(pool.spec, len(pool.nodes))


def admit(pool: Pool, candidate: RepairView) -> str | None:
    answer = arithmetic.admit(candidate, pool.spec, pool.nodes, pool.repairs)
    if answer is not None:
        assert answer.split(":")[0] in REASONS, answer
    return answer


# --- one admission ---


@PROPS
@given(pool_and_candidate())
def test_an_admission_never_makes_more_active_than_max_concurrent_repairs(
    case: tuple[Pool, RepairView],
) -> None:
    pool, candidate = case
    if admit(pool, candidate) is None:
        assert len(active(pool, candidate)) + 1 <= pool.spec.max_concurrent_repairs


@PROPS
@given(pool_and_candidate())
def test_an_admitted_repair_leaves_the_pool_min_available_nodes(
    case: tuple[Pool, RepairView],
) -> None:
    pool, candidate = case
    if admit(pool, candidate) is None:
        target = next(n for n in pool.nodes if n.name == candidate.node)
        target_available = not out_already(target)
        after = available(pool, also_taken=[candidate.node])
        assert not target_available or len(after) >= floor_of(pool), (
            f"{len(after)} available after cordoning {candidate.node}, floor {floor_of(pool)}"
        )


@PROPS
@given(pool_and_candidate())
def test_a_repair_of_an_unavailable_node_is_never_refused_for_min_available(
    case: tuple[Pool, RepairView],
) -> None:
    pool, candidate = case
    target = next(n for n in pool.nodes if n.name == candidate.node)
    if out_already(target):
        answer = admit(pool, candidate) or ""
        assert not answer.startswith("MinAvailable"), answer
        # ... and the strictest minAvailable changes nothing for it.
        strict = replace(pool, spec=pool.spec.model_copy(update={"min_available": "100%"}))
        older_waiting = [r for r in pool.waiting() if r.created <= candidate.created]
        if not older_waiting:
            assert admit(strict, candidate) == admit(pool, candidate)


@PROPS
@given(pool_and_candidate())
def test_a_repair_is_admitted_only_when_no_older_waiting_one_could_start_instead(
    case: tuple[Pool, RepairView],
) -> None:
    pool, candidate = case
    with_candidate = replace(pool, repairs=[*pool.repairs, candidate])
    if admit(pool, candidate) is None:
        for older in pool.waiting():
            if (older.created, older.name) < (candidate.created, candidate.name):
                assert admit(with_candidate, older) is not None, f"{older.name} is older"


@PROPS
@given(pools())
def test_the_oldest_waiting_repair_is_held_back_by_a_limit_never_by_the_order(pool: Pool) -> None:
    waiting = pool.waiting()
    if waiting:
        oldest = min(waiting, key=lambda r: (r.created, r.name))
        answer = admit(pool, oldest) or ""
        assert not answer.startswith("WaitingForCapacity"), answer


@PROPS
@given(pools())
def test_a_pool_with_nothing_active_starts_its_oldest_repair_of_an_unavailable_node(
    pool: Pool,
) -> None:
    unavailable = {n.name for n in pool.nodes if out_already(n)}
    waiting = [r for r in pool.waiting() if r.node in unavailable]
    if waiting:
        oldest = min(pool.waiting(), key=lambda r: (r.created, r.name))
        if oldest in waiting and not active(pool, oldest):
            assert admit(pool, oldest) is None


@PROPS
@given(pool_and_candidate(), st.lists(st.sampled_from([None, *Phase]), max_size=6))
def test_repairs_of_nodes_outside_the_pool_change_nothing(
    case: tuple[Pool, RepairView], phases: list[Phase | None]
) -> None:
    pool, candidate = case
    outside = [RepairView(f"x-{i}", "elsewhere", p, created(0)) for i, p in enumerate(phases)]
    more = replace(pool, repairs=[*pool.repairs, *outside])
    assert admit(more, candidate) == admit(pool, candidate)


@PROPS
@given(pool_and_candidate())
def test_a_node_with_an_active_repair_admits_no_second_one(case: tuple[Pool, RepairView]) -> None:
    pool, candidate = case
    if candidate.node in held(pool, candidate).values():
        assert (admit(pool, candidate) or "").startswith("NodeBusy")


# --- a burst, admitted one at a time (pitstop.pool.daemon.Admission) ---


def two_waiting_of_three() -> Pool:
    """Two repairs asking at once, room for one: the first admitted takes its node
    before its cordon shows, and the second must count that."""
    spec = RepairPolicySpec.model_validate(
        {
            "nodeSelector": {"matchLabels": {"pool": "a"}},
            "maxConcurrentRepairs": 2,
            "minAvailable": 2,
        }
    )
    nodes = [
        NodeView(f"a-{i}", {"pool": "a"}, {"Ready": ("True", T0)}, False, None) for i in range(3)
    ]
    repairs = [RepairView(f"r-{i}", f"a-{i}", None, created(i)) for i in range(2)]
    return Pool(spec, nodes, repairs)


@PROPS
@given(pools(), st.randoms(use_true_random=False))
@example(two_waiting_of_three(), random.Random(0))
def test_a_burst_of_admissions_keeps_the_pool_limits(pool: Pool, rnd: random.Random) -> None:
    """Every waiting repair asks, in any order, again and again, as drivers do; each
    admitted one counts as active at once (Admission marks it Cordoning)."""
    before_active, before_available = len(active(pool)), len(available(pool))
    state, changed = pool, True
    while changed:
        changed = False
        queue = state.waiting()
        rnd.shuffle(queue)
        for r in queue:
            if admit(state, r) is None:
                admitted = replace(r, phase=Phase.CORDONING)
                state = replace(state, repairs=[admitted if x == r else x for x in state.repairs])
                # The lock of a vanished repair on its node is its to take over.
                known = {x.name for x in state.repairs}
                nodes = [
                    replace(n, lock=r.name)
                    if n.name == r.node and n.lock and n.lock not in known
                    else n
                    for n in state.nodes
                ]
                state = replace(state, nodes=nodes)
                changed = True
                assert len(active(state)) <= max(pool.spec.max_concurrent_repairs, before_active)
                floor = floor_of(state)
                assert len(available(state)) >= min(floor, before_available)
    # The burst stops only where a limit holds the rest back, oldest first.
    left = state.waiting()
    for r in left:
        assert admit(state, r) is not None


# --- what the simulation found (tests/sim/triage.py) ---


def three_ready(max_concurrent: int, min_available: int) -> tuple[RepairPolicySpec, list[NodeView]]:
    spec = RepairPolicySpec.model_validate(
        {
            "nodeSelector": {"matchLabels": {"pool": "a"}},
            "maxConcurrentRepairs": max_concurrent,
            "minAvailable": min_available,
        }
    )
    nodes = [
        NodeView(f"a-{i}", {"pool": "a"}, {"Ready": ("True", T0)}, False, None) for i in range(3)
    ]
    return spec, nodes


def locked(node: NodeView, holder: str) -> NodeView:
    return replace(node, unschedulable=True, lock=holder)


def test_a_repair_being_deleted_holds_its_slot_until_its_node_is_given_back() -> None:
    """SLOT_OF_DELETED_REPAIR (sim seeds 25, 87): a repair being deleted counted as
    inactive while its finalizer (Aborted, then the give-back) still held the node,
    so a waiting repair took a second node under maxConcurrentRepairs: 1."""
    spec, nodes = three_ready(max_concurrent=1, min_available=0)
    nodes[0] = locked(nodes[0], "old")
    new = RepairView("new", "a-1", Phase.PENDING, created(5))
    for phase in (Phase.EVICTING, Phase.ABORTED, Phase.FAILED):
        old = RepairView("old", "a-0", phase, created(0), deleting=True)
        answer = arithmetic.admit(new, spec, nodes, [old]) or ""
        assert answer.startswith("MaxConcurrentRepairs"), (phase, answer)
    # Gone from the view (deleted, or force-deleted), its lock still on the node: held.
    answer = arithmetic.admit(new, spec, nodes, []) or ""
    assert answer.startswith("MaxConcurrentRepairs"), answer
    # Given back (no lock any more): the slot is free.
    nodes[0] = replace(nodes[0], unschedulable=False, lock=None)
    old = RepairView("old", "a-0", Phase.ABORTED, created(0), deleting=True)
    assert arithmetic.admit(new, spec, nodes, []) is None
    # A Failed repair that keeps its node cordoned has ended: it holds no slot.
    nodes[0] = locked(nodes[0], "old")
    failed = RepairView("old", "a-0", Phase.FAILED, created(0))
    assert arithmetic.admit(new, spec, nodes, [failed]) is None


def test_a_node_cordoned_under_a_finished_repairs_lock_is_not_taken_as_out_already() -> None:
    """The long-run break "admission sees its node still cordoned" (sim seeds 20252,
    20300): the view still showed the node locked and cordoned by the repair that had
    just released it, so its next repair "took nothing away" and skipped minAvailable;
    the lock patch then met the released node and the pool fell below the floor."""
    spec, nodes = three_ready(max_concurrent=3, min_available=2)
    nodes[0] = locked(nodes[0], "before")  # released already; the view lags
    nodes[2] = replace(nodes[2], unschedulable=True)  # cordoned by hand
    new = RepairView("new", "a-0", Phase.PENDING, created(5))
    for previous in (
        [RepairView("before", "a-0", Phase.SUCCEEDED, created(0))],
        [RepairView("before", "a-0", Phase.FAILED, created(0))],
        [],  # deleted already
    ):
        answer = arithmetic.admit(new, spec, nodes, previous) or ""
        assert answer.startswith("MinAvailable"), (previous, answer)
    # A node not Ready, or cordoned by someone else, is out already: nothing taken.
    for out in (
        replace(nodes[0], lock=None),
        replace(nodes[0], conditions={"Ready": ("False", T0)}),
    ):
        assert arithmetic.admit(new, spec, [out, *nodes[1:]], []) is None


# --- the percentages ---


@PROPS
@given(st.integers(0, 100), st.integers(0, 1000))
def test_min_available_rounds_up_and_max_unhealthy_rounds_down(percent: int, nodes: int) -> None:
    spec = RepairPolicySpec.model_validate(
        {"nodeSelector": {}, "minAvailable": f"{percent}%", "maxUnhealthy": f"{percent}%"}
    )
    exact = Fraction(percent * nodes, 100)
    assert arithmetic.min_available(spec, nodes) == math.ceil(exact)
    assert arithmetic.max_unhealthy(spec, nodes) == math.floor(exact)
    # The storm guard lets through at most the share, the floor keeps at least it.
    assert arithmetic.max_unhealthy(spec, nodes) <= exact <= arithmetic.min_available(spec, nodes)


@PROPS
@given(st.integers(0, 50), st.integers(0, 1000))
def test_counts_are_taken_as_they_are(count: int, nodes: int) -> None:
    spec = RepairPolicySpec.model_validate(
        {"nodeSelector": {}, "minAvailable": count, "maxUnhealthy": str(count)}
    )
    assert arithmetic.min_available(spec, nodes) == count
    assert arithmetic.max_unhealthy(spec, nodes) == count


# --- detection: fault_of ---

DURATIONS = {"0s": 0, "30s": 30, "5m": 300, "1m30s": 90}


@st.composite
def faulty_nodes(draw: st.DrawFn) -> tuple[RepairPolicySpec, NodeView, datetime]:
    rules = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["Ready", "KernelDeadlock", "DiskPressure"]),
                st.sampled_from(["True", "False", "Unknown"]),
                st.sampled_from(sorted(DURATIONS)),
            ),
            max_size=4,
            unique_by=lambda t: (t[0], t[1]),
        )
    )
    spec = RepairPolicySpec.model_validate(
        {
            "nodeSelector": {},
            "unhealthyConditions": [{"type": t, "status": s, "duration": d} for t, s, d in rules],
        }
    )
    conditions: dict[str, tuple[str, datetime | None]] = {}
    for type_ in draw(st.sets(st.sampled_from(["Ready", "KernelDeadlock", "DiskPressure"]))):
        status = draw(st.sampled_from(["True", "False", "Unknown"]))
        since = draw(st.none() | st.integers(0, 600).map(lambda s: T0 + timedelta(seconds=s)))
        conditions[type_] = (status, since)
    node = NodeView("a-0", {}, conditions, unschedulable=False, lock=None)
    now = T0 + timedelta(seconds=draw(st.integers(0, 1200)))
    return spec, node, now


def held_for(spec: RepairPolicySpec, node: NodeView, now: datetime) -> list[str]:
    """The unhealthy conditions that have held for their duration (no lastTransitionTime:
    held since now)."""
    held = []
    for uc in spec.unhealthy_conditions:
        status, since = node.conditions.get(uc.type, (None, None))
        if status == uc.status.value and now - (since or now) >= timedelta(
            seconds=DURATIONS[uc.duration]
        ):
            held.append(f"{uc.type}={uc.status.value}")
    return held


@PROPS
@given(faulty_nodes())
def test_a_node_is_unhealthy_exactly_when_a_condition_held_for_its_duration(
    case: tuple[RepairPolicySpec, NodeView, datetime],
) -> None:
    spec, node, now = case
    fault, due = arithmetic.fault_of(spec, node, now)
    held = held_for(spec, node, now)
    assert (fault is not None) == bool(held)
    if fault is not None:
        assert fault.cause.split(" for ")[0] in held
        assert due is None


@PROPS
@given(faulty_nodes(), st.integers(0, 3600))
def test_the_policy_wakes_exactly_when_the_next_condition_will_have_held(
    case: tuple[RepairPolicySpec, NodeView, datetime], later: int
) -> None:
    spec, node, now = case
    fault, due = arithmetic.fault_of(spec, node, now)
    if fault is None and due is not None:
        assert due > now
        assert arithmetic.fault_of(spec, node, due)[0] is not None, "woken at due: a fault"
        just_before = due - timedelta(milliseconds=1)
        assert arithmetic.fault_of(spec, node, just_before)[0] is None, "not before due"
    if fault is not None:
        # The same episode of a fault keeps its key (and so its repair's name) over time
        # (another rule may fire first later on: the episode is judged by its own rule).
        rule = next(
            uc
            for uc in spec.unhealthy_conditions
            if fault.cause.startswith(f"{uc.type}={uc.status.value} ")
        )
        alone = spec.model_copy(update={"unhealthy_conditions": [rule]})
        again, _ = arithmetic.fault_of(alone, node, now + timedelta(seconds=later))
        assert again is not None and again.key == fault.key
        first = arithmetic.repair_name(node.name, fault.key)
        assert arithmetic.repair_name(node.name, again.key) == first


# --- what the properties found: a condition without lastTransitionTime ---

BARE = {"type": "KernelDeadlock", "status": "True"}
"""A node condition as a custom controller may write it: lastTransitionTime is optional."""


def bare_node() -> NodeView:
    return arithmetic.node_view({"metadata": {"name": "a-0"}, "status": {"conditions": [BARE]}})


def test_a_fault_without_transition_time_keeps_one_repair_name_over_time() -> None:
    """Its key once held `now`, so every pass named a new repair for the same fault."""
    spec = RepairPolicySpec.model_validate(
        {"nodeSelector": {}, "unhealthyConditions": [{**BARE, "duration": "0s"}]}
    )
    names = set()
    for seconds in (0, 1, 60):
        fault, _ = arithmetic.fault_of(spec, bare_node(), T0 + timedelta(seconds=seconds))
        assert fault is not None
        names.add(arithmetic.repair_name("a-0", fault.key))
    assert len(names) == 1, names


def test_a_condition_without_transition_time_asks_for_no_wake_up() -> None:
    """How long it has held is unknown, so a rule with a duration never fires on it: a
    wake-up `duration` from now found nothing and asked for the next one, forever."""
    spec = RepairPolicySpec.model_validate(
        {"nodeSelector": {}, "unhealthyConditions": [{**BARE, "duration": "5m"}]}
    )
    assert arithmetic.fault_of(spec, bare_node(), T0) == (None, None)
