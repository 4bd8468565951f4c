"""Drives each NodeRepair: a kopf daemon per repair observes (indexes), decides
(pitstop.repair.drain) and acts (pitstop.cluster.kube), then sleeps until a watch event about its
node or the next deadline. Deleting a repair gives the node back (finalizer).

The driver never sleeps inside a step and never lists: it reacts to the events
the indexes already receive. What it remembers between passes (evictions sent,
refusals and their backoff) is only an optimisation; after a restart it starts
from the cluster again and every action is idempotent (invariant 6)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from pydantic import ValidationError

from pitstop import constants, metrics
from pitstop.cluster import nodes
from pitstop.cluster.indexes import CAPACITY, UNDER_REPAIR, WAKERS, nap, one, slim_node
from pitstop.cluster.kube import ApiError, Eviction, Gone, Kube, merge_patch
from pitstop.conditions import set_condition
from pitstop.instances import contract
from pitstop.models import (
    FINAL_PHASES,
    NodeRepairSpec,
    NodeRepairStatus,
    OnFailure,
    Phase,
    RepairStrategy,
)
from pitstop.pool import daemon as pool_daemon
from pitstop.repair import drain, flow, hooks

C = constants
STATUS_COALESCE = timedelta(milliseconds=250)
"""Counter-only status changes are written at most this often (phase and
condition changes are written at once)."""
RESYNC = 60.0
"""Re-check even without events: a safety net for a silent watch."""
PDB_REFRESH = timedelta(seconds=5)


def backoff(attempt: int) -> timedelta:
    """Retry delay after the n-th refused eviction: 0.5 s doubling to 5 s."""
    return timedelta(seconds=min(0.5 * 2 ** (attempt - 1), 5.0))


class Driver:
    """The state of one repair's daemon between passes."""

    def __init__(self, name: str, body: kopf.Body, kube: Kube, logger: kopf.Logger):
        self.name = name
        self.body = body
        self.kube = kube
        self.logger = logger
        self.node_name: str = body["spec"]["nodeName"]
        self.status = _parse_status(body.get("status"))
        self.written: dict[str, Any] | None = dict(body.get("status") or {}) or None
        self.written_at = datetime.min.replace(tzinfo=UTC)
        self.patched_node: tuple[str | None, dict[str, Any]] | None = None
        self.sent: set[tuple[str, str]] = set()
        """(action, pod) already done in this process: the indexes lag behind our writes."""
        self.blocked: dict[str, drain.Blocked] = {}
        self.refusals: dict[str, int] = {}
        self.posted: set[tuple[str, str]] = set()
        self.pdbs: tuple[datetime, tuple[str, ...]] | None = None
        self.webhook_answer: flow.WebhookAnswer | None = None
        self.job_refused: flow.JobState | None = None
        self.marked_draining: set[str] = set()
        self.marked_closed: set[tuple[str, str]] = set()

    # --- observe ---

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

    def observe_instances(
        self, pods_by_node: kopf.Index[str, Any], endpoints_by_pod: kopf.Index[str, Any]
    ) -> list[contract.Instance]:
        return [
            contract.observe(pod, endpoints_by_pod.get(contract.key(pod)))
            for pod in list(pods_by_node.get(self.node_name, ()))
            if contract.is_instance(pod)
        ]

    # --- one pass ---

    async def step(
        self,
        now: datetime,
        pods_by_node: kopf.Index[str, Any],
        endpoints_by_pod: kopf.Index[str, Any],
        nodes_by_name: kopf.Index[str, Any],
        repairs_by_node: kopf.Index[str, Any],
        policies_by_name: kopf.Index[str, Any],
    ) -> tuple[bool, datetime | None]:
        """Moves the repair as far as it can now. Returns (again, wake_at): `again`
        asks for an immediate next pass (our own node write is already known)."""
        try:
            spec = NodeRepairSpec.model_validate(self.body.get("spec") or {})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            await self.fail_invalid(now, f"spec.{where}: {first['msg']}")
            return False, None
        if self.name not in {r["name"] for r in repairs_by_node.get(self.node_name, ())}:
            raise Gone(f"NodeRepair {self.name} is gone")
        finalizers = self.body.get("metadata", {}).get("finalizers") or []
        if self.status.phase in (None, Phase.PENDING) and C.FINALIZER not in finalizers:
            # Nothing is touched before the finalizer is on: a repair deleted in that
            # window would vanish without its deletion handler giving the node back.
            return False, now + timedelta(seconds=1)
        node = self.node(nodes_by_name)
        found = self.observe_instances(pods_by_node, endpoints_by_pod)
        self.forget_sent(found)
        waiting_for = None
        if self.status.phase in (None, Phase.PENDING) and not spec.dry_run:
            created = self.body.get("metadata", {}).get("creationTimestamp") or ""
            waiting_for = await pool_daemon.ADMISSION.check(
                self.name, self.node_name, created, nodes_by_name, repairs_by_node, policies_by_name
            )
        obs = drain.Observation(
            now=now,
            name=self.name,
            generation=self.body.get("metadata", {}).get("generation"),
            spec=spec,
            status=self.status,
            node=node,
            holder_active=self.holder_active(node, repairs_by_node),
            instances=found,
            blocked=self.blocked,
            waiting_for=waiting_for,
            blocking_pdbs=await self.blocking_pdbs(now, pods_by_node) if spec.dry_run else (),
            repaired_mark=(self.body.get("metadata", {}).get("annotations") or {}).get(
                C.ANNOTATION_REPAIRED
            ),
            job=await self.current_job(spec),
            webhook=self.webhook_answer,
        )
        d = drain.decide(obs)
        again = False

        if d.take_lock and node is not None:
            UNDER_REPAIR.add(self.node_name)
            known = self.status.node.was_unschedulable if self.status.node else None
            patch = nodes.lock_and_cordon(node, self.name, known)
            again = await self.patch_node(node, patch)
            if not again:
                return True, None  # 409: someone else wrote; decide again on fresh state
        elif (
            d.recordon and node is not None and not await self.patch_node(node, nodes.cordon(node))
        ):
            return True, None
        if d.status.phase not in FINAL_PHASES and nodes.lock_holder(node or {}) == self.name:
            UNDER_REPAIR.add(self.node_name)

        wake_at = await self.write_status(d.status, now, d.wake_at, d.passed)
        self.post(d.events, node)
        await self.act(d, now, spec)
        again = await self.run_hooks(d, spec) or again
        if d.release and d.status.phase == Phase.FAILED:
            await self.give_back_after_failure(now, pods_by_node)
        elif d.release:  # verified: give the node back; the next pass records it
            await give_back(self.kube, self.node_name, self.name, pods_by_node, self.logger)
            self.patched_node = None
            again = True
        if d.status.phase in drain.DRAIN_PHASES:
            metrics.INFLIGHT_TASKS.labels(self.node_name).set(sum(i.tasks.count for i in found))
        else:
            forget_gauge(self.node_name)
        return again, wake_at

    async def current_job(self, spec: NodeRepairSpec) -> flow.JobState | None:
        """The current attempt's Job, read while one may be running (Jobs live in the
        operator's namespace, outside the cluster-wide watches)."""
        rs = self.status.repair
        if (
            self.status.phase != Phase.REPAIRING
            or spec.repair.strategy != RepairStrategy.JOB
            or rs is None
            or rs.job_name is None
            or rs.next_attempt_time is not None
        ):
            return None
        if self.job_refused is not None and self.job_refused.name == rs.job_name:
            return self.job_refused
        return await hooks.read_job(self.kube, rs.job_name)

    async def run_hooks(self, d: drain.Decision, spec: NodeRepairSpec) -> bool:
        """Job and webhook actions; True when the outcome is known at once."""
        if d.delete_job:
            await hooks.delete_job(self.kube, d.delete_job)
        if d.create_job:
            refused = await hooks.create_job(self.kube, self.body, spec, d.create_job)
            if refused is not None:
                self.job_refused = refused
                return True  # decide on the refusal right away: the attempt failed
        if d.call_webhook:
            attempt, poll = d.call_webhook
            answer = await hooks.call_webhook(self.kube, self.body, spec, attempt, poll)
            self.webhook_answer = dataclasses.replace(answer, at=datetime.now(UTC))
            return True  # decide on the answer right away
        return False

    def holder_active(
        self, node: Mapping[str, Any] | None, repairs_by_node: kopf.Index[str, Any]
    ) -> bool:
        holder = nodes.lock_holder(node or {})
        if holder is None or holder == self.name:
            return False
        for repair in repairs_by_node.get(self.node_name, ()):
            if repair["name"] == holder:
                # One being deleted still holds the node until its handler released it.
                return repair["phase"] not in FINAL_PHASES or repair["deleting"]
        # The holder is gone, or ended (a Failed repair keeps its node cordoned): this
        # repair takes the lock over, and with it the record of the prior schedulability.
        return False

    async def patch_node(self, node: Mapping[str, Any], patch: dict[str, Any]) -> bool:
        try:
            answer = await self.kube.patch_node(self.node_name, patch)
        except ApiError as e:
            if e.status == 409:
                fresh = await self.kube.get_node(self.node_name)
                self.patched_node = (node["metadata"]["resourceVersion"], fresh) if fresh else None
                return False
            raise
        self.patched_node = (node["metadata"]["resourceVersion"], slim_node(answer))
        return True

    async def act(self, d: drain.Decision, now: datetime, spec: NodeRepairSpec) -> None:
        """Pod actions, concurrently: drain signal, deregistration, evictions. What
        succeeded is remembered (the indexes lag behind our writes); what failed is
        tried again on the next pass."""
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        writes: list[tuple[tuple[str, str], Any]] = []
        for key in d.mark_draining:
            if ("drain", key) not in self.sent:
                patch = {"metadata": {"annotations": {C.ANNOTATION_DRAINING: stamp}}}
                writes.append((("drain", key), self.kube.patch_pod(key, patch)))
        for key in d.deregister:
            if ("deregister", key) not in self.sent:
                call = self.kube.set_pod_condition(key, C.CONDITION_SERVING, "False", "NodeRepair")
                writes.append((("deregister", key), call))
        evictions = [k for k in d.evict if ("evict", k) not in self.sent]
        grace = spec.drain.grace_period_seconds
        results = await asyncio.gather(
            *(self._ignore_gone(call) for _, call in writes),
            *(self.kube.evict(k, grace) for k in evictions),
            return_exceptions=True,
        )
        failure: BaseException | None = None
        for (done, _), result in zip(writes, results, strict=False):
            if isinstance(result, BaseException):
                failure = failure or result
            else:
                self.sent.add(done)
        for outcome in results[len(writes) :]:
            assert isinstance(outcome, Eviction)
            self.record(outcome, now)
        if failure is not None:
            raise failure

    def forget_sent(self, found: list[contract.Instance]) -> None:
        """A mark someone removed mid-repair (the drain signal, a closed gate) must be
        set again: forget having sent it once the index shows it missing."""
        for i in found:
            if not i.draining and ("drain", i.key) in self.sent and self._seen_marked(i.key):
                self.sent.discard(("drain", i.key))
            if i.gated and i.serving != "False" and ("deregister", i.key) in self.marked_closed:
                self.sent.discard(("deregister", i.key))
        self.marked_closed = {("deregister", i.key) for i in found if i.serving == "False"}
        self.marked_draining = {i.key for i in found if i.draining}

    def _seen_marked(self, key: str) -> bool:
        return key in self.marked_draining

    def record(self, outcome: Eviction, now: datetime) -> None:
        metrics.EVICTIONS.labels(outcome.result).inc()
        if outcome.result in ("evicted", "gone"):
            self.sent.add(("evict", outcome.pod))
            self.blocked.pop(outcome.pod, None)
            return
        attempt = self.refusals.get(outcome.pod, 0) + 1
        self.refusals[outcome.pod] = attempt
        message = outcome.message
        if outcome.blocking_pdbs:
            message = f"eviction of {outcome.pod} blocked by {', '.join(outcome.blocking_pdbs)}"
        self.blocked[outcome.pod] = drain.Blocked(
            retry_at=now + backoff(attempt), pdbs=outcome.blocking_pdbs, message=message
        )
        self.post([drain.Event("Warning", C.REASON_EVICTION_BLOCKED, message)], None)
        WAKERS.wake(self.node_name)  # come back for the retry time computed by decide()

    async def _ignore_gone(self, call: Any) -> None:
        try:
            await call
        except ApiError as e:
            if e.status != 404:
                raise

    async def write_status(
        self,
        status: NodeRepairStatus,
        now: datetime,
        wake_at: datetime | None,
        passed: Sequence[Phase] = (),
    ) -> datetime | None:
        wire = status.wire()
        if wire == self.written:
            return wake_at
        significant = _shape(wire) != _shape(self.written or {})
        if not significant and now - self.written_at < STATUS_COALESCE:
            due = self.written_at + STATUS_COALESCE  # counters only: write a bit later
            return due if wake_at is None else min(wake_at, due)
        try:
            await self.kube.patch_status(
                C.NODEREPAIR_PLURAL, self.name, merge_patch(self.written, wire)
            )
        except ApiError as e:
            if e.status == 404:
                raise Gone(f"NodeRepair {self.name} is gone") from e
            raise
        old_phase = self.status.phase
        if old_phase != status.phase and old_phase is not None and self.status.phase_start_time:
            spent = (now - self.status.phase_start_time).total_seconds()
            metrics.PHASE_DURATION.labels(old_phase.value).observe(spent)
            # Phases gone through within this one pass took no time of their own.
            for phase in passed[:-1]:
                if phase != old_phase:
                    metrics.PHASE_DURATION.labels(phase.value).observe(0.0)
        self.status, self.written, self.written_at = status, wire, now
        record_phase(self.name, status.phase)
        return wake_at

    def post(self, events: list[drain.Event], node: Mapping[str, Any] | None) -> None:
        for e in events:
            if (e.reason, e.message) in self.posted:
                continue
            self.posted.add((e.reason, e.message))
            kopf.event(self.body, type=e.type, reason=e.reason, message=e.message)
            if e.on_node and node is not None:
                kopf.event(
                    cast(kopf.Body, node),
                    type=e.type,
                    reason=e.reason,
                    message=f"{self.name}: {e.message}",
                )

    async def blocking_pdbs(
        self, now: datetime, pods_by_node: kopf.Index[str, Any]
    ) -> tuple[str, ...]:
        """Dry run only: PDBs of the node's instances that allow no disruption now
        (namespaced reads, refreshed at most every few seconds)."""
        if self.pdbs is not None and now - self.pdbs[0] < PDB_REFRESH:
            return self.pdbs[1]
        pods = [p for p in pods_by_node.get(self.node_name, ()) if contract.is_instance(p)]
        pdbs = []
        for ns in sorted({p["metadata"]["namespace"] for p in pods}):
            pdbs.extend(await self.kube.list_pdbs(ns))
        blocking = contract.blocking_pdbs(pdbs, pods)
        self.pdbs = (now, tuple(blocking))
        return self.pdbs[1]

    async def fail_invalid(self, now: datetime, message: str) -> None:
        status = self.status.model_copy(deep=True)
        status.phase, status.completion_time = Phase.FAILED, now
        status.message = f"InvalidSpec: {message}"
        await self.write_status(status, now, None)
        self.post([drain.Event("Warning", "InvalidSpec", message)], None)

    async def finish_failure(self, now: datetime, pods_by_node: kopf.Index[str, Any]) -> None:
        """A Failed repair with onFailure: Uncordon that still holds its node (the
        operator died between the two writes, or the release failed): release it.
        Safe to repeat: give_back does nothing unless the lock is ours."""
        spec = self.body.get("spec") or {}
        if self.status.phase == Phase.FAILED and spec.get("onFailure") == OnFailure.UNCORDON:
            await self.give_back_after_failure(now, pods_by_node)

    async def give_back_after_failure(
        self, now: datetime, pods_by_node: kopf.Index[str, Any]
    ) -> None:
        if await give_back(self.kube, self.node_name, self.name, pods_by_node, self.logger):
            status = self.status.model_copy(deep=True)
            status.conditions = set_condition(
                status.conditions,
                C.COND_UNCORDONED,
                True,
                "OnFailureUncordon",
                "node returned to service after the failure (onFailure: Uncordon)",
                now,
                status.observed_generation,
            )
            await self.write_status(status, now, None)


