"""RepairPolicies at work: a daemon per policy turns its pool's unhealthy nodes
(conditions held for their duration, or firing alerts) into NodeRepairs, within
the storm guard; and the admission that every NodeRepair of a pool passes before
it takes its node (maxConcurrentRepairs, minAvailable, creation order).

Admission decisions are serialised by one lock per operator run (its Pools, in
the run's registry: pitstop.registry), and a repair
admitted but not yet visible in the index counts as active: a burst of failures
can never push a pool past its limits."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from pydantic import ValidationError

from pitstop import conditions, constants, kstatus, logs, metrics
from pitstop.cluster.indexes import Waiters, Wakeups, nap, on_the_loop, one, wakeups
from pitstop.cluster.kube import ApiError, Gone, Kube, merge_patch
from pitstop.instances import contract
from pitstop.models import Phase, RepairPolicySpec, RepairPolicyStatus, Suppression
from pitstop.models.repairpolicy import AlertFault, WindowStatus
from pitstop.pool import arithmetic, ledger, notices, room, windows
from pitstop.pool.notifier import Notifier

C = constants
RESYNC = 300.0


@on_the_loop(kopf.index(C.GROUP, C.VERSION, C.REPAIRPOLICY_PLURAL))
def policies_by_name(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(spec)}


def parse_policy(raw: Mapping[str, Any]) -> RepairPolicySpec | None:
    try:
        return RepairPolicySpec.model_validate(dict(raw))
    except ValidationError:
        return None


def parse_policies(policies_index: kopf.Index[str, Any]) -> list[tuple[str, RepairPolicySpec]]:
    """Every RepairPolicy of the index, parsed once (a pool pass asks each node)."""
    found = []
    for name, store in list(policies_index.items()):
        for raw in store:
            spec = parse_policy(raw)
            if spec is not None:
                found.append((name, spec))
    return found


def pools_of(
    node: arithmetic.NodeView, policies: Iterable[tuple[str, RepairPolicySpec]]
) -> list[tuple[str, RepairPolicySpec]]:
    return [(name, spec) for name, spec in policies if arithmetic.in_pool(spec, node)]


class NodeViews:
    """The pool logic's view of every node, made again only for a node whose
    resourceVersion changed: a pass over 5,000 nodes would otherwise spend most of
    its time re-reading conditions and timestamps that did not change."""

    def __init__(self) -> None:
        self._views: dict[str, tuple[str, arithmetic.NodeView]] = {}

    def all(self, nodes_index: kopf.Index[str, Any]) -> list[arithmetic.NodeView]:
        views, kept = [], {}
        for store in list(nodes_index.values()):
            for raw in store:
                meta = raw.get("metadata", {})
                name, rv = meta.get("name"), meta.get("resourceVersion")
                cached = self._views.get(name)
                if rv and cached is not None and cached[0] == rv:
                    view = cached[1]
                else:
                    view = arithmetic.node_view(raw)
                if rv:
                    kept[name] = (rv, view)
                views.append(view)
        self._views = kept  # deleted nodes drop out
        return views


def lock_holders(nodes: Iterable[arithmetic.NodeView]) -> set[str]:
    """Repairs that hold a node's lock: active, whatever their status says yet (the
    lock is written before the first status, so a crash in between leaves this)."""
    return {n.lock for n in nodes if n.lock}


def repair_views(
    repairs_index: kopf.Index[str, Any], admitted: Iterable[str] = ()
) -> list[arithmetic.RepairView]:
    """Every NodeRepair as the pool logic sees it; those admitted in this process but
    not yet past Pending in the index count as active already."""
    admitted = set(admitted)
    views = []
    for node, store in list(repairs_index.items()):
        for r in store:
            phase = r["phase"]
            if r["name"] in admitted and phase in (None, Phase.PENDING):
                phase = Phase.CORDONING
            views.append(
                arithmetic.RepairView(
                    name=r["name"],
                    node=node,
                    phase=phase,
                    created=r["created"] or "",
                    deleting=r["deleting"],
                    dry_run=r.get("dryRun", False),
                )
            )
    return views


# --- admission (called by the NodeRepair driver before it takes a node) ---


class Admission:
    def __init__(self, node_views: NodeViews, capacity: Waiters) -> None:
        self.lock = asyncio.Lock()
        self.admitted: set[str] = set()
        self.node_views = node_views
        self.capacity = capacity
        """The repairs waiting for room in their pool: woken when a repair ends (and
        by a policy daemon when its maintenance window opens)."""

    async def check(
        self,
        repair: str,
        node_name: str,
        created: str,
        nodes_index: kopf.Index[str, Any],
        repairs_index: kopf.Index[str, Any],
        policies_index: kopf.Index[str, Any],
        pods_index: kopf.Index[str, Any] | None = None,
        require_room: bool = False,
    ) -> str | None:
        """None when the repair may take its node now (it is then counted as active
        until it ends); else the reason it waits, its first word the CamelCase cause.
        With `require_room`, it also waits until the node's instances fit elsewhere
        (`room_refusal`), checked last: only a repair the pool limits let start pays
        for the fit."""
        async with self.lock:
            if repair in self.admitted:
                return None
            raw = one(nodes_index.get(node_name))
            if raw is None:
                return None  # the state machine reports the missing node
            node = arithmetic.node_view(raw)
            if node.lock == repair:  # it took its node before a restart: it is active
                self.admitted.add(repair)
                return None
            pools = pools_of(node, parse_policies(policies_index))
            all_nodes = self.node_views.all(nodes_index)
            views = repair_views(repairs_index, self.admitted | lock_holders(all_nodes))
            candidate = arithmetic.RepairView(repair, node_name, Phase.PENDING, created)
            made_by = _made_by(repairs_index, node_name, repair)
            for name, spec in pools:
                if name == made_by:
                    closed = window_refusal(spec, datetime.now(UTC))
                    if closed:
                        return f"{closed} (policy {name})"
                pool = arithmetic.pool_of(spec, all_nodes)
                refusal = arithmetic.admit(candidate, spec, pool, views)
                if refusal:
                    return f"{refusal} (policy {name})"
            if require_room and pods_index is not None:
                short = room_refusal(
                    node, pools, all_nodes, nodes_index, pods_index, repairs_index, self.admitted
                )
                if short:
                    return short
            self.admitted.add(repair)
            return None

    def release(self, repair: str) -> None:
        self.admitted.discard(repair)
        self.capacity.wake()


def room_refusal(
    node: arithmetic.NodeView,
    pools: list[tuple[str, RepairPolicySpec]],
    all_nodes: list[arithmetic.NodeView],
    nodes_index: kopf.Index[str, Any],
    pods_index: kopf.Index[str, Any],
    repairs_index: kopf.Index[str, Any],
    admitted: Iterable[str],
) -> str | None:
    """Why the node's instances cannot be evicted yet for want of room (a message
    starting WaitingForRoom), or None: they fit on the other schedulable nodes of its
    pools (of the cluster, for a node in no pool) once the instances of the nodes
    already under repair there took theirs (pitstop.pool.room), or a pool is
    autoscaled, or the node is not Ready (its instances serve nothing now, and
    repairing it is how its room comes back)."""
    if not node.ready or any(spec.autoscaled for _, spec in pools):
        return None
    ours = _to_move(pods_index.get(node.name, ()))
    if not ours:
        return None
    if pools:
        names = {n.name for _, spec in pools for n in arithmetic.pool_of(spec, all_nodes)}
        members = [n for n in all_nodes if n.name in names]
    else:
        members = all_nodes
    # Nodes under repair (locked, or held by a repair admitted and not yet seen
    # locking) take no instances; theirs are on their way out and need room first.
    held = {r.node for r in repair_views(repairs_index, admitted) if r.active}
    held |= {n.name for n in members if n.lock}
    held.discard(node.name)
    rooms, others = [], []
    for n in members:
        if n.name == node.name:
            continue
        pods = pods_index.get(n.name, ())
        if n.name in held:
            others += _to_move(pods)
        elif n.available:
            raw = one(nodes_index.get(n.name))
            if raw is not None:
                rooms.append(room.room_of(raw, pods))
    short = room.shortage(node.name, ours, rooms, others)
    return f"{C.REASON_WAITING_FOR_ROOM}: {short}" if short else None


def _to_move(pods: Iterable[Mapping[str, Any]]) -> list[room.Need]:
    """The instances an eviction would move: not those being deleted already (their
    replacements are made, bound elsewhere or waiting unbound)."""
    return [
        room.need_of(p)
        for p in pods
        if contract.is_instance(p) and not p.get("metadata", {}).get("deletionTimestamp")
    ]


def _made_by(repairs_index: kopf.Index[str, Any], node: str, repair: str) -> str | None:
    """The policy that made `repair` (its label pitstop.dev/policy), if any."""
    for r in repairs_index.get(node, ()):
        if r["name"] == repair:
            return r.get("policy")  # type: ignore[no-any-return]
    return None


def window_refusal(spec: RepairPolicySpec, now: datetime) -> str | None:
    """Why an automatic repair of this policy may not start now: outside its
    maintenance windows (or none can open: an unknown time zone); None inside."""
    bad = windows.invalid_zones(spec.maintenance_windows)
    if bad:
        return f"{C.REASON_INVALID_WINDOW}: unknown time zone {', '.join(bad)}"
    found = windows.state(spec.maintenance_windows, now)
    if found.open:
        return None
    when = _rfc3339(found.next_open) if found.next_open else "never"
    return f"{C.REASON_OUTSIDE_WINDOW}: the next maintenance window opens at {when}"


# --- alerts received by pitstop.pool.alerts, consumed by the policy daemons ---


class AlertInbox:
    """Alerts as the receiver got them, in order, for every policy daemon to take (a
    daemon that starts takes them all: taking one twice changes nothing)."""

    def __init__(self, policies: Waiters, size: int = 10_000) -> None:
        self.items: deque[tuple[int, ledger.Notice]] = deque(maxlen=size)
        self.seq = 0
        self.policies = policies
        """The policy daemons, woken by each alert."""

    def add(
        self,
        name: str,
        labels: Mapping[str, str],
        starts_at: str,
        firing: bool,
        ends_at: datetime | None = None,
    ) -> None:
        self.seq += 1
        notice = ledger.Notice(name, dict(labels), starts_at, ends_at, firing, datetime.now(UTC))
        self.items.append((self.seq, notice))
        self.policies.wake()

    def since(self, seq: int) -> list[tuple[int, ledger.Notice]]:
        return [(n, a) for n, a in self.items if n > seq]


@dataclass
class Pools:
    """What the policy daemons, the admission and the alert receiver share: one per
    operator run, in kopf's memo (`pools(memo)`; pitstop.registry makes it)."""

    admission: Admission
    node_views: NodeViews
    """The pool logic's view of every node (policy daemons and admission)."""
    alerts: AlertInbox

    @classmethod
    def waking(cls, wake: Wakeups) -> Pools:
        """New, waking the run's repairs waiting for room when one ends, and its
        policy daemons when an alert comes."""
        views = NodeViews()
        return cls(Admission(views, wake.capacity), views, AlertInbox(wake.policies))


