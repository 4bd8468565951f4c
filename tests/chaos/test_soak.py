"""The chaos soak: repairs across a pool of fake nodes under a live simulated FaaS load,
while the operator is SIGKILLed and kube-apiserver and etcd are restarted at random
moments; invariants 1-6 checked continuously from outside (tests/e2e/invariants.py).
Goal: every repair Succeeded, no invariant broken or left unseen, no node left
cordoned, tainted or locked; repairs force-deleted without their finalizer have their
orphaned locks swept by the operator.

Most repairs come from a RepairPolicy (KernelDeadlock faults, maxConcurrentRepairs and
minAvailable binding), some are made directly; all are Manual, finished by a repair
crew. The last repairs are held back until the injector has done its count, so every
fault lands while repairs are in flight.

The short run is the default (`make e2e-chaos`); the long one by environment:
  CHAOS_REPAIRS=100 CHAOS_KILLS=50 CHAOS_APISERVER_RESTARTS=5 CHAOS_ETCD_RESTARTS=2
  CHAOS_NODES (50), CHAOS_INSTANCES (per Deployment, 20), CHAOS_ORPHANS (2),
  CHAOS_SECONDS (the injector's window; default from the counts), CHAOS_SEED,
  CHAOS_TIMEOUT (for the repairs to end after the window, 900 s)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.chaos.conftest import SUMMARY, ControlPlane
from tests.chaos.injector import APISERVER, ETCD, KILL, Injector, Supervisor
from tests.e2e.faas import FaasRuntime
from tests.e2e.invariants import FINAL, Monitor
from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.operator import Operator
from tests.e2e.policies_helpers import (
    DEADLOCK,
    Policies,
    RepairCrew,
    new_client,
    policy_spec,
    selector,
    set_fault,
)
from tests.e2e.repairs import GROUP, PLURAL, VERSION, force_delete
from tests.e2e.workloads import deployment, ready_pods, running_pods, service

pytestmark = pytest.mark.e2e
T = TypeVar("T")
TRANSIENT = (urllib3.exceptions.HTTPError, OSError)
TEMPLATE = {
    "spec": {
        "drain": {"taskTimeoutSeconds": 1800},
        "repair": {"strategy": "Manual", "timeoutSeconds": 1800},
        # generous: an API server restart in the middle must not fail a verification
        "verify": {"stableSeconds": 1, "timeoutSeconds": 600},
    }
}
MAX_ACTIVE = 3
MIN_AVAILABLE = "90%"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


@dataclass(frozen=True)
class Config:
    repairs: int = env_int("CHAOS_REPAIRS", 20)
    kills: int = env_int("CHAOS_KILLS", 10)
    apiserver: int = env_int("CHAOS_APISERVER_RESTARTS", 1)
    etcd: int = env_int("CHAOS_ETCD_RESTARTS", 1)
    nodes: int = env_int("CHAOS_NODES", 50)
    instances: int = env_int("CHAOS_INSTANCES", 20)
    orphans: int = env_int("CHAOS_ORPHANS", 2)
    seed: int = env_int("CHAOS_SEED", int(time.time()))
    timeout: int = env_int("CHAOS_TIMEOUT", 900)

    @property
    def seconds(self) -> float:
        """Room for the operator to act between kills, and for restarts to finish."""
        default = max(60, 6 * self.kills + 25 * self.apiserver + 15 * self.etcd)
        return float(env_int("CHAOS_SECONDS", default))


class Crew(RepairCrew):
    interval = 0.5
    transient = TRANSIENT


def retrying(what: str, call: Callable[[], T], timeout: float = 180) -> T:
    """`call` until it answers: the API server may be restarting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ApiException as e:
            if (e.status < 500 and e.status != 429) or time.monotonic() > deadline:
                raise
        except TRANSIENT:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: the API did not answer for {timeout}s") from None
        time.sleep(0.5)


