"""pitstop as the external remediator of NodeHealthCheck and MachineHealthCheck:
a kopf daemon per NodeRepairRemediation makes its NodeRepair and mirrors the
repair's progress into the conditions the checker reads; deleting the object
deletes the NodeRepair and waits until its finalizer has given the node back.

The link is a label, not an owner reference: the NodeRepair is cluster-scoped and
the remediation namespaced, and Kubernetes does not let a namespaced object own a
cluster-scoped one (docs/design.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from pitstop import constants as C
from pitstop import logs
from pitstop.cluster.indexes import Wakers, nap, on_the_loop, one
from pitstop.cluster.kube import MERGE, ApiError, Kube, merge_patch
from pitstop.models import NodeRepairRemediationStatus, Phase
from pitstop.remediation import contract
from pitstop.remediation.contract import Outcome

RESYNC = 30.0
"""A pass at least this often (seconds): a Machine that gained its nodeRef, a
namespace the admin just labelled."""
GONE_WAIT = 10.0
"""How long (seconds) the deletion handler waits in one call for the NodeRepair's
finalizer; then it asks kopf to call it again."""
NODEREPAIRS = f"/apis/{C.GROUP}/{C.VERSION}/{C.NODEREPAIR_PLURAL}"


class Passes:
    """One pass or the deletion at a time per remediation object: kopf runs the
    deletion handler while it stops the daemon, and a pass in flight could still
    create the NodeRepair after the deletion found none, leaving a repair nobody
    deletes. The deletion takes the lock (waiting for the pass) and marks the
    object stopping; a pass that gets the lock after that does nothing."""

    def __init__(self) -> None:
        self.locks: dict[str, asyncio.Lock] = {}
        self.stopping: set[str] = set()

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())

    def forget(self, uid: str) -> None:
        self.locks.pop(uid, None)
        self.stopping.discard(uid)


@dataclass
class Remediations:
    """What the remediation daemons and their deletions share: one per operator run,
    in kopf's memo (`remediations(memo)`; pitstop.registry makes it)."""

    wakers: Wakers = field(default_factory=Wakers)
    """Remediation uid → its daemon's wake-up (woken when its NodeRepair moves)."""
    passes: Passes = field(default_factory=Passes)
    """Each remediation object's one-at-a-time lock and stopping mark."""


MEMO_REMEDIATIONS = "remediations"
"""Key of the run's Remediations in kopf's operator memo (and so in every object's)."""


def remediations(memo: Mapping[str, Any]) -> Remediations:
    """This operator run's Remediations, from any handler's memo."""
    return cast(Remediations, memo[MEMO_REMEDIATIONS])


