"""What the daemon of one NodeRepair remembers between passes, and the node as it
last saw it. Only an optimisation: after a restart everything is read again
from the cluster (invariant 6)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from pitstop import constants
from pitstop.cluster.indexes import one
from pitstop.cluster.kube import Kube
from pitstop.instances import contract
from pitstop.instances.sources.poller import Target, TaskPoller
from pitstop.models import (
    NodeRepairStatus,
)
from pitstop.repair import drain, flow

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


class DriverState:
    """The state of one repair's daemon between passes; the step modules
    (report, act_node, act_pods, act_hooks) add what each step does with it."""

    def __init__(
        self,
        name: str,
        body: kopf.Body,
        kube: Kube,
        logger: kopf.Logger,
        poller: TaskPoller | None = None,
    ):
        self.name = name
        self.poller = poller
        """The operator's shared task-source poller (None: no profile is ever polled)."""
        self.marked_at: dict[str, tuple[str, datetime]] = {}
        """Each pod's pitstop.dev/draining value and when this process first saw it
        (trust rule)."""
        self.gate_closed_at: dict[str, tuple[datetime, datetime]] = {}
        """Each pod's closed serving gate: its lastTransitionTime and when this process
        first saw it closed (an instance's deregistration wait counts from the later)."""
        self.targets: list[Target] = []
        """What the poller would ask the node's instances, from the last observation."""
        self.body = body
        self.kube = kube
        self.logger = logger
        self.node_name: str = body["spec"]["nodeName"]
        self.status = parse_status(body.get("status"))
        self.written: dict[str, Any] | None = dict(body.get("status") or {}) or None
        self.written_at = datetime.min.replace(tzinfo=UTC)
        self.unconfirmed = False
        """A status write got no answer (it may have landed): read the status back
        before deciding again."""
        self.patched_node: tuple[str | None, dict[str, Any]] | None = None
        self.sent: set[tuple[str, str]] = set()
        """(action, pod) already done in this process: the indexes lag behind our writes."""
        self.blocked: dict[str, drain.Blocked] = {}
        self.refusals: dict[str, int] = {}
        self.posted: set[tuple[str, str]] = set()
        self.budgets: dict[str, contract.Budget] = {}
        """The PodDisruptionBudgets of the node's instances, from the last observation."""
        self.pdbs_of: dict[str, tuple[str, ...]] = {}
        """The budgets of each instance, from the last observation."""
        self.counted: set[str] = set()
        """Evicted instances a budget has been seen to count (in its disruptedPods)."""
        self.webhook_answer: flow.WebhookAnswer | None = None
        self.job_refused: flow.JobState | None = None
        self.marked_draining: set[str] = set()
        self.marked_closed: set[tuple[str, str]] = set()
        self.guard = PassGuard()
        """Shared with the deletion handler (the daemon sets the repair's own)."""
        self.stopped: kopf.DaemonStopped | None = None
        """The daemon's stop flag (set on deletion and on the operator's shutdown)."""

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
