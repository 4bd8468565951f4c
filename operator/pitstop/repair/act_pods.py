"""The pod steps of the drain: the drain signal, deregistration (the serving gate)
and evictions (Deregistering, WaitingForTasks, Evicting), and the PDBs a dry
run reports. Each write is sent once per process; refusals back off."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import kopf

from pitstop import constants, metrics
from pitstop.cluster import indexes
from pitstop.cluster.kube import ApiError, Eviction
from pitstop.instances import contract
from pitstop.models import (
    NodeRepairSpec,
)
from pitstop.repair import drain
from pitstop.repair.flow import Blocked, Decision, Event
from pitstop.repair.report import Report
from pitstop.repair.state import RepairState

C = constants


EVICTION_HEDGE = 0.25
"""Seconds an eviction under a budget may take before the next is sent beside it:
about twice an eviction's round trip on a busy API server, half its 500 ms sleep
after a conflict (see PodSteps._in_turn)."""
EVICTIONS_IN_FLIGHT = 3
"""At most this many evictions under one budget at once."""


def backoff(attempt: int) -> timedelta:
    """Retry delay after the n-th refused eviction: 0.5 s doubling to 5 s."""
    return timedelta(seconds=min(0.5 * 2 ** (attempt - 1), 5.0))


class PodSteps:
    """Pod actions, and what this process already sent (RepairState: sent, blocked,
    refusals, counted, marked_draining, marked_closed)."""

    def __init__(self, state: RepairState, report: Report) -> None:
        self.state, self.report = state, report

    async def act(self, d: Decision, now: datetime, spec: NodeRepairSpec) -> bool:
        """Pod actions, concurrently: drain signal, deregistration, evictions. What
        succeeded is remembered (the indexes lag behind our writes); what failed is
        tried again on the next pass. Nothing is sent once the repair is being
        deleted (invariant 9): its give-back undoes only what it can see. True when a
        drain signal's answer shows a pod newer than the index (RepairState.answered):
        the next pass can decide on it at once."""
        st = self.state
        if st.stopping():
            return False
        stamp = drain.mark_time(d.status, now)
        writes: list[tuple[tuple[str, str], Any]] = []
        for key in d.mark_draining:
            if ("drain", key) not in st.sent:
                patch = {"metadata": {"annotations": {C.ANNOTATION_DRAINING: stamp}}}
                writes.append((("drain", key), st.guard.track(st.kube.patch_pod(key, patch))))
        for key in d.deregister:
            if ("deregister", key) not in st.sent:
                call = st.kube.set_pod_condition(
                    key,
                    C.CONDITION_SERVING,
                    "False",
                    "NodeRepair",
                    f"out of routing: NodeRepair {st.name} drains its node",
                )
                writes.append((("deregister", key), st.guard.track(call)))
        evictions = [k for k in d.evict if ("evict", k) not in st.sent]
        grace = spec.drain.grace_period_seconds
        results = await asyncio.gather(
            # shielded: a cancelled pass leaves them to the deletion's settle()
            *(self._ignore_gone(asyncio.shield(call)) for _, call in writes),
            *(self._in_turn(group, grace) for group in self.by_budget(evictions)),
            return_exceptions=True,
        )
        failure: BaseException | None = None
        answered = False
        for (done, _), result in zip(writes, results, strict=False):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            st.sent.add(done)
            action, key = done
            if action == "drain" and result is not None and key in st.versions:
                st.answered[key] = (st.versions[key], indexes.slim_pod(result))
                answered = True
        for outcomes in results[len(writes) :]:
            if isinstance(outcomes, BaseException):
                failure = failure or outcomes
                continue
            assert isinstance(outcomes, list)
            for outcome in outcomes:
                self.record(outcome, now)
        if failure is not None:
            raise failure
        return answered

    def by_budget(self, keys: list[str]) -> list[list[str]]:
        """Evictions grouped by the first budget of their pod, each pod without one a
        group of its own."""
        groups: dict[str, list[str]] = {}
        for k in keys:
            pdbs = self.state.pdbs_of.get(k) or (k,)
            groups.setdefault(pdbs[0], []).append(k)
        return list(groups.values())

    async def _in_turn(self, keys: list[str], grace: int | None) -> list[Eviction]:
        """One budget's evictions one after the other, hedged. An eviction writes its
        budget's status; one that meets another write there (a second eviction, the
        disruption controller's own) sleeps 500 ms in the API server before it tries
        again. Sent together, most of a budget's evictions would sleep; sent strictly
        in turn, each such sleep stalls the drain. So the next one is sent when the
        one before answers or has taken EVICTION_HEDGE (it is likely asleep), at most
        EVICTIONS_IN_FLIGHT at once. After a refusal the rest would be refused too:
        they wait for the next pass; once the repair is being deleted, none is sent."""
        st = self.state
        done: list[Eviction] = []
        queue = list(reversed(keys))
        flying: set[asyncio.Future[Eviction]] = set()
        refused = False
        try:
            while queue or flying:
                more = bool(queue) and not refused and not st.stopping()
                if more and len(flying) < EVICTIONS_IN_FLIGHT:
                    flying.add(asyncio.ensure_future(st.kube.evict(queue.pop(), grace)))
                if not flying:
                    break
                may_add = more and bool(queue) and len(flying) < EVICTIONS_IN_FLIGHT
                answered, flying = await asyncio.wait(
                    flying,
                    timeout=EVICTION_HEDGE if may_add else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for f in answered:
                    outcome = f.result()
                    done.append(outcome)
                    refused = refused or outcome.result == "blocked"
        finally:
            for f in flying:  # cancelled pass: its unanswered evictions are not ours to await
                f.cancel()
        return done

    def forget_sent(self, found: list[contract.Instance]) -> None:
        """A mark someone removed mid-repair (the drain signal, a closed gate) must be
        set again: forget having sent it once the index shows it missing."""
        st = self.state
        for i in found:
            if not i.draining and ("drain", i.key) in st.sent and self._seen_marked(i.key):
                st.sent.discard(("drain", i.key))
            if i.gated and i.serving != "False" and ("deregister", i.key) in st.marked_closed:
                st.sent.discard(("deregister", i.key))
        # Only what the index showed counts as seen: a version between the one the
        # signal was sent on and the answer lacks the mark without anyone removing it.
        shown = [i for i in found if i.key not in st.from_answer]
        st.marked_closed = {("deregister", i.key) for i in shown if i.serving == "False"}
        st.marked_draining = {i.key for i in shown if i.draining}

    def _seen_marked(self, key: str) -> bool:
        return key in self.state.marked_draining

    def record(self, outcome: Eviction, now: datetime) -> None:
        st = self.state
        metrics.EVICTIONS.labels(outcome.result).inc()
        if outcome.result in ("evicted", "gone"):
            st.sent.add(("evict", outcome.pod))
            st.blocked.pop(outcome.pod, None)
            return
        attempt = st.refusals.get(outcome.pod, 0) + 1
        st.refusals[outcome.pod] = attempt
        # The budgets that hold the pod are the PDB index's (those covering it); the
        # API server's English message names them only for one the index lacks yet.
        pdbs = st.pdbs_of.get(outcome.pod) or outcome.blocking_pdbs
        if outcome.result != "blocked":
            pdbs = ()  # an error, not a budget's refusal
        st.blocked[outcome.pod] = Blocked(
            retry_at=now + backoff(attempt), pdbs=pdbs, message=outcome.message
        )
        if not pdbs:
            # A refusal that names no budget: one Event per answer, not per pod (decide()
            # posts the one for the budgets it names).
            message = f"Eviction refused: {outcome.message}"
            self.report.post([Event("Warning", C.REASON_EVICTION_BLOCKED, message)], None)
        st.wake.nodes.wake(st.node_name)  # come back for the retry time computed by decide()

    async def _ignore_gone(self, call: Any) -> Any:
        """The write's answer; None for a pod gone."""
        try:
            return await call
        except ApiError as e:
            if e.status != 404:
                raise
            return None

    def evictions_in_flight(
        self, found: list[contract.Instance]
    ) -> tuple[frozenset[str], frozenset[str]]:
        """(evicted, uncounted): the instances whose eviction the API server accepted,
        and of those the ones no budget has been seen to count. Once a budget lists a
        pod in its disruptedPods it counts it from then on: the disruption controller
        drops it from there only once it sees the pod terminating, which it then
        counts as unhealthy (or after its 2-minute timeout, the pod still there)."""
        st = self.state
        evicted = frozenset(k for action, k in st.sent if action == "evict")
        for i in found:
            if i.key in evicted and any(
                i.key in b.disrupted for p in i.pdbs if (b := st.budgets.get(p)) is not None
            ):
                st.counted.add(i.key)
        present = {i.key for i in found}
        st.counted &= present
        return evicted, frozenset(k for k in evicted - st.counted if k in present)

    def blocking_pdbs(
        self, pods_by_node: kopf.Index[str, Any], pdbs_by_namespace: kopf.Index[str, Any] | None
    ) -> tuple[str, ...]:
        """Dry run only: PDBs of the node's instances that allow no disruption now."""
        pods = [p for p in pods_by_node.get(self.state.node_name, ()) if contract.is_instance(p)]
        namespaces = {p["metadata"]["namespace"] for p in pods}
        pdbs = [b for ns in namespaces for b in (pdbs_by_namespace or {}).get(ns, ())]
        return tuple(contract.blocking_pdbs(pdbs, pods))
