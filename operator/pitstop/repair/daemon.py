"""Drives each NodeRepair: a kopf daemon per repair observes (indexes), decides
(pitstop.repair.drain) and acts (pitstop.cluster.kube), then sleeps until a watch event about its
node or the next deadline. Deleting a repair gives the node back (finalizer).

The driver never sleeps inside a step and never lists: it reacts to the events
the indexes already receive. What it remembers between passes (evictions sent,
refusals and their backoff) is only an optimisation; after a restart it starts
from the cluster again and every action is idempotent (invariant 6)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from pitstop import constants, metrics
from pitstop.cluster import nodes
from pitstop.cluster.indexes import CAPACITY, UNDER_REPAIR, WAKERS, nap, slim_node
from pitstop.cluster.kube import ApiError, Gone, Kube
from pitstop.instances import contract
from pitstop.instances.sources import daemon as sources_daemon
from pitstop.instances.sources import rules as tasksources
from pitstop.instances.sources.poller import Target
from pitstop.instances.sources.rules import Profile
from pitstop.models import (
    FINAL_PHASES,
    NodeRepairSpec,
    Phase,
)
from pitstop.pool import daemon as pool_daemon
from pitstop.repair import drain, hooks, orphans
from pitstop.repair.act_hooks import RepairSteps
from pitstop.repair.act_node import NodeSteps, give_back
from pitstop.repair.act_pods import PodSteps
from pitstop.repair.report import forget_gauge, record_phase
from pitstop.repair.state import parse_status, pass_guard

C = constants


RESYNC = 60.0
"""Re-check even without events: a safety net for a silent watch."""
POLL_PHASES = (Phase.WAITING_FOR_TASKS, Phase.EVICTING)
"""Phases in which the instances' task sources are polled."""