@dataclass
class Feeder:
    """Makes the repairs: faults for the policy, some NodeRepairs directly, and the
    repairs to force-delete, only on nodes nothing is happening to."""

    cluster: Cluster
    pool: Pool
    monitor: Monitor
    config: Config
    rand: random.Random
    faults: int = 0
    direct: int = 0
    expected: int = 0
    force_deleted: set[str] = field(default_factory=set)
    lost_races: set[str] = field(default_factory=set)
    orphan_nodes: set[str] = field(default_factory=set)
    waiting: dict[str, set[str]] = field(default_factory=dict)
    """node faulted → the repairs it had then (cleared once the policy's new one shows)"""
    to_orphan: dict[str, str] = field(default_factory=dict)
    """repair to force-delete once it holds its node → node"""

    def busy_nodes(self) -> set[str]:
        m = self.monitor
        with m._lock:
            busy = {r["spec"]["nodeName"] for r in m.repairs.values() if phase(r) not in FINAL}
            busy |= {n for n, h in m.node_history.items() if h and h[-1].lock}
        return busy | set(self.waiting) | set(self.to_orphan.values())

    def seen_policy_repairs(self) -> None:
        """Forgets the faults whose repair the policy has made."""
        by_node: dict[str, set[str]] = {}
        with self.monitor._lock:
            for name, r in self.monitor.repairs.items():
                by_node.setdefault(r["spec"]["nodeName"], set()).add(name)
        for node, before in list(self.waiting.items()):
            if by_node.get(node, set()) - before:
                del self.waiting[node]

    def in_flight(self) -> int:
        m = self.monitor
        with m._lock:
            return len(self.waiting) + sum(1 for r in m.repairs.values() if phase(r) not in FINAL)

    def step(self, hold: bool) -> None:
        self.seen_policy_repairs()
        self.force_delete_held()
        if self.expected >= self.config.repairs and len(self.to_orphan) + len(
            self.force_deleted | self.lost_races
        ) >= min(self.config.orphans, self.config.repairs):
            return
        if hold or self.in_flight() >= MAX_ACTIVE + 2:
            return
        free = sorted(set(self.pool.names) - self.busy_nodes())
        if not free:
            return
        node = self.rand.choice(free)
        made = len(self.force_deleted | self.lost_races) + len(self.to_orphan)
        if made < self.config.orphans and self.rand.random() < 0.2:
            name = f"chaos-orphan-{made}"
            self.create(node, name)
            self.to_orphan[name] = node
        elif self.expected < self.config.repairs and self.rand.random() < 0.25:
            self.direct += 1
            self.expected += 1
            self.create(node, f"chaos-direct-{self.direct}")
        elif self.expected < self.config.repairs:
            with self.monitor._lock:
                before = {
                    n for n, r in self.monitor.repairs.items() if r["spec"]["nodeName"] == node
                }
            self.waiting[node] = before
            retrying("fault", lambda: set_fault(self.cluster, node, DEADLOCK))
            self.faults += 1
            self.expected += 1

    def create(self, node: str, name: str) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodeRepair",
            "metadata": {"name": name},
            "spec": {"nodeName": node, "reason": "Chaos", **TEMPLATE["spec"]},
        }

        def call() -> None:
            try:
                self.cluster.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
            except ApiException as e:
                if e.status != 409:  # a retry after the first create went through
                    raise

        retrying(f"create {name}", call)

    def force_deleter(self, name: str) -> Callable[[], bool]:
        return lambda: force_delete(self.cluster, name)

    def force_delete_held(self) -> None:
        """Force-deletes each repair to orphan once its lock is on the node."""
        for name, node in list(self.to_orphan.items()):
            with self.monitor._lock:
                history = self.monitor.node_history.get(node) or []
                held = bool(history) and history[-1].lock == name
            if not held:
                continue
            gone = retrying(f"force-delete {name}", self.force_deleter(name))
            (self.force_deleted if gone else self.lost_races).add(name)
            if gone:
                self.orphan_nodes.add(node)
            del self.to_orphan[name]


def phase(r: dict[str, Any]) -> str | None:
    return (r.get("status") or {}).get("phase")