MEMO_POOLS = "pools"
"""Key of the run's Pools in kopf's operator memo (and so in every object's)."""


def pools(memo: Mapping[str, Any]) -> Pools:
    """This operator run's Pools, from any handler's memo."""
    return cast(Pools, memo[MEMO_POOLS])


# --- the policy daemon ---


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _status(body: kopf.Body) -> RepairPolicyStatus:
    try:
        return RepairPolicyStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:  # the schema admitted it; an older operator's status, say
        return RepairPolicyStatus()


class PolicyDriver:
    def __init__(self, name: str, body: kopf.Body, kube: Kube, logger: kopf.Logger, pools: Pools):
        self.name, self.body, self.kube, self.logger = name, body, kube, logger
        self.pools = pools
        self.written: dict[str, Any] | None = None
        self.posted: dict[str, dict[str, str]] = {}
        """node → Event reason → the message last posted about its fault (forgotten
        when the fault ends, so the next fault of the node is told again)."""
        old = _status(body)
        self.last_repair = old.last_repair_time
        # What an earlier leader (or this daemon before a restart) recorded: a new
        # leader knows the firing alerts and the repairs made without waiting for them.
        self.alerted: dict[ledger.AlertKey, AlertFault] = {
            (a.node, a.alertname): a for a in old.alerts
        }
        self.repairs = ledger.Repairs.of(old.repairs)
        self.storm_told = conditions.is_true(old.conditions, "StormActive")
        """StormActive is told once per storm (the body may lag behind our own writes)."""
        self.seen_alerts = 0  # every alert still in the inbox: taking one twice changes nothing
        self.notifier = Notifier(name, body, kube)
        self.phases: dict[str, str | None] | None = None
        """Phase of each repair of the pool at the last pass, for notifications (None
        before the first pass, which only takes note: a restart tells nothing twice)."""
        self.window_open: bool | None = None

    async def step(
        self,
        now: datetime,
        nodes_index: kopf.Index[str, Any],
        repairs_index: kopf.Index[str, Any],
        policies_index: kopf.Index[str, Any],
    ) -> datetime | None:
        spec = parse_policy(self.body.get("spec") or {})
        if spec is None:
            return None  # the schema admitted it, so this cannot happen; nothing to do
        if self.name not in policies_index:
            raise Gone(f"RepairPolicy {self.name} is gone")
        all_nodes = self.pools.node_views.all(nodes_index)
        pool = arithmetic.pool_of(spec, all_nodes)
        names = {n.name for n in pool}
        others = [
            set(map(id, arithmetic.pool_of(other, pool)))
            for name, other in parse_policies(policies_index)
            if name != self.name
        ]
        conflicts = sorted(n.name for n in pool if any(id(n) in o for o in others))

        faults: dict[str, arithmetic.Fault] = {}
        due_next: datetime | None = None
        for node in pool:
            fault, due = arithmetic.fault_of(spec, node, now)
            if fault is not None:
                faults[node.name] = fault
            elif due is not None:
                due_next = due if due_next is None else min(due_next, due)
        self.take_alerts(spec, names, now)
        for node_name, fault in ledger.alert_faults(self.alerted.values()).items():
            faults.setdefault(node_name, fault)

        admitted = self.pools.admission.admitted
        views = repair_views(repairs_index, admitted | lock_holders(all_nodes))
        for r in self.repairs.follow(faults, views, now):
            until = _rfc3339(r.declined_until) if r.declined_until else "?"
            self.post(
                "Normal",
                "NodeRepairDeclined",
                f"{r.node}: {r.cause}: {r.repair} was deleted; no new repair for this fault"
                f" until {until} (a new fault of the node is repaired)",
                r.node,
            )
        active = [r for r in views if r.node in names and r.active]
        limit = arithmetic.max_unhealthy(spec, len(pool))
        storm = len(faults) > limit
        suppressed: list[str] = []
        reason = message = None
        why: dict[str, tuple[str, str]] = {}
        """Suppressed node → (reason, message): each node's Events say its own."""
        excluded = {n.name for n in pool if n.excluded}
        window = windows.state(spec.maintenance_windows, now)
        bad_zones = windows.invalid_zones(spec.maintenance_windows)
        closed = window_refusal(spec, now)
        for node_name, fault in sorted(faults.items()):
            repair = arithmetic.repair_name(node_name, fault.key)
            mine = [r for r in views if r.node == node_name]
            if any(r.name == repair for r in mine) or any(
                not r.dry_run and (r.active or r.waiting) for r in mine
            ):
                continue  # this fault has its repair, or the node is being repaired anyway
            declined = self.repairs.declined(repair, now)
            if declined is not None:
                due_next = declined if due_next is None else min(due_next, declined)
                continue  # a person deleted its repair (told by NodeRepairDeclined)
            if node_name in conflicts:
                suppressed.append(node_name)
                reason, message = "PoolConflict", f"{node_name} is in several pools"
            elif node_name in excluded:
                suppressed.append(node_name)
                reason = C.REASON_NODE_EXCLUDED
                message = (
                    f"{node_name} is labelled {C.LABEL_EXCLUDE_FROM_REPAIR}=true:"
                    " no automatic repair (a NodeRepair made by hand still runs)"
                )
            elif spec.paused:
                suppressed.append(node_name)
                reason, message = "Paused", "the policy is paused"
            elif storm:
                suppressed.append(node_name)
                reason = "MaxUnhealthyExceeded"
                message = (
                    f"{len(faults)} of {len(pool)} nodes unhealthy, more than maxUnhealthy"
                    f" {spec.max_unhealthy} ({limit}): no new automatic repairs"
                )
            elif closed:
                suppressed.append(node_name)
                reason = C.REASON_INVALID_WINDOW if bad_zones else C.REASON_OUTSIDE_WINDOW
                message = closed.split(": ", 1)[1]
            else:
                await self.create(spec, node_name, repair, fault, now)
                continue
            why[node_name] = (reason, message)
        # A fault that got its repair is told by NodeRepairCreated (which names the
        # cause); one that did not is a Warning that nobody repairs it yet.
        for node_name in suppressed:
            cause = faults[node_name].cause
            told, text = why[node_name]
            if told == C.REASON_NODE_EXCLUDED:  # the node owner's choice: told, no warning
                self.post("Normal", told, f"{cause}; {text}", node_name)
                continue
            self.post("Warning", "UnhealthyNodeDetected", f"{node_name}: {cause}", node_name)
            self.post("Warning", "NodeRepairSuppressed", f"{node_name}: {text}", node_name)
        for node_name in [n for n in self.posted if n not in faults]:
            del self.posted[node_name]  # its fault ended: its next one is told again
        alert_due = ledger.next_alert_change(self.alerted.values())
        if alert_due is not None:
            due_next = alert_due if due_next is None else min(due_next, alert_due)
        window_due = windows.next_change(window) if spec.maintenance_windows else None
        if window_due is not None:
            due_next = window_due if due_next is None else min(due_next, window_due)
        if window.open and self.window_open is False:
            # A window opened: the policy's Pending repairs may start.
            self.pools.admission.capacity.wake()
        self.window_open = window.open
        self.notify(spec, names, repairs_index)

        status = RepairPolicyStatus(
            nodes=len(pool),
            available_nodes=sum(1 for n in pool if n.available),
            unhealthy_nodes=len(faults),
            active_repairs=len(active),
            suppressed=Suppression(
                active=bool(suppressed), reason=reason, message=message, nodes=suppressed
            ),
            last_repair_time=self.last_repair,
            alerts=sorted(self.alerted.values(), key=lambda a: (a.node, a.alertname)),
            repairs=self.repairs.records(),
            maintenance_window=WindowStatus(
                open=window.open and not bad_zones,
                closes_at=window.closes_at,
                next_open_time=window.next_open,
            )
            if spec.maintenance_windows
            else None,
            observed_generation=self.body.get("metadata", {}).get("generation"),
        )
        self.export(status, arithmetic.min_available(spec, len(pool)), limit, storm)
        old = _status(self.body)
        status.conditions = old.conditions
        gen = status.observed_generation
        storm_message = (
            f"{len(faults)} of {len(pool)} nodes unhealthy; maxUnhealthy {spec.max_unhealthy}"
            f" allows {limit}" + (": no new automatic repairs" if storm else "")
        )
        if storm and not self.storm_told:
            kopf.event(self.body, type="Warning", reason="StormActive", message=storm_message)
        self.storm_told = storm
        status.conditions = conditions.set_condition(
            status.conditions,
            "StormActive",
            storm,
            "MaxUnhealthyExceeded" if storm else "WithinLimits",
            storm_message or "",
            now,
            gen,
        )
        conflict_msg = f"nodes in several pools: {', '.join(conflicts)}" if conflicts else "none"
        status.conditions = conditions.set_condition(
            status.conditions,
            "PoolConflict",
            bool(conflicts),
            "OverlappingPools" if conflicts else "NoOverlap",
            conflict_msg,
            now,
            gen,
        )
        ready = f"{len(pool)} nodes, {len(faults)} unhealthy, {len(active)} repairs active"
        if spec.paused:
            ready += "; paused"
        if spec.maintenance_windows and not bad_zones:
            ready += "; maintenance window " + (
                f"open until {_rfc3339(window.closes_at)}"
                if window.closes_at
                else "open"
                if window.open
                else f"opens at {_rfc3339(window.next_open)}"
                if window.next_open
                else "never opens"
            )
        status.conditions = kstatus.apply(
            status.conditions,
            kstatus.of_policy(conflicts, storm, storm_message, bad_zones, ready),
            now,
            gen,
        )
        await self.write_status(status)
        return due_next

    def export(
        self, status: RepairPolicyStatus, min_available: int, max_unhealthy: int, storm: bool
    ) -> None:
        """The pool's health as metrics, one series per policy and gauge."""
        for gauge, value in (
            (metrics.POOL_NODES, status.nodes),
            (metrics.POOL_AVAILABLE, status.available_nodes),
            (metrics.POOL_MIN_AVAILABLE, min_available),
            (metrics.POOL_UNHEALTHY, status.unhealthy_nodes),
            (metrics.POOL_MAX_UNHEALTHY, max_unhealthy),
            (metrics.POOL_ACTIVE_REPAIRS, status.active_repairs),
            (metrics.POOL_STORM, int(storm)),
        ):
            gauge.labels(self.name).set(value)

    def notify(
        self, spec: RepairPolicySpec, pool: set[str], repairs_index: kopf.Index[str, Any]
    ) -> None:
        """Tells the policy's webhook which repairs of its pool started, succeeded or
        failed since the last pass (pool/notices.py)."""
        seen = [
            notices.Seen(
                name=r["name"],
                node=node,
                phase=r["phase"],
                reason=r.get("reason"),
                message=r.get("message"),
                policy=r.get("policy"),
            )
            for node, store in list(repairs_index.items())
            if node in pool
            for r in store
            if not r.get("dryRun")
        ]
        before, self.phases = self.phases, {s.name: s.phase for s in seen}
        if before is None or spec.notifications is None:
            return
        for notice in notices.transitions(before, seen):
            self.notifier.send(spec.notifications, notice)

    def take_alerts(self, spec: RepairPolicySpec, pool: set[str], now: datetime) -> None:
        for seq, notice in self.pools.alerts.since(self.seen_alerts):
            self.seen_alerts = seq
            ledger.take_alert(self.alerted, spec, pool, notice)
        ledger.live_alerts(self.alerted, spec, pool, now)

    async def create(
        self, spec: RepairPolicySpec, node: str, name: str, fault: arithmetic.Fault, now: datetime
    ) -> None:
        template = spec.repair_template.spec.wire()
        template["reason"] = template.get("reason") or fault.cause
        body = {
            "apiVersion": C.API_VERSION,
            "kind": "NodeRepair",
            "metadata": {"name": name, "labels": {C.LABEL_POLICY: self.name}},
            "spec": {**template, "nodeName": node, "requireRoom": spec.require_room},
        }
        try:
            await self.kube.request(
                "POST", f"/apis/{C.GROUP}/{C.VERSION}/{C.NODEREPAIR_PLURAL}", body
            )
        except ApiError as e:
            if e.status == 409:
                # Made before (e.g. by this policy before a restart): the same fault.
                self.repairs.made_one(fault, name, now)
                return
            self.post("Warning", "NodeRepairCreateFailed", f"{node}: {e.message}", node)
            return
        self.repairs.made_one(fault, name, now)
        self.last_repair = now
        self.post("Normal", "NodeRepairCreated", f"{name} for {node}: {fault.cause}", node)

    def post(self, type_: str, reason: str, message: str, node: str) -> None:
        """An Event about a node's fault, unless the same was told about it last."""
        told = self.posted.setdefault(node, {})
        if told.get(reason) == message:
            return
        told[reason] = message
        kopf.event(self.body, type=type_, reason=reason, message=message)
        logs.event("RepairPolicy", self.name, type_, reason, message)

    async def write_status(self, status: RepairPolicyStatus) -> None:
        wire = status.wire()
        if wire == self.written:
            return
        patch = merge_patch(self.written or dict(self.body.get("status") or {}), wire)
        try:
            await self.kube.patch_status(C.REPAIRPOLICY_PLURAL, self.name, patch)
        except ApiError as e:
            if e.status == 404:
                raise Gone(f"RepairPolicy {self.name} is gone") from e
            raise
        self.written = wire


