"""The observe step of a pass: the node's instances as the indexes show them, each
with the profile that describes it, what its task source says, the budgets that
cover it and the times its own deadlines count from; and what the task-source
poller is asked to watch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp
import kopf

from pitstop import constants
from pitstop.cluster import indexes
from pitstop.cluster.kube import ApiError
from pitstop.instances import contract
from pitstop.instances.sources import addressing, profiles, trust
from pitstop.instances.sources import daemon as sources_daemon
from pitstop.instances.sources.errors import SourceError
from pitstop.instances.sources.poller import Target
from pitstop.instances.sources.profiles import Profile
from pitstop.models import Phase
from pitstop.repair.state import RepairState

C = constants

POLL_PHASES = (Phase.WAITING_FOR_TASKS, Phase.EVICTING)
"""Phases in which the instances' task sources are polled."""


class Observe:
    """Reads the node's instances for a pass (RepairState: uids, marked_at, gate_closed_at,
    targets, budgets, pdbs_of) and tells the poller what to watch."""

    def __init__(self, state: RepairState) -> None:
        self.state = state

    def instances(
        self,
        now: datetime,
        pods_by_node: kopf.Index[str, Any],
        endpoints_by_pod: kopf.Index[str, Any],
        profiles_by_name: kopf.Index[str, Any] | None = None,
        namespace_labels: kopf.Index[str, Any] | None = None,
        pdbs_by_namespace: kopf.Index[str, Any] | None = None,
    ) -> list[contract.Instance]:
        """The node's instances, each with the profile that describes it, what its
        task source says and the budgets that cover it; also keeps `targets`,
        what the poller would ask, and `budgets`, the budgets of their namespaces."""
        st = self.state
        usable = sources_daemon.usable(profiles_by_name)
        found, targets, marked, closed = [], [], {}, {}
        uids: dict[str, str] = {}
        budgets: dict[str, contract.Budget] = {}
        by_ns: dict[str, list[Any]] = {}
        versions: dict[str, str | None] = {}
        answered: set[str] = set()
        for pod in list(pods_by_node.get(st.node_name, ())):
            if not contract.is_instance(pod):
                continue
            key = contract.key(pod)
            uids[key] = pod["metadata"].get("uid", "")
            if st.uids.get(key, uids[key]) != uids[key]:
                self.forget(key)
            versions[key] = pod["metadata"].get("resourceVersion")
            shown = pod
            pod = self.answer_or(key, pod)
            if pod is not shown:
                answered.add(key)
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
                seen = st.marked_at.get(key)
                marked[key] = seen if seen is not None and seen[0] == mark else (mark, now)
            m = sources_daemon.match_pod(pod, usable, namespace_labels) if usable else None
            polled, unacked = None, None
            # One on its way out (terminating, or its eviction accepted) is not polled:
            # it may close its port at any moment, and no count of it decides anything.
            leaving = contract.is_terminating(pod) or ("evict", key) in st.sent
            if m is not None and m.profile is not None and not leaving:
                target = self.target(key, pod, m.profile, marked=key in marked)
                if target is not None:
                    targets.append(target)
                    polled, unacked = self.polled(target, marked[key][1] if key in marked else None)
            i = contract.observe(pod, endpoints_by_pod.get(key), m, polled, unacked, pdbs)
            if i.gate_closed_since is not None:
                i, closed[key] = self.gate_seen_closed(i, now)
            found.append(i)
        st.marked_at, st.gate_closed_at, st.uids = marked, closed, uids
        st.versions, st.from_answer = versions, answered
        st.answered = {k: v for k, v in st.answered.items() if k in versions}
        st.targets, st.budgets = targets, budgets
        st.pdbs_of = {i.key: i.pdbs for i in found}
        return found

    def forget(self, key: str) -> None:
        """Drops what was seen and sent of a pod that is gone and made again under its
        name (a new uid; one pinned to the node with nodeName). Its mark, gate closing
        and confirmation said nothing of the new pod, even with the same value to the
        second, so each is seen anew: later, never short (invariant 2, the trust rule);
        and the old one's accepted eviction must not pass the new one as leaving."""
        st = self.state
        for seen in (st.marked_at, st.gate_closed_at, st.confirmed_out, st.answered):
            seen.pop(key, None)
        st.blocked.pop(key, None)
        st.refusals.pop(key, None)
        st.sent -= {(action, key) for action in ("drain", "deregister", "evict")}
        st.marked_closed.discard(("deregister", key))
        st.marked_draining.discard(key)
        st.counted.discard(key)

    def answer_or(self, key: str, pod: Mapping[str, Any]) -> Mapping[str, Any]:
        """The pod as our drain signal's answer shows it while the index still shows
        the version the signal was sent on (the answer is newer: it is the version the
        patch made); any other version in the index, or another pod of that name,
        drops the answer (RepairState.answered)."""
        st = self.state
        found = st.answered.get(key)
        if found is None:
            return pod
        before, answer = found
        meta = pod["metadata"]
        if meta.get("resourceVersion") == before and meta.get("uid") == answer["metadata"]["uid"]:
            return answer
        del st.answered[key]
        return pod

    async def confirm_deregistered(self, found: list[contract.Instance]) -> list[contract.Instance]:
        """The instances, each gated sync one that the view shows out of routing
        checked against the API server's EndpointSlices as they are now (invariant 2).
        The watch's view of a slice may lag behind the pod: a pod Ready a moment ago
        still shows the not-ready endpoint published before, and that absence proves
        nothing. A read sent after this pass saw the gate closed and the pod not
        Ready is no older than the closing; what it shows ready stays routed, and a
        read that fails proves nothing. Once confirmed, a pod is not read again
        while its gate stays closed (a Ready pod needs the gate open: a new closing
        is confirmed anew). One read per namespace and pass, only while some pod
        waits for it."""
        st = self.state
        unproven = {
            i.key: st.gate_closed_at.get(i.key, (None,))[0]
            for i in found
            if i.sync and i.gated and i.deregistered and not i.terminating
        }
        unproven = {k: v for k, v in unproven.items() if v is None or st.confirmed_out.get(k) != v}
        readable = {i.key for i in found if i.key in unproven and not i.pod_ready}
        routed: dict[str, bool] = {}
        unread: set[str] = set()
        for ns in sorted({k.split("/", 1)[0] for k in readable}):
            try:
                for body in await st.kube.list_endpointslices(ns):
                    indexes.slice_readiness(body, routed)
            except (TimeoutError, ApiError, aiohttp.ClientError) as e:
                st.logger.info(f"EndpointSlices of {ns} not read ({e}): deregistration waits")
                unread.add(ns)
        confirmed = {
            k for k in readable if k.split("/", 1)[0] not in unread and not routed.get(k, False)
        }
        kept = {k: v for k, v in st.confirmed_out.items() if k in st.gate_closed_at}
        st.confirmed_out = kept | {
            k: stamp for k in confirmed if (stamp := unproven[k]) is not None
        }
        return [
            dataclasses.replace(i, ready_endpoint=True)
            if i.key in unproven and i.key not in confirmed
            else i
            for i in found
        ]

    async def listed(self, found: list[contract.Instance]) -> int | None:
        """When the indexes show no instance on the node, the instances the API server
        lists there now (None: some are shown, or the read failed). The watch may lag
        behind a pod bound just before the cordon: declaring the node drained on its
        view would let the repair take down an instance it never saw, tasks and all
        (invariant 1). One read per pass, only in the passes that would end the drain."""
        if found:
            return None
        st = self.state
        try:
            pods = await st.kube.list_pods_on(st.node_name)
        except (TimeoutError, ApiError, aiohttp.ClientError) as e:
            st.logger.info(f"Pods on {st.node_name} not listed ({e}): the drain waits")
            return None
        return sum(1 for p in pods if contract.is_instance(p))

    def gate_seen_closed(
        self, i: contract.Instance, now: datetime
    ) -> tuple[contract.Instance, tuple[datetime, datetime]]:
        """The instance with its gate's closing time as the deregistration wait may
        count from it (invariant 2): never before this process first saw it closed.
        The condition's lastTransitionTime is stamped when the patch is sent, to the
        second, so the gate closed up to a second and the request's latency later;
        the view shows it only once it has. After a restart the wait counts from the
        new process's first sight: longer, never short."""
        stamp = i.gate_closed_since
        assert stamp is not None
        seen = self.state.gate_closed_at.get(i.key)
        entry = seen if seen is not None and seen[0] == stamp else (stamp, now)
        return dataclasses.replace(i, gate_closed_since=max(entry)), entry

    def target(
        self, key: str, pod: Mapping[str, Any], profile: Profile, marked: bool = True
    ) -> Target | None:
        """What the poller asks this instance (None: nothing, the annotation contract).
        Its httpPost drain signal only once the drain marked it (`marked`): one its
        budget keeps in service must not be told to drain (it would fail its
        readiness and spend the budget)."""
        polled = profile.spec.tasks.type != profiles.ANNOTATION
        signals = profile.spec.drain_signal.type == profiles.HTTP_POST and marked
        if not polled and not signals:
            return None
        # The uid in the key: a pod re-created under the same name starts from nothing.
        ident = f"{key}@{pod['metadata'].get('uid', '')}"
        poll = signal = error = None
        try:
            poll = addressing.poll_request(profile, pod) if polled else None
            signal = addressing.signal_request(profile, pod) if signals else None
        except SourceError as e:
            error = e
        return Target(ident, self.state.node_name, profile, poll, signal, error)

    def polled(
        self, t: Target, marked_at: datetime | None
    ) -> tuple[trust.Polled | None, str | None]:
        """What the instance's polled source says under the trust rule, and its drain
        signal's last error once reported as unacknowledged."""
        st = self.state
        state = st.poller.signal_state(t.key, t.profile) if st.poller else None
        unacked = None
        if state is not None and state.acked_at is None and state.reported_at is not None:
            unacked = state.last_error
        if t.poll is None and t.error is None:
            return None, unacked  # counted by the annotation
        if t.error is not None and t.signal is None:
            return trust.Polled(error=t.error), unacked
        reading = st.poller.reading(t.key, t.profile) if st.poller else None
        signal = profiles.drain_signal(t.profile)
        at = trust.signal_time(signal, marked_at=marked_at, state=state)
        return trust.polled(reading, at), unacked

    def poll(self, phase: Phase | None) -> None:
        """Polling only where it matters: while the node waits for tasks or evicts."""
        st = self.state
        if st.poller is None:
            return
        if phase in POLL_PHASES and st.targets:
            st.poller.watch(st.node_name, st.targets)
        else:
            st.poller.forget(st.node_name)
