"""What the daemon of one NodeRepair remembers between passes (RepairState, every
field documented there), and the guard its passes share with its deletion
(PassGuard). Only an optimisation: after a restart everything is read again from
the cluster (invariant 6)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from pitstop import constants
from pitstop.cluster.indexes import Wakeups, one
from pitstop.cluster.kube import Kube
from pitstop.instances import contract
from pitstop.instances.sources.poller import Target, TaskPoller
from pitstop.metrics import RepairPhases
from pitstop.models import NodeRepairSpec, NodeRepairStatus
from pitstop.repair.flow import Blocked, CanaryState, JobState, WebhookAnswer

C = constants


MEMO_GUARD = "pitstop.repair.guard"
"""Where a repair's PassGuard lives: kopf's memo of that NodeRepair, which its daemon
and its deletion handler share."""

SETTLE_TIMEOUT = 10.0
"""Seconds the deletion waits for pod marks still unanswered after a cancelled pass."""


@dataclass
class PassGuard:
    """A repair's passes and its deletion, one at a time. kopf runs the deletion handler
    while it stops the daemon: without this the give-back could read the pods while a
    pass still marks them, and a mark landing after it would stay for ever."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by a pass, and by the deletion while it undoes the repair."""
    stopping: bool = False
    """Set by the deletion before it waits for the lock: the pass in flight sends
    nothing more (checked before each batch of marks and each eviction)."""
    writes: set[asyncio.Future[Any]] = field(default_factory=set)
    """Pod marks sent and not yet answered: kopf cancels a daemon that does not stop in
    time, but a request already sent may still land, so the deletion waits for them."""

    def track(self, call: Awaitable[Any]) -> asyncio.Future[Any]:
        write = asyncio.ensure_future(call)
        self.writes.add(write)
        write.add_done_callback(self._done)
        return write

    def _done(self, write: asyncio.Future[Any]) -> None:
        self.writes.discard(write)
        if not write.cancelled():
            write.exception()  # the pass reports it; one it no longer awaits is dropped

    async def settle(self) -> None:
        """Waits until every pod mark sent has its answer (at most SETTLE_TIMEOUT)."""
        if self.writes:
            await asyncio.wait(set(self.writes), timeout=SETTLE_TIMEOUT)


def pass_guard(memo: Any) -> PassGuard:
    """The repair's PassGuard, from its memo (made on first use)."""
    guard = memo.get(MEMO_GUARD)
    if guard is None:
        guard = memo[MEMO_GUARD] = PassGuard()
    return guard  # type: ignore[no-any-return]


