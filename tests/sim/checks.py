"""The invariants of DESIGN.md, judged against the model's truth, never against what
the operator believed. Writes are judged when the API server accepts them
(`pod_touched`, `evicted`, `node_written`, `status_written`); the state of the
cluster after every step (`after_step`); liveness once the faults stop (`at_end`).

Each check names its invariant and says in one line what broke."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pitstop import constants as C
from pitstop.pool import arithmetic
from pitstop.pool.daemon import parse_policy
from tests.sim.cluster import Cluster, Pod
from tests.sim.loop import EPOCH

if TYPE_CHECKING:
    from tests.sim.run import Simulation

FINAL = ("Succeeded", "Failed", "Aborted")
ORDER = {
    p: n
    for n, p in enumerate(
        (
            None,
            "Pending",
            "Cordoning",
            "Deregistering",
            "WaitingForTasks",
            "Evicting",
            "Repairing",
            "Verifying",
            "Uncordoning",
        )
    )
}
MARK_GRACE = 120.0
"""How long a pod may carry pitstop's marks with no repair holding its node (watch
lag, a release in progress) before invariant 9 counts it as kept for good."""


@dataclass(frozen=True)
class Break:
    invariant: str
    step: int
    at: float
    message: str

    def line(self) -> str:
        where = f"step {self.step} (t={self.at:.2f}s)"
        return f"invariant {self.invariant} broken at {where}: {self.message}"


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (at - EPOCH).total_seconds()


class Checks:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.breaks: list[Break] = []
        self.unowned: dict[str, float] = {}
        """Pod → since when it has carried marks with no repair holding its node."""
        self.uncovered = 0
        """minAvailable judgements skipped: the operator's view of the nodes lagged."""
        self.evictions = 0
        self.lost_status: set[str] = set()
        """Repairs a status write of which landed while its answer was lost."""
        self.released: dict[str, str] = {}
        self.released_at: dict[str, float] = {}
        """Node → the repair whose lock it carried last."""

    @property
    def c(self) -> Cluster:
        return self.sim.cluster

    def fail(self, invariant: str, message: str) -> None:
        self.breaks.append(Break(invariant, self.sim.step, self.c.now, message))

    def crash(self, what: str, e: BaseException) -> None:
        tb = "".join(traceback.format_exception_only(type(e), e)).strip()
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" at {where.filename.split('/operator/')[-1]}:{where.lineno}" if where else ""
        self.fail("7", f"{what} raised {tb}{at}")

    # --- helpers ---

    def repair(self, name: str | None) -> dict[str, Any] | None:
        return self.c.repairs.get(name) if name else None

    def phase(self, name: str | None) -> str | None:
        r = self.repair(name)
        return (r.get("status") or {}).get("phase") if r else None

    @staticmethod
    def _condition(r: dict[str, Any], type_: str) -> str | None:
        for cond in (r.get("status") or {}).get("conditions") or []:
            if cond.get("type") == type_:
                return str(cond.get("status"))
        return None

    # --- at the server ---

    def pod_touched(self, pod: Pod, what: str) -> None:
        """Invariant 3: nothing touches an instance before its node is cordoned under a lock."""
        node = pod.node
        if node is None:
            return
        holder = self.c.lock(node)
        if holder is None or not self.c.cordoned(node):
            last = self.released.get(node)
            if last is not None:
                r = self.repair(last)
                gone = "gone" if r is None else "being deleted" if self._deleting(r) else "kept"
                last = f" (last held by {last}, {gone})"
            self.fail(
                "3", f"{what} on {pod.key} while {node} is not cordoned under a lock{last or ''}"
            )
        elif self.repair(holder) is None:
            self.fail("3", f"{what} on {pod.key} under the lock of {holder} (gone)")

    def _state(self, r: dict[str, Any] | None) -> str:
        """The repair's own account: what its conditions say about the drain."""
        if r is None:
            return "no repair holds the node"
        conds = {
            c.get("type"): f"{c.get('type')}={c.get('status')} {c.get('reason')}"
            for c in (r.get("status") or {}).get("conditions") or []
        }
        said = [conds[t] for t in (C.COND_DEREGISTERED, C.COND_TASKS_DRAINED) if t in conds]
        return f"{r['metadata']['name']}: {', '.join(said) or 'no drain conditions'}"

    def evicted(self, pod: Pod) -> None:
        self.evictions += 1
        self.pod_touched(pod, "eviction")
        holder = self.repair(self.c.lock(pod.node) if pod.node else None)
        drain = (holder or {}).get("spec", {}).get("drain") or {}
        timeout = float(drain.get("taskTimeoutSeconds", 1800))
        now = self.c.now
        if pod.tasks > 0:
            marked = _seconds(pod.annotations.get(C.ANNOTATION_DRAINING))
            own = marked is not None and now >= marked + timeout
            if not (own and drain.get("onTaskTimeout", "Evict") == "Evict"):
                since = f"marked {now - marked:.0f}s ago" if marked is not None else "never marked"
                if pod.unmarked_at is not None and now - pod.unmarked_at < 600:
                    since += (
                        f", its drain signal was removed {now - pod.unmarked_at:.0f}s ago by a"
                        " give-back"
                    )
                self.fail(
                    "1",
                    f"{pod.key} evicted with {pod.tasks} tasks in flight ({since}, task timeout"
                    f" {timeout:.0f}s, onTaskTimeout {drain.get('onTaskTimeout', 'Evict')};"
                    f" {self._state(holder)})",
                )
        if pod.app.gated and self.c.routed(pod):
            closed = pod.gate_closed_at
            if closed is None or now < closed + timeout - 1.0:
                since = (
                    f"gate closed {now - closed:.0f}s ago" if closed is not None else "gate open"
                )
                if not pod.app.labelled:
                    since += ", unlabelled: its kind is inferred from the EndpointSlices"
                self.fail(
                    "2",
                    f"{pod.key} evicted while still a ready endpoint ({since}, deregistration"
                    f" timeout {timeout:.0f}s; {self._state(holder)})",
                )

    def node_written(self, node: str, before: dict[str, Any], after: dict[str, Any]) -> None:
        was = (before["metadata"].get("annotations") or {}).get(C.ANNOTATION_REPAIR)
        now = (after["metadata"].get("annotations") or {}).get(C.ANNOTATION_REPAIR)
        if was == now:
            return
        if was is not None:
            self.released[node] = was
            self.released_at[node] = self.c.now
            r = self.repair(was)
            phase = self.phase(was)
            deleting = r is not None and r["metadata"].get("deletionTimestamp")
            verified = r is not None and self._condition(r, C.COND_VERIFIED) == "True"
            gone = r is None or deleting or phase in ("Failed", "Succeeded", "Aborted")
            if not (verified or gone):
                self.fail("3", f"{node} released from {was} (phase {phase}) before Verified=True")
        if now is not None:
            self._admitted(node, now, after)

    def _admitted(self, node: str, repair: str, after: dict[str, Any]) -> None:
        """Invariant 5 when a lock is taken: the pool's limits."""
        for name, body in sorted(self.c.policies.items()):
            spec = parse_policy(body["spec"])
            if spec is None:
                continue
            views = {
                n: arithmetic.node_view(after if n == node else b) for n, b in self.c.nodes.items()
            }
            pool = [v for v in views.values() if arithmetic.in_pool(spec, v)]
            if node not in {v.name for v in pool}:
                continue
            active = {v.lock for v in pool if v.lock and self.phase(v.lock) not in FINAL}
            if len(active) > spec.max_concurrent_repairs:
                names = ", ".join(self._named(a) for a in sorted(a for a in active if a))
                self.fail(
                    "5",
                    f"{repair} took {node}: {len(active)} active repairs in pool {name}"
                    f" ({names}), max {spec.max_concurrent_repairs}",
                )
            before = arithmetic.node_view(self.c.nodes[node])
            if not before.available:
                continue
            proc = self.sim.proc
            if proc is None or proc.streams["nodes"].pending or proc.streams["nodes"].broken:
                self.uncovered += 1  # the view lagged: no judgement either way
                continue
            floor = arithmetic.min_available(spec, len(pool))
            # A node that failed on its own in the last half minute may have failed
            # after the admission read the pool: the world's doing, not pitstop's.
            left = sum(
                1 for v in pool if not self._held(v) and (v.available or self._just_failed(v))
            )
            if left < floor:
                since = self.c.now - self.released_at.get(node, float("-inf"))
                hint = ""
                if since < 30:
                    hint = f" ({self.released[node]} released it {since:.1f}s before)"
                self.fail(
                    "5",
                    f"{repair} took {node}: {left} of {len(pool)} nodes available, the pool"
                    f" {name} keeps {floor}{hint}",
                )

    @staticmethod
    def _deleting(r: dict[str, Any]) -> bool:
        return bool(r["metadata"].get("deletionTimestamp"))

    def _named(self, repair: str) -> str:
        r = self.repair(repair)
        deleting = r is not None and r["metadata"].get("deletionTimestamp")
        return f"{repair} (being deleted)" if deleting else repair

    def _just_failed(self, v: arithmetic.NodeView) -> bool:
        status, since = v.conditions.get("Ready", ("Unknown", None))
        if status == "True" or since is None:
            return False
        return (since - EPOCH).total_seconds() > self.c.now - 30.0

    def _held(self, v: arithmetic.NodeView) -> bool:
        return v.lock is not None and self.phase(v.lock) not in FINAL

    def status_written(self, name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Invariant 6: a repair never goes back (a restart resumes where it stood).
        Invariant 1: RepairAllowed (Repairing) is written only once no instance is on
        the node any more: the repair itself would take down one still there, tasks
        and all, however late the operator's watch showed it bound."""
        a, b = old.get("phase"), new.get("phase")
        if a == b:
            return
        if b == "Repairing" and ORDER.get(a, 99) < ORDER["Repairing"]:
            node = self.c.repairs[name]["spec"]["nodeName"]
            left = sorted(p.key for p in self.c.pods.values() if p.node == node)
            if left:
                self.fail(
                    "1",
                    f"{name} declared {node} ready for repair with {len(left)} instances"
                    f" still on it ({', '.join(left[:3])})",
                )
        if b in FINAL:
            # Deleting a Failed repair aborts it; nothing else leaves a final phase.
            if a in FINAL and not (a == "Failed" and b == "Aborted"):
                self.fail("6", f"{name} went from {a} to {b}")
            return
        lost = ""
        if name in self.lost_status:
            lost = " (the answer to one of its status writes was lost)"
        if a in FINAL:
            self.fail("6", f"{name} went from {a} back to {b}{lost}")
        elif ORDER.get(b, 99) < ORDER.get(a, 0) and not (a == "Verifying" and b == "Repairing"):
            self.fail("6", f"{name} went back from {a} to {b}{lost}")

    def repair_gone(self, name: str, body: dict[str, Any]) -> None:
        node = body["spec"].get("nodeName")
        if node in self.c.nodes and self.c.lock(node) == name:
            self.fail("4", f"{name} deleted while {node} still carries its lock")

    # --- after every step ---

    def after_step(self, grace: float = MARK_GRACE) -> None:
        c = self.c
        active: dict[str, list[str]] = {}
        for name, r in sorted(c.repairs.items()):
            phase = (r.get("status") or {}).get("phase")
            if phase in (None, "Pending", *FINAL) or r["metadata"].get("deletionTimestamp"):
                continue
            active.setdefault(r["spec"]["nodeName"], []).append(name)
        for node, names in active.items():
            if len(names) > 1:
                self.fail("5", f"{node} has {len(names)} active repairs: {', '.join(names)}")
        for node in c.nodes:
            holder = c.lock(node)
            if holder is None:
                if c.tainted(node):
                    self.fail("4", f"{node} carries pitstop's taint without a lock")
                continue
            r = self.repair(holder)
            if r is None:
                self.fail("4", f"{node} cordoned by {holder}, which no longer exists")
            elif self.phase(holder) in ("Succeeded", "Aborted") and not r["metadata"].get(
                "deletionTimestamp"
            ):
                self.fail("4", f"{node} still locked by {holder}, {self.phase(holder)}")
        now = c.now
        for pod in c.pods.values():
            marked = C.ANNOTATION_DRAINING in pod.annotations or (
                pod.serving == "False" and pod.serving_reason == "NodeRepair"
            )
            if not marked or pod.deleting_at is not None or pod.node is None:
                self.unowned.pop(pod.name, None)
                continue
            holder = c.lock(pod.node)
            ended = self.phase(holder) in ("Succeeded", "Aborted")
            if holder is not None and not ended and self.repair(holder) is not None:
                self.unowned.pop(pod.name, None)
                continue
            since = self.unowned.setdefault(pod.name, now)
            if now - since >= grace:
                what = "pitstop.dev/draining" if C.ANNOTATION_DRAINING in pod.annotations else ""
                what = what or "a closed serving gate"
                self.fail(
                    "9",
                    f"{pod.key} on {pod.node} keeps {what} {now - since:.0f}s after its repair"
                    f" let go of the node (lock: {holder or 'none'})",
                )
                self.unowned[pod.name] = float("inf")  # reported once

    def at_end(self) -> None:
        """Invariant 6, liveness: once the faults stop, every repair ends."""
        for name, r in sorted(self.c.repairs.items()):
            phase = (r.get("status") or {}).get("phase")
            if phase not in FINAL:
                self.fail("6", f"{name} did not finish once the faults stopped: phase {phase}")
        self.after_step(grace=0.0)