@pytest.mark.timeout(int(Config().seconds) + Config().timeout + 900)  # + cluster, pool, teardown
def test_chaos_soak(
    control_plane: ControlPlane,
    namespace: str,
    pool: Callable[[int], Pool],
    running_operator: Operator,
) -> None:
    cfg = Config()
    began = time.monotonic()
    cluster = control_plane.cluster
    rand = random.Random(cfg.seed)
    p = pool(cfg.nodes)
    min_available = -(-cfg.nodes * int(MIN_AVAILABLE.rstrip("%")) // 100)
    policies = Policies(cluster)
    policies.create(
        p,
        policy_spec(
            p,
            maxConcurrentRepairs=MAX_ACTIVE,
            minAvailable=MIN_AVAILABLE,
            maxUnhealthy="40%",
            repairTemplate=TEMPLATE,
        ),
    )
    for name, gated in (("fn", True), ("worker", False)):
        cluster.apps.create_namespaced_deployment(
            namespace, deployment(name, cfg.instances, p.selector, gated=gated, grace=1)
        )
    service(cluster, namespace, "fn")
    ready_pods(cluster, namespace, "fn", cfg.instances, timeout=120)
    running_pods(cluster, namespace, "worker", cfg.instances, timeout=120)
    setup = time.monotonic() - began

    monitor = Monitor(
        new_client(control_plane.observer),
        namespace,
        selector(p),
        set(p.names),
        max_active=MAX_ACTIVE,
        min_available=min_available,
        service="fn",
    ).start()
    runtime = FaasRuntime(
        cluster, namespace, "fn", take_probability=0.02, seed=cfg.seed, max_errors=10**9
    ).start()
    supervisor = Supervisor(running_operator, rand=random.Random(cfg.seed + 1)).start()
    plan = {KILL: cfg.kills, APISERVER: cfg.apiserver, ETCD: cfg.etcd}
    injector = Injector(supervisor, control_plane.state, plan, cfg.seconds, rand).start()
    feeder = Feeder(cluster, p, monitor, cfg, random.Random(cfg.seed + 2))
    hold_back = max(2, cfg.repairs // 10)
    crew = Crew(cluster, p.names)
    with crew:
        try:
            deadline = time.monotonic() + cfg.seconds + cfg.timeout
            while time.monotonic() < deadline:
                hold = feeder.expected >= cfg.repairs - hold_back and not injector.finished.is_set()
                feeder.step(hold)
                if injector.finished.is_set() and done(monitor, feeder, cfg):
                    break
                time.sleep(0.3)
            injector.stop()
            wait_until("the operator leading", lambda: leading(running_operator), timeout=120)
            wait_until(
                "every node given back", lambda: all_free(monitor, p), timeout=120, interval=1
            )
            caught_up(cluster, monitor, p)
        finally:
            injector.stop()
            supervisor.stop()
            runtime.pause_new_tasks()
            judge = runtime.stop()
            monitor.stop()
    problems = monitor.final(
        client.CoreV1Api(monitor.api), feeder.force_deleted | feeder.lost_races
    )
    swept = [
        e
        for e in cluster.core.list_event_for_all_namespaces(
            field_selector="involvedObject.kind=Node,reason=OrphanedLockReleased"
        ).items
        if e.involved_object.name in feeder.orphan_nodes
    ]
    succeeded = sum(
        1
        for r in cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        if phase(r) == "Succeeded" and r["spec"]["nodeName"] in set(p.names)
    )
    lines = [
        f"chaos soak (seed {cfg.seed}): {time.monotonic() - began:.0f}s wall "
        f"({setup:.0f}s setup, injector window {cfg.seconds:.0f}s)",
        f"  repairs: {succeeded} Succeeded of {feeder.expected} "
        f"({feeder.faults} from the policy's faults, {feeder.direct} direct), "
        f"{cfg.nodes} nodes, maxConcurrentRepairs {MAX_ACTIVE}, minAvailable {min_available}",
        f"  chaos: {dict(injector.done)}; operator's own exits {dict(supervisor.exits)}",
        f"  load: {judge.tasks_done} tasks done, {judge.served} requests routed, "
        f"{monitor.evictions} evictions seen",
        f"  invariant checks: {sum(monitor.checks.values())} "
        + ", ".join(f"{k} {v}" for k, v in sorted(monitor.checks.items())),
        f"  breaks: {len(monitor.breaks)}, uncovered by a gap: {len(monitor.uncovered)}, "
        f"end problems: {len(problems)}",
        "  watch gaps: "
        + ", ".join(
            f"{w.name} {len(w.gaps)} ({w.blind_seconds:.1f}s blind, {len(w.errors)} errors)"
            for w in monitor.watches
        ),
        f"  orphans: {len(feeder.force_deleted)} force-deleted, {len(swept)} swept "
        f"(OrphanedLockReleased), {len(feeder.lost_races)} finalizer came back first",
    ]
    lines += [
        f"  ! {what}" for what in monitor.breaks[:10] + monitor.uncovered[:10] + problems[:10]
    ]
    SUMMARY.extend(lines)

    assert injector.error is None, injector.error
    assert dict(injector.done) == {k: v for k, v in plan.items() if v}, injector.log
    assert monitor.breaks == [], monitor.breaks[:10]
    assert monitor.uncovered == [], monitor.uncovered[:10]
    assert problems == [], problems[:10]
    assert judge.interrupted == [], "the runtime saw a task killed"
    assert judge.routed_when_evicted == [], "the runtime saw a routed instance evicted"
    assert succeeded == feeder.expected == cfg.repairs
    assert (feeder.orphan_nodes and swept) or not feeder.force_deleted, "no orphan was reported"


def caught_up(cluster: Cluster, monitor: Monitor, p: Pool) -> None:
    """A write to a node and to a repair moves both streams past every pod touch and
    lock release still waiting for its cross-stream judgement."""
    poke = {"metadata": {"annotations": {"chaos.pitstop.dev/end": str(time.time())}}}
    cluster.core.patch_node(p.names[0], poke)
    with monitor._lock:
        some = next(iter(monitor.repairs), None)
    if some is not None:
        cluster.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, some, poke)
    wait_until(
        "the checkers caught up",
        lambda: not monitor._touches and not monitor._releases,
        timeout=60,
        interval=0.5,
    )


def done(monitor: Monitor, feeder: Feeder, cfg: Config) -> bool:
    if feeder.expected < cfg.repairs or feeder.waiting or feeder.to_orphan:
        return False
    with monitor._lock:
        ours = list(monitor.repairs.values())
    return all(phase(r) in FINAL for r in ours)


def all_free(monitor: Monitor, p: Pool) -> bool:
    with monitor._lock:
        latest = [monitor.node_history[n][-1] for n in p.names if monitor.node_history.get(n)]
    return len(latest) == len(p.names) and not any(
        s.lock or s.unschedulable or s.tainted for s in latest
    )


def leading(op: Operator) -> bool:
    try:
        return op.healthy()
    except AssertionError:  # exited: the supervisor is stopped now, so start it here
        op.start(wait=False)
        return False
