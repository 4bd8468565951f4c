"""The latency series of the drain benchmark: NodeRepair -> cordon (and delete ->
uncordon), and last task done -> first eviction."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import workload
from bench.cluster import BenchError, Cluster, log, now
from bench.watches import INFLIGHT, PodSeen, World
from bench.workload import KEY, NS


@dataclass
class Series:
    """Where a series runs, and what went wrong on the way."""

    cluster: Cluster
    world: World
    args: argparse.Namespace
    anomalies: list[str] = field(default_factory=list)

    def sample_loop(self, series: str, pool: list[str], take: Callable[[int, str], bool]) -> None:
        """Calls `take(i, node)` round-robin over `pool` until `--samples` of them
        returned True. A sample that fails (a timeout) is kept as an anomaly, with what
        the repairs of its node looked like, and its node is retired: one stuck repair
        must not sink the whole run."""
        pool, taken, attempt = list(pool), 0, 0
        while taken < self.args.samples:
            if not pool or attempt >= self.args.samples + 10:
                raise BenchError(f"{series}: too many failed samples (see anomalies)")
            node = pool[attempt % len(pool)]
            try:
                taken += take(attempt, node)
            except BenchError as e:
                described = workload.describe(self.cluster, self.world, node)
                self.anomalies.append(f"{series} #{attempt} on {node}: {e}; {described}")
                log(f"    sample failed, {node} retired: {e}")
                pool.remove(node)
            attempt += 1


def cordon_series(s: Series) -> tuple[list[float], list[float], int]:
    """NodeRepairs created one at a time on nodes without pods: create call returned
    -> node seen unschedulable, and delete call -> node seen schedulable again. Also
    counts the nodes cordoned before the NodeRepair carried kopf's finalizer."""
    c, w = s.cluster, s.world
    pool = [f"bench-empty-{i}" for i in range(s.args.empty_nodes)]
    workload.make_nodes(c, w, pool, {KEY + "/pool": "empty"})
    # Warm-up, not counted: the operator's first repair.
    workload.create_repair(c, "bench-warmup", pool[0])
    workload.wait_phase(w, "bench-warmup", ("Repairing",), 60)
    workload.release(c, w, "bench-warmup", pool[0])
    cordon: list[float] = []
    uncordon: list[float] = []
    early = 0

    def take(i: int, node: str) -> bool:
        nonlocal early
        name = f"bench-cordon-{i}"
        w.wait(
            f"{node} free",
            lambda: not w.nodes[node].unschedulable and not w.active_repair_on(node),
            60,
        )
        before = now()
        workload.create_repair(c, name, node)
        returned = now()
        seen = w.wait(f"{node} cordoned", lambda: w.first_flip(node, True, before), 30)
        cordon.append(seen - returned)
        workload.wait_phase(w, name, ("Repairing",), 60)
        with w.cond:
            finalized = w.repairs[name].finalizer_at
        if finalized is None or finalized > seen:
            early += 1  # the node was touched before a deletion could undo it
        uncordon.append(workload.release(c, w, name, node))
        return True

    s.sample_loop("cordon", pool, take)
    workload.delete_nodes(c, pool)
    return cordon, uncordon, early


def task_series(s: Series) -> list[float]:
    """One busy instance per repair: its in-flight count seen going 1 -> 0 -> the first
    pod of its node seen with a deletionTimestamp."""
    args, c, w = s.args, s.cluster, s.world
    pool = [f"bench-task-{i}" for i in range(args.task_nodes)]
    for i, node in enumerate(pool):
        workload.make_nodes(c, w, [node], {KEY + "/task": str(i)})
        workload.make_function(
            c,
            f"task-{i}",
            args.task_pods,
            {KEY + "/task": str(i)},
            {KEY + "/task": "yes"},
            args.grace,
            None,
        )
    samples: list[float] = []

    def take(i: int, node: str) -> bool:
        name = f"bench-task-{i}"
        pods = w.wait(
            f"{node} free with {args.task_pods} Running pods",
            lambda: free_with_pods(w, node, args.task_pods),
            120,
        )
        pod = sorted(pods, key=lambda p: p.name)[0]
        set_inflight(c, w, pod, "1")
        start = now()
        workload.create_repair(c, name, node)
        phase = workload.wait_phase(w, name, ("WaitingForTasks", "Evicting", "Repairing"), 60)
        with w.cond:
            early = [
                p.name
                for p in w.pods.values()
                if p.node == node and p.deleting_at and p.deleting_at >= start
            ]
        measured = phase == "WaitingForTasks" and not early
        if not measured:
            s.anomalies.append(
                f"{name}: phase {phase} with a busy instance; evicted early: {early}"
            )
        else:
            done = set_inflight(c, w, pod, "0")
            evicted = w.wait(
                f"first eviction on {node}",
                lambda: min(
                    (
                        p.deleting_at
                        for p in w.pods.values()
                        if p.node == node and p.deleting_at and p.deleting_at >= done
                    ),
                    default=None,
                ),
                30,
            )
            samples.append(evicted - done)
        workload.wait_phase(w, name, ("Repairing",), 60)
        workload.release(c, w, name, node)
        return measured

    s.sample_loop("task", pool, take)
    workload.delete_workload(c, f"{KEY}/task=yes")
    workload.delete_nodes(c, pool)
    return samples


def free_with_pods(w: World, node: str, count: int) -> list[PodSeen] | None:
    """The node's pods, once it is uncordoned, without a repair, and carries its
    full set of `count` Running pods (call with the lock held)."""
    if w.nodes[node].unschedulable or w.active_repair_on(node):
        return None
    pods = w.pods_on(node)
    if len(pods) != count or not all(p.serving for p in pods):
        return None
    return pods


def set_inflight(c: Cluster, w: World, pod: PodSeen, value: str) -> float:
    """Annotates the pod; returns when this process's pod watch saw the change
    (the operator's watch gets the same event at the same moment)."""
    start = now()
    c.core.patch_namespaced_pod(pod.name, NS, {"metadata": {"annotations": {INFLIGHT: value}}})
    return w.wait(
        f"{pod.name} {INFLIGHT}={value}",
        lambda: next((t for t, v in pod.inflight_seen if v == value and t >= start), None),
        30,
    )
