"""What a RepairPolicy remembers in its status, so that a restarted or new leader
knows it: the firing alerts that mark its nodes unhealthy, and the NodeRepairs it
made for faults that still hold (and which of those a person deleted). Pure: no
kopf, no Kubernetes client; pitstop.pool.daemon reads and writes the status.

Why the policy's status and not node annotations: the policy owns both records
(an alert counts for the pools whose policy lists it, a repair was made by one
policy), the operator already writes that status on every pass (no extra write,
no new RBAC), and the nodes, which kubelets and other controllers update all the
time, stay untouched."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pitstop.models import RepairPolicySpec
from pitstop.models.repairpolicy import AlertFault, PolicyRepair
from pitstop.pool.arithmetic import Fault, RepairView, repair_name

ALERT_STALE = timedelta(hours=3)
"""A firing alert with no new firing notice for this long is dropped: Alertmanager
repeats a firing alert every repeat_interval (1h in manifests/examples/alertmanager.yml)
and sends it resolved when it ends; this bounds an alert whose resolution was lost."""
DECLINE_FOR = timedelta(hours=24)
"""After a person deletes an automatic repair, the same fault gets no new one this long."""
UNSEEN_FOR = timedelta(seconds=60)
"""A repair made in this process counts as gone only once the index has shown it, or
this long after its creation (the watch shows a new object well within that)."""

AlertKey = tuple[str, str]
"""(node, alertname)"""


@dataclass(frozen=True)
class Notice:
    """One alert of an Alertmanager notification."""

    name: str
    labels: Mapping[str, str]
    starts_at: str
    ends_at: datetime | None
    firing: bool
    received: datetime


def take_alert(
    alerts: dict[AlertKey, AlertFault], spec: RepairPolicySpec, pool: set[str], notice: Notice
) -> None:
    """Records a firing notice of an alert the policy lists for a node of its pool;
    a resolved one forgets it (a running repair goes on)."""
    if spec.alerts is None or notice.name not in spec.alerts.names:
        return
    node = notice.labels.get(spec.alerts.node_label)
    if node is None or node not in pool:
        return
    key = (node, notice.name)
    if not notice.firing:
        alerts.pop(key, None)
        return
    old = alerts.get(key)
    received = notice.received
    if old is not None and old.starts_at == notice.starts_at:
        received = max(received, old.last_received)  # a replayed notice is no newer
    alerts[key] = AlertFault(
        node=node,
        alertname=notice.name,
        starts_at=notice.starts_at,
        ends_at=notice.ends_at,
        last_received=received,
    )


def live_alerts(
    alerts: dict[AlertKey, AlertFault], spec: RepairPolicySpec, pool: set[str], now: datetime
) -> None:
    """Drops the alerts that no longer count: ended (endsAt passed), stale (no firing
    notice for ALERT_STALE), no longer listed, or their node left the pool."""
    names = set(spec.alerts.names) if spec.alerts is not None else set()
    for key, a in list(alerts.items()):
        ended = a.ends_at is not None and a.ends_at <= now
        stale = now - a.last_received > ALERT_STALE
        if ended or stale or a.alertname not in names or a.node not in pool:
            del alerts[key]


def alert_faults(alerts: Iterable[AlertFault]) -> dict[str, Fault]:
    """One fault per node (the alert first by name, if several fire for it)."""
    faults: dict[str, Fault] = {}
    for a in sorted(alerts, key=lambda a: (a.node, a.alertname)):
        key = f"alert-{a.alertname}/{a.starts_at}"
        faults.setdefault(a.node, Fault(a.node, f"alert {a.alertname}", key))
    return faults


def next_alert_change(alerts: Iterable[AlertFault]) -> datetime | None:
    """When the earliest kept alert ends or goes stale (the policy wakes then)."""
    due = [
        min(a.last_received + ALERT_STALE, a.ends_at or a.last_received + ALERT_STALE)
        for a in alerts
    ]
    return min(due, default=None)


@dataclass
class Repairs:
    """The repairs a policy made for faults that hold, keyed by repair name."""

    made: dict[str, PolicyRepair] = field(default_factory=dict)
    unseen: dict[str, datetime] = field(default_factory=dict)
    """Made by this process and not yet shown by the index: name → creation time."""

    @classmethod
    def of(cls, recorded: Iterable[PolicyRepair]) -> Repairs:
        return cls({r.repair: r for r in recorded})

    def made_one(self, fault: Fault, name: str, now: datetime) -> None:
        self.made[name] = PolicyRepair(node=fault.node, repair=name, cause=fault.cause)
        self.unseen[name] = now

    def declined(self, name: str, now: datetime) -> datetime | None:
        """Until when the fault of repair `name` is declined (None: it is not)."""
        r = self.made.get(name)
        if r is None or r.declined_until is None or r.declined_until <= now:
            return None
        return r.declined_until

    def follow(
        self, faults: Mapping[str, Fault], views: Sequence[RepairView], now: datetime
    ) -> list[PolicyRepair]:
        """Brings the record up to date with the pool's faults and the NodeRepairs
        that exist; returns the repairs newly found deleted (their faults declined).

        A record goes with its fault (healed, or changed: a new transition or alert
        episode is a new fault with a new repair name) and when its decline ends. A
        repair of a current fault that exists is recorded (made before a crash cut
        the status write short, or by an older version). A recorded repair that is
        being deleted or is gone was deleted by someone: its fault is declined until
        DECLINE_FOR from now, also if the repair had finished."""
        current = {repair_name(node, f.key): f for node, f in faults.items()}
        existing = {v.name: v for v in views}
        for name in list(self.made):
            r = self.made[name]
            expired = r.declined_until is not None and r.declined_until <= now
            if name not in current or expired:
                del self.made[name]
        for name, fault in current.items():
            if name in existing and name not in self.made:
                self.made[name] = PolicyRepair(node=fault.node, repair=name, cause=fault.cause)
        for name, made_at in list(self.unseen.items()):
            if name in existing or name not in self.made or now - made_at > UNSEEN_FOR:
                del self.unseen[name]
        found = []
        for name, r in list(self.made.items()):
            if r.declined_until is not None:
                continue
            view = existing.get(name)
            if (view is None and name not in self.unseen) or (view is not None and view.deleting):
                self.made[name] = r.model_copy(update={"declined_until": now + DECLINE_FOR})
                found.append(self.made[name])
        return found

    def records(self) -> list[PolicyRepair]:
        return sorted(self.made.values(), key=lambda r: (r.node, r.repair))