@kopf.daemon(  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
    C.GROUP, C.VERSION, C.REPAIRPOLICY_PLURAL, cancellation_timeout=5.0, backoff=2.0
)
async def watch_pool(
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    nodes_by_name: kopf.Index[str, Any],
    repairs_by_node: kopf.Index[str, Any],
    policies_by_name: kopf.Index[str, Any],
    **_: Any,
) -> None:
    driver = PolicyDriver(name, body, memo["kube"], logger, pools(memo))
    policies = wakeups(memo).policies
    waker = policies.register()
    try:
        while not stopped:
            waker.clear()
            now = datetime.now(UTC)
            try:
                due = await driver.step(now, nodes_by_name, repairs_by_node, policies_by_name)
            except Gone:
                # Deleted before kopf put its finalizer on it: kopf never stops this daemon.
                return
            except (ApiError, OSError, TimeoutError) as e:
                logger.warning(f"Pool check failed, retrying in 1s: {e}")
                due = now + timedelta(seconds=1)
            timeout = RESYNC
            if due is not None:
                timeout = min(RESYNC, max(0.0, (due - datetime.now(UTC)).total_seconds()))
            await nap(waker, stopped, timeout)
    finally:
        policies.unregister(waker)
        forget_pool(name)
        await driver.notifier.close()


def forget_pool(policy: str) -> None:
    """Its series go with its daemon (the policy deleted, or leadership lost)."""
    for gauge in metrics.POOL_GAUGES:
        with contextlib.suppress(KeyError):  # never exported
            gauge.remove(policy)
