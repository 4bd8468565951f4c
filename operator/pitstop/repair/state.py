"""What the daemon of one NodeRepair remembers between passes, and the node as it
last saw it. Only an optimisation: after a restart everything is read again
from the cluster (invariant 6)."""

from __future__ import annotations

from collections.abc import Mapping
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
        self.marked_at: dict[str, datetime] = {}
        """When this process first saw each pod carry pitstop.dev/draining (trust rule)."""
        self.targets: list[Target] = []
        """What the poller would ask the node's instances, from the last observation."""
        self.body = body
        self.kube = kube
        self.logger = logger
        self.node_name: str = body["spec"]["nodeName"]
        self.status = parse_status(body.get("status"))
        self.written: dict[str, Any] | None = dict(body.get("status") or {}) or None
        self.written_at = datetime.min.replace(tzinfo=UTC)
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
