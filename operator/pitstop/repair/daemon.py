"""Drives each NodeRepair: a kopf daemon per repair observes (indexes), decides
(pitstop.repair.machine) and acts (pitstop.cluster.kube), then sleeps until a watch
event about its node or the next deadline. Deleting a repair gives the node back
(finalizer).

The driver never sleeps inside a step and reacts to the events the indexes already
receive; it reads from the API server only what a lagging view must not decide
(the EndpointSlices that confirm a closed gate, the node's pods before the drain
ends). What it remembers between passes (evictions sent,
refusals and their backoff) is only an optimisation; after a restart it starts
from the cluster again and every action is idempotent (invariant 6)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from pitstop import constants, kstatus, metrics
from pitstop.cluster import nodes
from pitstop.cluster.indexes import Wakeups, nap, slim_node, wakeups
from pitstop.cluster.kube import ApiError, Gone, Kube, StatusChanged, guarded_status
from pitstop.instances.sources import daemon as sources_daemon
from pitstop.instances.sources.poller import TaskPoller
from pitstop.models import (
    FINAL_PHASES,
    NodeRepairSpec,
    Phase,
)
from pitstop.pool import daemon as pool_daemon
from pitstop.repair import drain, flow, hooks, machine, orphans
from pitstop.repair.act_hooks import RepairSteps
from pitstop.repair.act_node import NodeSteps, give_back
from pitstop.repair.act_pods import PodSteps
from pitstop.repair.flow import Observation
from pitstop.repair.observe import Observe
from pitstop.repair.report import Report, forget_gauge
from pitstop.repair.state import RepairState, parse_status, pass_guard

C = constants


RESYNC = 60.0
"""Re-check even without events: a safety net for a silent watch."""


class Driver:
    """One repair's daemon: one state (state.RepairState), and the steps of a pass
    that read and write it: observe (observe.Observe, from the indexes), decide
    (machine.decide, pure), act (act_node.NodeSteps, act_pods.PodSteps,
    act_hooks.RepairSteps) and report (report.Report)."""

    def __init__(
        self,
        name: str,
        body: kopf.Body,
        kube: Kube,
        logger: kopf.Logger,
        poller: TaskPoller | None = None,
        *,
        wake: Wakeups | None = None,
        pools: pool_daemon.Pools | None = None,
        phases: metrics.RepairPhases | None = None,
    ) -> None:
        # The operator run's shared state (pitstop.registry): the daemon passes the
        # run's, a test gets its own.
        wake = wake or Wakeups()
        self.state = st = RepairState(
            name, body, kube, logger, poller, wake, phases or metrics.RepairPhases()
        )
        self.pools = pools or pool_daemon.Pools.waking(wake)
        """The run's admission (and what it shares with the policy daemons)."""
        self.report = Report(st)
        self.observe = Observe(st)
        self.node_steps = NodeSteps(st, self.report)
        self.pod_steps = PodSteps(st, self.report)
        self.hook_steps = RepairSteps(st, self.report)

    async def step(
        self,
        now: datetime,
        pods_by_node: kopf.Index[str, Any],
        endpoints_by_pod: kopf.Index[str, Any],
        nodes_by_name: kopf.Index[str, Any],
        repairs_by_node: kopf.Index[str, Any],
        policies_by_name: kopf.Index[str, Any],
        profiles_by_name: kopf.Index[str, Any] | None = None,
        namespace_labels: kopf.Index[str, Any] | None = None,
        pdbs_by_namespace: kopf.Index[str, Any] | None = None,
    ) -> tuple[bool, datetime | None]:
        """Moves the repair as far as it can now. Returns (again, wake_at): `again`
        asks for an immediate next pass (our own node write is already known)."""
        st, report, pods = self.state, self.report, self.pod_steps
        if st.unconfirmed:
            await report.read_back()
        try:
            spec = NodeRepairSpec.model_validate(st.body.get("spec") or {})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            await report.fail_invalid(now, f"spec.{where}: {first['msg']}")
            return False, None
        if st.spec is None and st.status.phase is not None:
            # Known from its first pass on, before any write of ours (which a stuck
            # repair may never make): the past-deadline metric counts it after a restart.
            st.phases.record(st.name, st.status.phase, flow.phase_deadline(spec, st.status))
        st.spec = spec
        if await self.hook_steps.refuse_untrusted(now, spec):  # docs/security.md; nothing touched
            return False, None
        if st.name not in {r["name"] for r in repairs_by_node.get(st.node_name, ())}:
            raise Gone(f"NodeRepair {st.name} is gone")
        finalizers = st.body.get("metadata", {}).get("finalizers") or []
        if st.status.phase in (None, Phase.PENDING) and C.FINALIZER not in finalizers:
            # Nothing is touched before the finalizer is on: a repair deleted in that
            # window would vanish without its deletion handler giving the node back.
            return False, now + timedelta(seconds=1)
        node = st.node(nodes_by_name)
        found = self.observe.instances(
            now,
            pods_by_node,
            endpoints_by_pod,
            profiles_by_name,
            namespace_labels,
            pdbs_by_namespace,
        )
        found = await self.observe.confirm_deregistered(found)
        held = node is not None and nodes.lock_holder(node) == st.name
        draining = st.status.phase in (Phase.PENDING, *drain.DRAIN_PHASES)
        listed = await self.observe.listed(found) if held and draining else None
        pods.forget_sent(found)
        evicted, uncounted = pods.evictions_in_flight(found)
        waiting_for = None
        if st.status.phase in (None, Phase.PENDING) and not spec.dry_run:
            created = st.body.get("metadata", {}).get("creationTimestamp") or ""
            waiting_for = await self.pools.admission.check(
                st.name,
                st.node_name,
                created,
                nodes_by_name,
                repairs_by_node,
                policies_by_name,
                pods_by_node,
                require_room=spec.require_room,
            )
        # A Replace or External attempt is read (and started) before the decision; it
        # may record what it does in status first.
        remedy = await self.hook_steps.current_remedy(now, spec, lambda: ready_nodes(nodes_by_name))
        obs = Observation(
            now=now,
            name=st.name,
            generation=st.body.get("metadata", {}).get("generation"),
            spec=spec,
            status=st.status,
            node=node,
            holder_active=self.node_steps.holder_active(node, repairs_by_node),
            instances=found,
            listed=listed,
            blocked=st.blocked,
            budgets=st.budgets,
            evicted=evicted,
            uncounted=uncounted,
            taken_out=frozenset(k for a, k in st.sent if a in ("drain", "deregister")),
            waiting_for=waiting_for,
            blocking_pdbs=pods.blocking_pdbs(pods_by_node, pdbs_by_namespace)
            if spec.dry_run
            else (),
            repaired_mark=(st.body.get("metadata", {}).get("annotations") or {}).get(
                C.ANNOTATION_REPAIRED
            ),
            job=await self.hook_steps.current_job(spec),
            webhook=st.webhook_answer,
            remedy=remedy,
            uid=st.body.get("metadata", {}).get("uid") or "",
            canary=await self.hook_steps.current_canary(),
        )
        d = machine.decide(obs)
        if st.stopping():
            return False, None  # being deleted: the deletion handler undoes, nothing more
        self.observe.poll(d.status.phase)
        again = False

        if d.take_lock and node is not None:
            st.wake.under_repair.add(st.node_name)
            known = st.status.node.was_unschedulable if st.status.node else None
            again = await self.node_steps.patch_node(
                node, lambda n: nodes.lock_and_cordon(n, st.name, known)
            )
            if not again:
                return True, None  # the markers changed: decide again on the fresh node
        elif (
            d.recordon
            and node is not None
            and not await self.node_steps.patch_node(node, nodes.cordon)
        ):
            return True, None
        if d.status.phase not in FINAL_PHASES and nodes.lock_holder(node or {}) == st.name:
            st.wake.under_repair.add(st.node_name)

        try:
            wake_at = await report.write_status(d.status, now, d.wake_at, d.passed)
        except StatusChanged:
            return True, None  # decided from a status moved on (now read back): decide again
        report.post(d.events, node)
        again = await pods.act(d, now, spec) or again
        if st.stopping():
            return False, None
        again = await self.hook_steps.run_hooks(d, spec) or again
        if d.release and d.status.phase == Phase.FAILED:
            await self.node_steps.give_back_after_failure(now)
        elif d.release:  # verified: give the node back; the next pass records it
            released = await give_back(
                st.kube, st.node_name, st.name, st.logger, st.wake.under_repair, node
            )
            # The next pass sees the release at once, not the index's older view.
            before = (node or {}).get("metadata", {}).get("resourceVersion")
            st.patched_node = (before, slim_node(released)) if released else None
            again = True
        if d.status.phase in drain.DRAIN_PHASES:
            metrics.INFLIGHT_TASKS.labels(st.node_name).set(sum(i.tasks.count for i in found))
        else:
            forget_gauge(st.node_name)
        return again, wake_at


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
    profiles_by_name: kopf.Index[str, Any],
    namespace_labels: kopf.Index[str, Any],
    pdbs_by_namespace: kopf.Index[str, Any],
    **_: Any,
) -> None:
    wake, phases = wakeups(memo), metrics.repair_phases(memo)
    poller = memo.get(sources_daemon.MEMO_POLLER)
    driver = Driver(
        name,
        body,
        memo["kube"],
        logger,
        poller,
        wake=wake,
        pools=pool_daemon.pools(memo),
        phases=phases,
    )
    st = driver.state
    # Each pass holds the repair's guard: its deletion handler waits for the pass in
    # flight to end before it gives the node back (invariant 9).
    guard = st.guard = pass_guard(memo)
    st.stopped = stopped
    if st.status.phase in FINAL_PHASES:
        phases.record(name, st.status.phase)
        async with guard.lock:
            await driver.node_steps.finish_failure(datetime.now(UTC))
        return
    waker = wake.nodes.register(st.node_name)
    wake.capacity.register(waker)  # room freed anywhere in the pool wakes it too
    try:
        while not stopped and not body.get("metadata", {}).get("deletionTimestamp"):
            waker.clear()
            now = datetime.now(UTC)
            async with guard.lock:
                if st.stopping():
                    return
                try:
                    again, wake_at = await driver.step(
                        now,
                        pods_by_node,
                        endpoints_by_pod,
                        nodes_by_name,
                        repairs_by_node,
                        policies_by_name,
                        profiles_by_name,
                        namespace_labels,
                        pdbs_by_namespace,
                    )
                except Gone:
                    # Deleted without its finalizer (before kopf put it on, or force-
                    # deleted), so kopf will neither stop this daemon nor run the deletion
                    # handler: give the node back here, reported as the orphan sweep would
                    # (which may win).
                    node = st.node(nodes_by_name)
                    if await give_back(memo["kube"], st.node_name, name, logger, wake.under_repair):
                        orphans.report(node or bare_node(st.node_name), name, logger)
                    phases.record(name, None)
                    return
                except (ApiError, OSError, TimeoutError) as e:
                    logger.warning(f"Pass failed, retrying in 1s: {e}")
                    again, wake_at = False, now + timedelta(seconds=1)
                if st.status.phase in FINAL_PHASES:
                    await driver.node_steps.finish_failure(datetime.now(UTC))
                    return
            if st.status.phase not in (None, Phase.PENDING):  # admitted: no more waiting
                wake.capacity.unregister(waker)
            if again:
                continue
            timeout = RESYNC
            if wake_at is not None:
                timeout = min(RESYNC, max(0.0, (wake_at - datetime.now(UTC)).total_seconds()))
            await nap(waker, stopped, timeout)
    finally:
        driver.observe.poll(None)
        wake.nodes.unregister(st.node_name, waker)
        wake.capacity.unregister(waker)
        if st.status.phase in FINAL_PHASES:
            driver.pools.admission.release(name)