class Driver(NodeSteps, PodSteps, RepairSteps):
    """One repair's daemon: observe (the indexes), decide (pitstop.repair.drain), act
    (one step module each: act_node, act_pods, act_hooks), report (report)."""

    def observe_instances(
        self,
        now: datetime,
        pods_by_node: kopf.Index[str, Any],
        endpoints_by_pod: kopf.Index[str, Any],
        profiles_by_name: kopf.Index[str, Any] | None = None,
        namespace_labels: kopf.Index[str, Any] | None = None,
        pdbs_by_namespace: kopf.Index[str, Any] | None = None,
    ) -> list[contract.Instance]:
        """The node's instances, each with the profile that describes it, what its
        task source says and the budgets that cover it; also keeps `self.targets`,
        what the poller would ask, and `self.budgets`, the budgets of their namespaces."""
        usable = sources_daemon.usable(profiles_by_name)
        found, targets, marked = [], [], {}
        budgets: dict[str, contract.Budget] = {}
        by_ns: dict[str, list[Any]] = {}
        for pod in list(pods_by_node.get(self.node_name, ())):
            if not contract.is_instance(pod):
                continue
            key = contract.key(pod)
            ns = pod["metadata"].get("namespace")
            if ns not in by_ns:
                by_ns[ns] = list(pdbs_by_namespace.get(ns, ())) if pdbs_by_namespace else []
                for pdb in by_ns[ns]:
                    budgets[contract.pdb_key(pdb)] = contract.budget(pdb)
            pdbs = by_ns[ns]
            mark = (pod["metadata"].get("annotations") or {}).get(C.ANNOTATION_DRAINING)
            if mark is not None:
                # A new mark (a repair's after another's, taken off between) is seen
                # anew: a poll of the old one's time may predate it (trust rule).
                seen = self.marked_at.get(key)
                marked[key] = seen if seen is not None and seen[0] == mark else (mark, now)
            m = sources_daemon.match_pod(pod, usable, namespace_labels) if usable else None
            polled, unacked = None, None
            if m is not None and m.profile is not None:
                target = self.target(key, pod, m.profile, marked=key in marked)
                if target is not None:
                    targets.append(target)
                    polled, unacked = self.polled(target, marked[key][1] if key in marked else None)
            found.append(contract.observe(pod, endpoints_by_pod.get(key), m, polled, unacked, pdbs))
        self.marked_at, self.targets, self.budgets = marked, targets, budgets
        self.pdbs_of = {i.key: i.pdbs for i in found}
        return found

    def target(
        self, key: str, pod: Mapping[str, Any], profile: Profile, marked: bool = True
    ) -> Target | None:
        """What the poller asks this instance (None: nothing, the annotation contract).
        Its httpPost drain signal only once the drain marked it (`marked`): one its
        budget keeps in service must not be told to drain (it would fail its
        readiness and spend the budget)."""
        polled = profile.spec.tasks.type != tasksources.ANNOTATION
        signals = profile.spec.drain_signal.type == tasksources.HTTP_POST and marked
        if not polled and not signals:
            return None
        # The uid in the key: a pod re-created under the same name starts from nothing.
        ident = f"{key}@{pod['metadata'].get('uid', '')}"
        poll = signal = error = None
        try:
            poll = tasksources.poll_request(profile, pod) if polled else None
            signal = tasksources.signal_request(profile, pod) if signals else None
        except tasksources.SourceError as e:
            error = e
        return Target(ident, self.node_name, profile, poll, signal, error)

    def polled(
        self, t: Target, marked_at: datetime | None
    ) -> tuple[tasksources.Polled | None, str | None]:
        """What the instance's polled source says under the trust rule, and its drain
        signal's last error once reported as unacknowledged."""
        state = self.poller.signal_state(t.key, t.profile) if self.poller else None
        unacked = None
        if state is not None and state.acked_at is None and state.reported_at is not None:
            unacked = state.last_error
        if t.poll is None and t.error is None:
            return None, unacked  # counted by the annotation
        if t.error is not None and t.signal is None:
            return tasksources.Polled(error=t.error), unacked
        reading = self.poller.reading(t.key, t.profile) if self.poller else None
        signal = tasksources.drain_signal(t.profile)
        at = tasksources.signal_time(signal, marked_at=marked_at, state=state)
        return tasksources.polled(reading, at), unacked

    def poll(self, phase: Phase | None) -> None:
        """Polling only where it matters: while the node waits for tasks or evicts."""
        if self.poller is None:
            return
        if phase in POLL_PHASES and self.targets:
            self.poller.watch(self.node_name, self.targets)
        else:
            self.poller.forget(self.node_name)

    # --- one pass ---

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
        try:
            spec = NodeRepairSpec.model_validate(self.body.get("spec") or {})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            await self.fail_invalid(now, f"spec.{where}: {first['msg']}")
            return False, None
        if await self.refuse_untrusted(now, spec):  # docs/security.md; nothing touched
            return False, None
        if self.name not in {r["name"] for r in repairs_by_node.get(self.node_name, ())}:
            raise Gone(f"NodeRepair {self.name} is gone")
        finalizers = self.body.get("metadata", {}).get("finalizers") or []
        if self.status.phase in (None, Phase.PENDING) and C.FINALIZER not in finalizers:
            # Nothing is touched before the finalizer is on: a repair deleted in that
            # window would vanish without its deletion handler giving the node back.
            return False, now + timedelta(seconds=1)
        node = self.node(nodes_by_name)
        found = self.observe_instances(
            now,
            pods_by_node,
            endpoints_by_pod,
            profiles_by_name,
            namespace_labels,
            pdbs_by_namespace,
        )
        self.forget_sent(found)
        evicted, uncounted = self.evictions_in_flight(found)
        waiting_for = None
        if self.status.phase in (None, Phase.PENDING) and not spec.dry_run:
            created = self.body.get("metadata", {}).get("creationTimestamp") or ""
            waiting_for = await pool_daemon.ADMISSION.check(
                self.name, self.node_name, created, nodes_by_name, repairs_by_node, policies_by_name
            )
        # A Replace or External attempt is read (and started) before the decision; it
        # may record what it does in status first.
        remedy = await self.current_remedy(now, spec, lambda: ready_nodes(nodes_by_name))
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
            budgets=self.budgets,
            evicted=evicted,
            uncounted=uncounted,
            taken_out=frozenset(k for a, k in self.sent if a in ("drain", "deregister")),
            waiting_for=waiting_for,
            blocking_pdbs=self.blocking_pdbs(pods_by_node, pdbs_by_namespace)
            if spec.dry_run
            else (),
            repaired_mark=(self.body.get("metadata", {}).get("annotations") or {}).get(
                C.ANNOTATION_REPAIRED
            ),
            job=await self.current_job(spec),
            webhook=self.webhook_answer,
            remedy=remedy,
        )
        d = drain.decide(obs)
        if self.stopping():
            return False, None  # being deleted: the deletion handler undoes, nothing more
        self.poll(d.status.phase)
        again = False

        if d.take_lock and node is not None:
            UNDER_REPAIR.add(self.node_name)
            known = self.status.node.was_unschedulable if self.status.node else None
            again = await self.patch_node(
                node, lambda n: nodes.lock_and_cordon(n, self.name, known)
            )
            if not again:
                return True, None  # the markers changed: decide again on the fresh node
        elif d.recordon and node is not None and not await self.patch_node(node, nodes.cordon):
            return True, None
        if d.status.phase not in FINAL_PHASES and nodes.lock_holder(node or {}) == self.name:
            UNDER_REPAIR.add(self.node_name)

        wake_at = await self.write_status(d.status, now, d.wake_at, d.passed)
        self.post(d.events, node)
        await self.act(d, now, spec)
        if self.stopping():
            return False, None
        again = await self.run_hooks(d, spec) or again
        if d.release and d.status.phase == Phase.FAILED:
            await self.give_back_after_failure(now)
        elif d.release:  # verified: give the node back; the next pass records it
            released = await give_back(self.kube, self.node_name, self.name, self.logger, node)
            # The next pass sees the release at once, not the index's older view.
            before = (node or {}).get("metadata", {}).get("resourceVersion")
            self.patched_node = (before, slim_node(released)) if released else None
            again = True
        if d.status.phase in drain.DRAIN_PHASES:
            metrics.INFLIGHT_TASKS.labels(self.node_name).set(sum(i.tasks.count for i in found))
        else:
            forget_gauge(self.node_name)
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
    driver = Driver(name, body, memo["kube"], logger, memo.get(sources_daemon.MEMO_POLLER))
    # Each pass holds the repair's guard: its deletion handler waits for the pass in
    # flight to end before it gives the node back (invariant 9).
    guard = driver.guard = pass_guard(memo)
    driver.stopped = stopped
    if driver.status.phase in FINAL_PHASES:
        record_phase(name, driver.status.phase)
        async with guard.lock:
            await driver.finish_failure(datetime.now(UTC))
        return
    waker = WAKERS.register(driver.node_name)
    CAPACITY.register(waker)  # room freed anywhere in the pool wakes it too
    try:
        while not stopped and not body.get("metadata", {}).get("deletionTimestamp"):
            waker.clear()
            now = datetime.now(UTC)
            async with guard.lock:
                if driver.stopping():
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
                    node = driver.node(nodes_by_name)
                    if await give_back(memo["kube"], driver.node_name, name, logger):
                        orphans.report(node or bare_node(driver.node_name), name, logger)
                    record_phase(name, None)
                    return
                except (ApiError, OSError, TimeoutError) as e:
                    logger.warning(f"Pass failed, retrying in 1s: {e}")
                    again, wake_at = False, now + timedelta(seconds=1)
                if driver.status.phase in FINAL_PHASES:
                    await driver.finish_failure(datetime.now(UTC))
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
        driver.poll(None)
        WAKERS.unregister(driver.node_name, waker)
        CAPACITY.unregister(waker)
        if driver.status.phase in FINAL_PHASES:
            pool_daemon.ADMISSION.release(name)


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
            try:
                await kube.patch_status(C.NODEREPAIR_PLURAL, name, aborted.wire())
            except ApiError as e:
                if e.status != 404:
                    raise
        job = (current.get("repair") or {}).get("jobName")
        if job and phase == Phase.REPAIRING:
            await hooks.delete_job(kube, job)  # a repair in progress stops with its repair
        if node_name and await give_back(kube, node_name, name, logger):
            kopf.event(
                body,
                type="Normal",
                reason=C.REASON_ABORTED,
                message=f"Repair deleted; {node_name} given back",
            )
    record_phase(name, None)
    pool_daemon.ADMISSION.release(name)
    WAKERS.wake(node_name)


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