def forget_gauge(node: str) -> None:
    with contextlib.suppress(KeyError):  # never set for this node
        metrics.INFLIGHT_TASKS.remove(node)


PHASES: dict[str, Phase] = {}
"""Phase of every repair this process knows (for the pitstop_repairs gauge)."""


def record_phase(repair: str, phase: Phase | None) -> None:
    """Keeps pitstop_repairs{phase} equal to the count of repairs in each phase."""
    if phase is None:
        PHASES.pop(repair, None)
    else:
        PHASES[repair] = phase
    for p in Phase:
        metrics.REPAIRS.labels(p.value).set(sum(1 for v in PHASES.values() if v == p))


def _parse_status(raw: Mapping[str, Any] | None) -> NodeRepairStatus:
    try:
        return NodeRepairStatus.model_validate(dict(raw or {}))
    except ValidationError:
        return NodeRepairStatus()  # unreadable status: start over, idempotently


def _shape(wire: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes a status change significant: phase, conditions, message."""
    conds = tuple(
        (c.get("type"), c.get("status"), c.get("reason")) for c in wire.get("conditions") or []
    )
    return wire.get("phase"), conds, wire.get("repair"), wire.get("completionTime")


async def give_back(
    kube: Kube,
    node_name: str,
    repair: str,
    pods_by_node: kopf.Index[str, Any],
    logger: kopf.Logger,
) -> bool:
    """Undo what a repair did to its node, if it holds the node: remove the drain
    signal and reopen the serving gate of the instances still there, then remove the
    taint and the lock and uncordon unless the node was cordoned before."""
    node = await kube.get_node(node_name)
    if node is None or nodes.lock_holder(node) != repair:
        UNDER_REPAIR.discard(node_name)
        return False
    jobs = []
    for pod in list(pods_by_node.get(node_name, ())):
        if contract.is_terminating(pod) or not contract.is_instance(pod):
            continue
        key = contract.key(pod)
        if C.ANNOTATION_DRAINING in pod["metadata"]["annotations"]:
            jobs.append(
                kube.patch_pod(key, {"metadata": {"annotations": {C.ANNOTATION_DRAINING: None}}})
            )
        if contract.has_serving_gate(pod) and contract.serving_status(pod) != "True":
            jobs.append(kube.set_pod_condition(key, C.CONDITION_SERVING, "True", "NodeRepairEnded"))
    for result in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(result, ApiError) and result.status != 404:
            raise result
        if isinstance(result, BaseException) and not isinstance(result, ApiError):
            raise result
    UNDER_REPAIR.discard(node_name)
    for _ in range(5):
        try:
            await kube.patch_node(node_name, nodes.release(node))
            logger.info(f"Node {node_name} given back.")
            return True
        except ApiError as e:
            if e.status != 409:
                raise
            node = await kube.get_node(node_name)
            if node is None or nodes.lock_holder(node) != repair:
                return False
    raise kopf.TemporaryError(f"node {node_name} kept changing; retrying the release", delay=1)


# --- kopf handlers ---


@kopf.daemon(  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
    C.GROUP, C.VERSION, C.NODEREPAIR_PLURAL, cancellation_timeout=5.0, backoff=2.0
)
async def drive(
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    pods_by_node: kopf.Index[str, Any],
    endpoints_by_pod: kopf.Index[str, Any],
    nodes_by_name: kopf.Index[str, Any],
    repairs_by_node: kopf.Index[str, Any],
    policies_by_name: kopf.Index[str, Any],
    **_: Any,
) -> None:
    driver = Driver(name, body, memo["kube"], logger)
    if driver.status.phase in FINAL_PHASES:
        record_phase(name, driver.status.phase)
        await driver.finish_failure(datetime.now(UTC), pods_by_node)
        return
    waker = WAKERS.register(driver.node_name)
    CAPACITY.register(waker)  # room freed anywhere in the pool wakes it too
    try:
        while not stopped and not body.get("metadata", {}).get("deletionTimestamp"):
            waker.clear()
            now = datetime.now(UTC)
            try:
                again, wake_at = await driver.step(
                    now,
                    pods_by_node,
                    endpoints_by_pod,
                    nodes_by_name,
                    repairs_by_node,
                    policies_by_name,
                )
            except Gone:
                # Deleted before kopf put its finalizer on it, so kopf will neither stop
                # this daemon nor run the deletion handler: give the node back here.
                await give_back(memo["kube"], driver.node_name, name, pods_by_node, logger)
                record_phase(name, None)
                return
            except (ApiError, OSError, TimeoutError) as e:
                logger.warning(f"Pass failed, retrying in 1s: {e}")
                again, wake_at = False, now + timedelta(seconds=1)
            if driver.status.phase in FINAL_PHASES:
                await driver.finish_failure(datetime.now(UTC), pods_by_node)
                return
            if driver.status.phase not in (None, Phase.PENDING):  # admitted: no more waiting
                CAPACITY.unregister(waker)
            if again:
                continue
            timeout = RESYNC
            if wake_at is not None:
                timeout = min(RESYNC, max(0.0, (wake_at - datetime.now(UTC)).total_seconds()))
            await nap(waker, stopped, timeout)
    finally:
        WAKERS.unregister(driver.node_name, waker)
        CAPACITY.unregister(waker)
        if driver.status.phase in FINAL_PHASES:
            pool_daemon.ADMISSION.release(name)


@kopf.on.delete(C.GROUP, C.VERSION, C.NODEREPAIR_PLURAL)  # type: ignore[arg-type]  # (index kwargs)
async def abort(
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    pods_by_node: kopf.Index[str, Any],
    **_: Any,
) -> None:
    """Deleting a repair undoes what it did (finalizer): phase Aborted while it runs."""
    kube: Kube = memo["kube"]
    node_name = spec.get("nodeName")
    phase = status.get("phase")
    if phase != Phase.SUCCEEDED:
        aborted = _parse_status(status).model_copy(deep=True)
        aborted.phase = Phase.ABORTED
        aborted.message = f"Aborted: giving {node_name} back"
        aborted.completion_time = aborted.completion_time or datetime.now(UTC)
        try:
            await kube.patch_status(C.NODEREPAIR_PLURAL, name, aborted.wire())
        except ApiError as e:
            if e.status != 404:
                raise
    job = (status.get("repair") or {}).get("jobName")
    if job and phase == Phase.REPAIRING:
        await hooks.delete_job(kube, job)  # a repair in progress stops with its repair
    if node_name and await give_back(kube, node_name, name, pods_by_node, logger):
        kopf.event(
            body,
            type="Normal",
            reason=C.REASON_ABORTED,
            message=f"Repair deleted; {node_name} given back",
        )
    record_phase(name, None)
    pool_daemon.ADMISSION.release(name)
    WAKERS.wake(node_name)