@kopf.on.delete(C.GROUP, C.VERSION, C.NODEREPAIR_PLURAL)
async def abort(
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Deleting a repair undoes what it did (finalizer): phase Aborted while it runs.
    kopf runs this while it stops the daemon: the pass in flight is told to send
    nothing more, and is waited for, with its pod marks, before anything is undone."""
    kube: Kube = memo["kube"]
    wake = wakeups(memo)
    node_name = spec.get("nodeName")
    guard = pass_guard(memo)
    guard.stopping = True
    async with guard.lock:
        await guard.settle()
        # The deletion event's status may predate the pass just waited for (which may
        # have finished the repair): judge by the status as that pass left it.
        current = await _current_status(kube, name, status)
        phase = current.get("phase")
        if phase != Phase.SUCCEEDED:
            aborted = parse_status(current).model_copy(deep=True)
            aborted.phase = Phase.ABORTED
            aborted.message = f"Aborted: giving {node_name} back"
            aborted.completion_time = aborted.completion_time or datetime.now(UTC)
            aborted.conditions = kstatus.repair_conditions(aborted, False, datetime.now(UTC))
            try:
                # Guarded by the phase just read: a pass of another replica (a deposed
                # leader) that finished the repair meanwhile is not overwritten.
                ops = guarded_status(current or None, aborted.wire())
                await kube.patch_status_ops(C.NODEREPAIR_PLURAL, name, ops)
            except StatusChanged as e:
                raise kopf.TemporaryError(f"status changed meanwhile: {e}", delay=1) from e
            except ApiError as e:
                if e.status != 404:
                    raise
            else:
                if phase not in FINAL_PHASES:
                    metrics.COMPLETED.labels(Phase.ABORTED.value).inc()
        job = (current.get("repair") or {}).get("jobName")
        if job and phase == Phase.REPAIRING:
            await hooks.delete_job(kube, job)  # a repair in progress stops with its repair
        canary = ((current.get("verify") or {}).get("canary") or {}).get("pod")
        if canary:  # and so does its canary (one a lost answer left behind, too)
            await hooks.delete_canary(kube, canary)
        if node_name and await give_back(kube, node_name, name, logger, wake.under_repair):
            kopf.event(
                body,
                type="Normal",
                reason=C.REASON_ABORTED,
                message=f"Repair deleted; {node_name} given back",
            )
    metrics.repair_phases(memo).record(name, None)
    pool_daemon.pools(memo).admission.release(name)
    wake.nodes.wake(node_name)


async def _current_status(kube: Kube, name: str, seen: Mapping[str, Any]) -> Mapping[str, Any]:
    """The repair's status as the API server has it now; `seen` if it cannot tell."""
    path = f"/apis/{C.GROUP}/{C.VERSION}/{C.NODEREPAIR_PLURAL}/{name}"
    try:
        current = await kube.request("GET", path)
    except ApiError as e:
        if e.status != 404:
            raise
        return seen
    return current.get("status") or seen


def ready_nodes(nodes_by_name: kopf.Index[str, Any]) -> set[str]:
    """The nodes (as the index holds them) whose Ready condition is True."""
    return {
        name
        for name, found in nodes_by_name.items()
        if any(nodes.condition_status(n, "Ready") == "True" for n in found)
    }


def bare_node(name: str) -> dict[str, Any]:
    """Enough of a Node for an Event about it, when the index no longer has it."""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