@dataclass(eq=False)
class RepairState:
    """Everything one repair's daemon holds between passes, in one place. The step
    objects (observe.Observe, report.Report, act_node.NodeSteps, act_pods.PodSteps,
    act_hooks.RepairSteps) each get this object and read or write the fields named
    below; none keeps state of its own.

    Nothing here survives a restart, and nothing needs to (invariant 6): a new
    process starts from the NodeRepair's status, the node and the pods as the
    indexes show them, and every action is idempotent. What is here only saves
    requests or spares a lagging view, and is never less safe than starting over:
    each field below says how a fresh process does without it."""

    # --- who this repair is (set once) ---
    name: str
    """The NodeRepair's name."""
    body: kopf.Body
    """kopf's body of the NodeRepair (kopf keeps it current): its spec, metadata
    (finalizers, generation, annotations) and, at the start, its status."""
    kube: Kube
    """The API client; all effects go through it."""
    logger: kopf.Logger
    poller: TaskPoller | None = None
    """The operator's shared task-source poller (None: no profile is ever polled)."""
    wake: Wakeups = field(default_factory=Wakeups)
    """The operator run's waiters and the nodes it holds (pitstop.registry: the daemon
    passes the run's, a test gets its own): the repair wakes its own daemon through
    it and adds its node to `under_repair`."""
    phases: RepairPhases = field(default_factory=RepairPhases)
    """The operator run's phase of every repair (the pitstop_repairs gauges; the
    same), which Report keeps current."""
    node_name: str = field(init=False)
    """spec.nodeName (immutable)."""

    # --- the status (Report) ---
    status: NodeRepairStatus = field(init=False)
    """The status as last written (or read back): what decide() starts from. Written
    by Report.write_status and Report.read_back; at a start, the body's status."""
    written: dict[str, Any] | None = field(init=False)
    """That status's wire form (None: no status yet), to write guarded patches
    against it (`kube.guarded_status`) and skip a write that changes nothing (Report)."""
    written_at: datetime = field(init=False)
    """When it was written (Report: counter-only changes are coalesced). A fresh
    process writes its first change at once."""
    unconfirmed: bool = False
    """A status write got no answer (lost, timed out, a 5xx): it may have landed.
    Set by Report.write_status; the next pass reads the status back first
    (Report.read_back) rather than decide from the one held before."""
    spec: NodeRepairSpec | None = None
    """The spec of the last pass that could read it, for the phase's deadline (the
    past-deadline metric). Written by Driver.step; a new process reads it again on
    its first pass."""
    posted: set[tuple[str, str]] = field(default_factory=set)
    """Events posted, as (reason, message or "" for a once-Event) (Report.post). A
    new process may post an Event again, once."""

    # --- the node (NodeSteps) ---
    patched_node: tuple[str | None, dict[str, Any]] | None = None
    """Our last patch of the node: (the resourceVersion it was made on, the node it
    returned). Until the index shows a newer node, that answer is the node
    (`node()`). Written by NodeSteps.patch_node and the daemon's release."""

    # --- the instances, from the last observation (Observe) ---
    marked_at: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    """Each pod's pitstop.dev/draining value and when this process first saw it
    (the trust rule of polled counts). A fresh process sees each mark anew: later."""
    gate_closed_at: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    """Each pod's closed serving gate: its lastTransitionTime and when this process
    first saw it closed; an instance's deregistration wait counts from the later
    (Observe.gate_seen_closed). A fresh process sees each anew: longer, never short."""
    uids: dict[str, str] = field(default_factory=dict)
    """Each pod's uid as the last observation saw it: a new uid under the same name is
    a new pod, and what was seen of the old one is dropped (Observe.forget)."""
    confirmed_out: dict[str, datetime] = field(default_factory=dict)
    """Each gated sync pod whose deregistration a fresh read of its namespace's
    EndpointSlices confirmed, with the gate closing (lastTransitionTime) it confirmed
    (Observe.confirm_deregistered). A fresh process reads again."""
    targets: list[Target] = field(default_factory=list)
    """What the poller would ask the node's instances (Observe; the poller is told
    in the polling phases, Observe.poll)."""
    budgets: dict[str, contract.Budget] = field(default_factory=dict)
    """The PodDisruptionBudgets of the instances' namespaces, by namespace/name (Observe)."""
    pdbs_of: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The budgets that cover each instance (Observe; PodSteps groups evictions by them)."""
    versions: dict[str, str | None] = field(default_factory=dict)
    """Each instance's resourceVersion as the index showed it (Observe; PodSteps
    notes it beside a drain signal's answer)."""
    answered: dict[str, tuple[str | None, dict[str, Any]]] = field(default_factory=dict)
    """Per pod, our drain signal's answer: (the version the index showed when it was
    sent, the pod as the patch left it, slimmed). It is a version of the pod like any
    watch event, carrying the signal, so until the index moves past the version it
    was sent on, the answer is the pod (Observe.instances): the count it carries was
    read after the signal (the trust rule). Any other version in the index, newer or
    not, drops it. A fresh process waits for the watch to show the marks."""

    # --- pod writes this process sent (PodSteps): the indexes lag behind them ---
    sent: set[tuple[str, str]] = field(default_factory=set)
    """(action, pod) done: ("drain" | "deregister" | "evict", namespace/name). Not
    sent twice; forgotten when the view shows a mark removed (PodSteps.forget_sent).
    A fresh process finds the marks on the pods, and an eviction sent again is
    answered as done (the pod is going or gone)."""
    from_answer: set[str] = field(default_factory=set)
    """Pods the last observation took from a patch answer, not from the index
    (Observe.answer_or): what the answer shows is not something the index showed, so
    a version older than the answer that lacks it is the watch catching up, not a mark
    removed (PodSteps.forget_sent)."""
    marked_draining: set[str] = field(default_factory=set)
    """Pods the last observation showed with the drain signal (PodSteps.forget_sent:
    a mark seen and then missing was removed by someone, and is sent again)."""
    marked_closed: set[tuple[str, str]] = field(default_factory=set)
    """("deregister", pod) for pods the last observation showed with the gate closed
    (the same, for the gate)."""
    blocked: dict[str, Blocked] = field(default_factory=dict)
    """Evictions refused (a budget's 429, or an error) and when to try again
    (PodSteps.record; decide() reads it as Observation.blocked)."""
    refusals: dict[str, int] = field(default_factory=dict)
    """Refusals per pod, for the backoff (PodSteps.record). A fresh process starts
    at the shortest backoff."""
    counted: set[str] = field(default_factory=set)
    """Evicted pods a budget has been seen to count (listed in its disruptedPods):
    from then on the budget's own numbers include them (PodSteps.evictions_in_flight)."""

    # --- the repair hooks (RepairSteps) ---
    checked_generation: int | None = None
    """The spec generation whose Job or webhook was found allowed (checked once per
    generation while Pending, RepairSteps.refuse_untrusted)."""
    webhook_answer: WebhookAnswer | None = None
    """The webhook's last answer (RepairSteps.run_hooks). A fresh process asks
    again with poll=true."""
    job_refused: JobState | None = None
    """The Job the API server refused to create (RepairSteps.run_hooks), decided on as
    a failed attempt; a fresh process tries to create it again."""
    canary_refused: CanaryState | None = None
    """The canary pod that could not be created (not allowed, or refused by the API
    server; RepairSteps.run_hooks), decided on as a failed canary; a fresh process
    tries to create it again."""

    # --- stopping (the daemon and the deletion) ---
    guard: PassGuard = field(default_factory=PassGuard)
    """The repair's passes and its deletion, one at a time: the daemon sets the one
    in the repair's kopf memo (pass_guard), shared with the deletion handler."""
    stopped: kopf.DaemonStopped | None = None
    """The daemon's stop flag (set on deletion and on the operator's shutdown)."""

    def __post_init__(self) -> None:
        self.node_name = self.body["spec"]["nodeName"]
        self.status = parse_status(self.body.get("status"))
        self.written = dict(self.body.get("status") or {}) or None
        self.written_at = datetime.min.replace(tzinfo=UTC)

    def stopping(self) -> bool:
        """The repair is being deleted or the daemon stopped: send nothing more."""
        return self.guard.stopping or bool(self.stopped)

    def node(self, nodes_by_name: kopf.Index[str, Any]) -> dict[str, Any] | None:
        """The node from the index, unless our own patch is newer than what it shows."""
        seen = one(nodes_by_name.get(self.node_name))
        if seen is None:
            self.patched_node = None  # deleted: our last patch describes nothing any more
            return None
        if self.patched_node is not None:
            before, patched = self.patched_node
            if seen["metadata"]["resourceVersion"] == before:
                return patched
            self.patched_node = None
        return seen  # type: ignore[no-any-return]


def parse_status(raw: Mapping[str, Any] | None) -> NodeRepairStatus:
    try:
        return NodeRepairStatus.model_validate(dict(raw or {}))
    except ValidationError:
        return NodeRepairStatus()  # unreadable status: start over, idempotently