@on_the_loop(
    kopf.index(
        C.GROUP, C.VERSION, C.NODEREPAIR_PLURAL, labels={C.LABEL_REMEDIATION_UID: kopf.PRESENT}
    )
)
def repairs_by_remediation(
    body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[str, contract.RepairView]:
    return {str(labels[C.LABEL_REMEDIATION_UID]): contract.repair_view(body)}


@on_the_loop(
    kopf.on.event(
        C.GROUP, C.VERSION, C.NODEREPAIR_PLURAL, labels={C.LABEL_REMEDIATION_UID: kopf.PRESENT}
    )
)
def wake_remediation(labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """Its NodeRepair moved (or went away): the remediation reports it at once."""
    remediations(memo).wakers.wake(str(labels[C.LABEL_REMEDIATION_UID]))


class Remediator:
    """One remediation object: one pass reads, acts at most once, reports."""

    def __init__(self, body: kopf.Body, kube: Kube, logger: kopf.Logger) -> None:
        self.body = body
        self.kube = kube
        self.logger = logger
        meta = body.get("metadata", {})
        self.namespace = str(meta.get("namespace"))
        self.name = str(meta.get("name"))
        self.uid = str(meta.get("uid"))
        self.repair = contract.repair_name(self.namespace, self.name, self.uid)
        self.written: dict[str, Any] | None = None
        self.told: set[str] = set()

    def old_status(self) -> NodeRepairRemediationStatus:
        """What was last written: this process's own write (the body may lag it)."""
        written = self.written if self.written is not None else self.body.get("status")
        return NodeRepairRemediationStatus.model_validate(written or {})

    async def step(
        self,
        repairs: kopf.Index[str, Any],
        namespace_labels: kopf.Index[str, Any],
        now: datetime,
    ) -> None:
        old = self.old_status()
        view: contract.RepairView | None = one(repairs.get(self.uid))
        if view is None and old.node_repair:
            view = await self.read_repair()  # the index may lag our own create
        annotations = self.body.get("metadata", {}).get("annotations") or {}
        succeeded = view is not None and view.phase == Phase.SUCCEEDED
        if C.ANNOTATION_NHC_TIMED_OUT in annotations and not succeeded:
            # Stays TimedOut while the repair it stopped is aborted and deleted (it
            # read Aborted, then TimedOut again, and "not started" once it was gone).
            if view is not None and not view.deleting and not contract.finished(view):
                await self.delete_repair()
            made = view.name if view is not None else old.node_repair
            message = "NodeHealthCheck moved on to its next remediator: " + (
                f"NodeRepair {made} stopped, its node given back" if made else "not started"
            )
            await self.report(contract.refused(C.REASON_TIMED_OUT, message), now)
            return
        if view is None and old.node_repair:
            message = f"NodeRepair {old.node_repair} was deleted: its node was given back"
            await self.report(contract.refused(C.REASON_NODE_REPAIR_DELETED, message), now)
            return
        if view is None:
            await self.start(old, namespace_labels, now)
            return
        await self.report(contract.mirrored(view), now)

    async def start(
        self,
        old: NodeRepairRemediationStatus,
        namespace_labels: kopf.Index[str, Any],
        now: datetime,
    ) -> None:
        """Make the NodeRepair, once its namespace is allowed and its node known."""
        if not contract.namespace_allowed(one(namespace_labels.get(self.namespace))):
            message = (
                f"namespace {self.namespace} is not allowed to repair nodes (the platform "
                f"admin labels it {C.LABEL_REMEDIATION_ALLOWED}=true)"
            )
            await self.report(contract.refused(C.REASON_NAMESPACE_NOT_ALLOWED, message), now)
            return
        node = await self.node()
        if node is None:
            message = f"no node for {self.namespace}/{self.name}: " + (
                "its Machine has no status.nodeRef"
                if contract.target(self.body).machine
                else "the object names none"
            )
            await self.report(contract.refused(C.REASON_NO_NODE, message), now)
            return
        body = contract.node_repair(self.body, node)
        try:
            await self.kube.request("POST", NODEREPAIRS, body)
        except ApiError as e:
            if e.status != 409:  # 409: made before a restart, by this very object
                self.post("Warning", "NodeRepairCreateFailed", f"{node}: {e.message}")
                raise
        self.post("Normal", C.REASON_NODE_REPAIR_CREATED, f"NodeRepair {self.repair} for {node}")
        view = contract.RepairView(self.repair, None, None)
        await self.report(contract.mirrored(view), now, node=node, repair=self.repair)

    async def node(self) -> str | None:
        found = contract.target(self.body)
        if found.machine is None:
            return found.node
        api_version, namespace, name = found.machine
        path = f"/apis/{api_version}/namespaces/{namespace}/machines/{name}"
        try:
            return contract.machine_node(await self.kube.request("GET", path))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def read_repair(self) -> contract.RepairView | None:
        try:
            return contract.repair_view(await self.kube.request("GET", self.repair_path()))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def delete_repair(self) -> None:
        try:
            await self.kube.request("DELETE", self.repair_path())
        except ApiError as e:
            if e.status != 404:
                raise

    def repair_path(self) -> str:
        return f"{NODEREPAIRS}/{self.repair}"

    async def report(
        self, outcome: Outcome, now: datetime, node: str | None = None, repair: str | None = None
    ) -> None:
        old = self.old_status()
        generation = self.body.get("metadata", {}).get("generation")
        new = contract.status(outcome, old, now, generation, node, repair).wire()
        if new == (self.written or old.wire()):
            return
        if outcome.succeeded[0] != "Unknown":
            kind = "Normal" if outcome.succeeded[0] == "True" else "Warning"
            self.post(kind, outcome.succeeded[1], outcome.message)
        patch = merge_patch(self.written or dict(self.body.get("status") or {}), new)
        path = (
            f"/apis/{C.GROUP}/{C.VERSION}/namespaces/{self.namespace}/"
            f"{C.REMEDIATION_PLURAL}/{self.name}/status"
        )
        await self.kube.request("PATCH", path, {"status": patch}, MERGE)
        self.written = new

    def post(self, type_: str, reason: str, message: str) -> None:
        """An Event on the remediation object, once per reason and message."""
        if f"{reason}:{message}" in self.told:
            return
        self.told.add(f"{reason}:{message}")
        kopf.event(self.body, type=type_, reason=reason, message=message)
        logs.event("NodeRepairRemediation", f"{self.namespace}/{self.name}", type_, reason, message)


@kopf.daemon(  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
    C.GROUP, C.VERSION, C.REMEDIATION_PLURAL, cancellation_timeout=5.0, backoff=2.0
)
async def remediate(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    repairs_by_remediation: kopf.Index[str, Any],
    namespace_labels: kopf.Index[str, Any],
    **_: Any,
) -> None:
    remediator = Remediator(body, memo["kube"], logger)
    run = remediations(memo)
    wakers, passes = run.wakers, run.passes
    waker = wakers.register(remediator.uid)
    try:
        while not stopped and not body.get("metadata", {}).get("deletionTimestamp"):
            waker.clear()
            try:
                async with passes.lock(remediator.uid):
                    if remediator.uid in passes.stopping:
                        return
                    await remediator.step(
                        repairs_by_remediation, namespace_labels, datetime.now(UTC)
                    )
            except (ApiError, OSError, TimeoutError) as e:
                logger.warning(f"Pass failed, retrying in 2s: {e}")
                await nap(waker, stopped, 2.0)
                continue
            await nap(waker, stopped, RESYNC)
    finally:
        wakers.unregister(remediator.uid, waker)


@kopf.on.delete(C.GROUP, C.VERSION, C.REMEDIATION_PLURAL)
async def give_back(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """The checker deleted the object (the node is healthy, or it moved on): delete
    the NodeRepair and hold this object's finalizer until the NodeRepair's own
    finalizer has given the node back, as deleting a NodeRepair does."""
    remediator = Remediator(body, memo["kube"], logger)
    passes = remediations(memo).passes
    async with passes.lock(remediator.uid):  # the pass in flight ends first
        passes.stopping.add(remediator.uid)
    await remediator.delete_repair()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GONE_WAIT
    while loop.time() < deadline:
        if await remediator.read_repair() is None:
            logger.info(f"NodeRepair {remediator.repair} is gone; the node was given back.")
            passes.forget(remediator.uid)
            return
        await asyncio.sleep(0.5)
    raise kopf.TemporaryError(f"NodeRepair {remediator.repair} is still giving its node back", 1)
