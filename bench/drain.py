"""The drain benchmark (`make bench-drain`): pitstop against `kubectl drain` on one
local control plane, in one run.

- Drain: per round, two fresh fake nodes carrying 110 Deployment-owned instance
  pods each (PDBs allowing every disruption, no tasks in flight); one is drained by
  pitstop (NodeRepair created -> phase Repairing), the other by `kubectl drain
  --ignore-daemonsets --delete-emptydir-data` (wall time of the command). The tool
  that goes first alternates per round. Evicted pods are re-created on a spare pool.
- NodeRepair -> cordon: create call returned -> node seen `spec.unschedulable: true`.
- Last task done -> first eviction: an instance's `pitstop.dev/inflight-tasks`
  seen going 1 -> 0 -> the first pod of that node seen with a deletionTimestamp.

Every timestamp comes from watch streams read by this process (bench/watches.py),
on one monotonic clock. The run starts and stops its own cluster and operator; it
prints figures and PASS/MISS against the targets of the issue but never fails on
them (the machine it runs on is shared and noisy).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path
from typing import Any

from bench import latency, peers, report, workload
from bench.cluster import RESULTS, Cluster, Operator, log, now, poll
from bench.latency import Series
from bench.main import entry
from bench.watches import World, start_watches
from bench.workload import KEY, NS

TARGET_RATIO = 3.0
TARGET_CORDON_MS = 50.0
TARGET_TASK_MS = 100.0


class Drains:
    """Round after round, a node drained by pitstop and one by kubectl."""

    def __init__(self, s: Series, operator: Operator) -> None:
        self.s, self.c, self.w, self.args = s, s.cluster, s.world, s.args
        self.operator = operator

    def rounds(self) -> list[dict[str, Any]]:
        args, c, w = self.args, self.c, self.w
        spares = [f"bench-spare-{i}" for i in range(args.spares)]
        workload.make_nodes(c, w, spares, {KEY + "/pool": "spare"})
        per_fn = [
            args.pods // args.functions + (i < args.pods % args.functions)
            for i in range(args.functions)
        ]
        rounds = []
        for r in range(1, args.rounds + 1):
            order = ["pitstop", "kubectl"] if r % 2 else ["kubectl", "pitstop"]
            nodes = {tool: f"bench-r{r}-{tool}" for tool in order}
            slot = {tool: f"{KEY}/r{r}-{tool}" for tool in order}
            round_label = {KEY + "/round": str(r)}
            stages = Laps()
            stage = stages.lap
            for tool, node in nodes.items():
                workload.make_nodes(c, w, [node], {slot[tool]: "true"})
            for tool in order:
                for f, replicas in enumerate(per_fn):
                    workload.make_function(
                        c,
                        f"r{r}-{tool}-f{f}",
                        replicas,
                        {slot[tool]: "true"},
                        {**round_label, KEY + "/tool": tool},
                        args.grace,
                        "100%",
                    )
            w.wait(
                f"round {r}: {args.pods} Running pods on each node",
                lambda nodes=nodes: all(len(w.serving_on(n)) == args.pods for n in nodes.values()),
                300,
            )
            stage("pods_running")
            poll("PDBs settled", lambda r=r: workload.pdbs_settled(c, f"{KEY}/round={r}"), 60)
            stage("pdbs_settled")
            # From now on, re-created pods may also land on the spare pool.
            for spare in spares:
                c.core.patch_node(
                    spare, {"metadata": {"labels": {s: "true" for s in slot.values()}}}
                )
            result: dict[str, Any] = {"round": r, "first": order[0], "stages_s": stages.laps}
            for tool in order:
                measure = self.pitstop if tool == "pitstop" else self.kubectl
                result[tool] = measure(nodes[tool], f"bench-drain-r{r}")
                stage(tool)
                w.wait(
                    f"round {r}: {tool}'s evicted pods re-created and Running",
                    lambda tool=tool, r=r: (
                        w.count_serving({KEY + "/round": str(r), KEY + "/tool": tool}) == args.pods
                    ),
                    300,
                )
                stage(f"{tool}_pods_recreated")
            p, k = result["pitstop"], result["kubectl"]
            result["ratio"] = k["drain_s"] / p["drain_s"]
            log(
                f"round {r}/{args.rounds} ({order[0]} first): pitstop {p['drain_s']:.2f}s,"
                f" kubectl {k['drain_s']:.2f}s, ratio {result['ratio']:.1f}x"
            )
            rounds.append(result)
            self.end_round(r, list(nodes.values()), spares, list(slot.values()))
            stage("cleanup")
            log(f"    stages (s): {stages.laps}")
        workload.delete_nodes(c, spares)
        return rounds

    def end_round(self, r: int, nodes: list[str], spares: list[str], slots: list[str]) -> None:
        c, w = self.c, self.w
        workload.delete_workload(c, f"{KEY}/round={r}")
        for spare in spares:
            c.core.patch_node(spare, {"metadata": {"labels": dict.fromkeys(slots)}})
        workload.delete_nodes(c, nodes)
        w.wait(
            f"round {r}'s pods gone",
            lambda: (
                not any(p.live and p.labels.get(KEY + "/round") == str(r) for p in w.pods.values())
            ),
            180,
        )

    def timeline(self, node: str, start: float) -> dict[str, float | None]:
        """Seconds from `start` to the cordon, the first and last eviction (pod seen
        terminating) and the last pod gone."""
        w = self.w
        with w.cond:
            cordon = w.first_flip(node, True, start)
            pods = [p for p in w.pods.values() if p.node == node]
            evicted = [p.deleting_at for p in pods if p.deleting_at and p.deleting_at >= start]
            gone = [p.gone_at for p in pods if p.gone_at and p.gone_at >= start]

        def rel(t: float | None) -> float | None:
            return None if t is None else t - start

        return {
            "cordon_s": rel(cordon),
            "first_eviction_s": rel(min(evicted, default=None)),
            "last_eviction_s": rel(max(evicted, default=None)),
            "last_pod_gone_s": rel(max(gone, default=None)),
        }

    def pitstop(self, node: str, name: str) -> dict[str, Any]:
        """From the NodeRepair create call until its phase is seen as Repairing
        (RepairAllowed=True: every instance is gone)."""
        c, w = self.c, self.w
        evictions = self.operator.metric("pitstop_evictions_total", "result")
        start = now()
        workload.create_repair(c, name, node)
        workload.wait_phase(w, name, ("Repairing",), 600)
        with w.cond:
            phases = dict(w.repairs[name].phases)
        w.wait(f"pods of {node} gone", lambda: not w.pods_on(node), 30)
        after = self.operator.metric("pitstop_evictions_total", "result")
        result = {
            "drain_s": phases["Repairing"] - start,
            **self.timeline(node, start),
            "phases_s": {k: round(t - start, 3) for k, t in phases.items()},
            "eviction_requests": {k: v - evictions.get(k, 0) for k, v in after.items()},
        }
        workload.release(c, w, name, node)
        return result

    def kubectl(self, node: str, _name: str) -> dict[str, Any]:
        start = now()
        result = peers.kubectl_drain(self.c, self.w, node, self.s.anomalies)
        return {**result, **self.timeline(node, start)}


class Laps:
    """Seconds spent in each named stage, one after the other."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.mark = now()

    def lap(self, name: str) -> None:
        self.laps[name] = round(now() - self.mark, 2)
        self.mark = now()


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = now()
    measured = report.source()  # what the operator process is about to load
    load_start = report.load()
    with contextlib.ExitStack() as stack:
        cluster = Cluster(stack)
        cluster.start()
        cluster.make_namespace(NS)
        world = World()
        start_watches(cluster, world, NS)
        operator = Operator(cluster, "operator.log")
        operator.start()
        world.check = operator.check_alive
        s = Series(cluster, world, args)
        log(f"1/3 drain rounds ({now() - started:.0f}s)")
        rounds = Drains(s, operator).rounds()
        log(f"2/3 NodeRepair -> cordon ({now() - started:.0f}s)")
        cordon, uncordon, early_cordons = latency.cordon_series(s)
        if cordon:
            log(f"    cordon p50 {report.pct(cordon, 50) * 1000:.0f} ms over {len(cordon)}")
        log(f"3/3 last task done -> first eviction ({now() - started:.0f}s)")
        task = latency.task_series(s)
        if task:
            p50 = report.pct(task, 50) * 1000
            log(f"    last task -> eviction p50 {p50:.0f} ms over {len(task)}")
        version = cluster.server_version()
        log(f"tearing down ({now() - started:.0f}s)")
    drain: dict[str, Any] = {"rounds": rounds}
    if rounds:
        p = statistics.median(r["pitstop"]["drain_s"] for r in rounds)
        k = statistics.median(r["kubectl"]["drain_s"] for r in rounds)
        drain.update(
            pitstop_median_s=p,
            kubectl_median_s=k,
            ratio=k / p,
            ratio_met=k / p >= TARGET_RATIO,
            timeline_medians={
                tool: {key: report.median_of(rounds, tool, key) for key in report.TIMELINE}
                for tool in ("pitstop", "kubectl")
            },
        )
    return {
        "date": report.today(),
        "wall_s": round(now() - started, 1),
        "machine": report.machine(load_start, version),
        "source": measured,
        "config": {
            "rounds": args.rounds,
            "samples": args.samples,
            "pods": args.pods,
            "functions": args.functions,
            "grace": args.grace,
            "spares": args.spares,
        },
        "drain": drain,
        "cordon": report.series(cordon),
        "task": report.series(task),
        "uncordon": report.series(uncordon),
        "targets": {
            "ratio": TARGET_RATIO,
            "cordon_p50_ms": TARGET_CORDON_MS,
            "task_p50_ms": TARGET_TASK_MS,
        },
        "cordoned_before_finalizer": early_cordons,
        "anomalies": s.anomalies,
    }


def render(results: dict[str, Any]) -> str:
    cfg, d = results["config"], results["drain"]
    lines = [
        *report.header("pitstop drain benchmark", results),
        "",
        f"1. drain a node of {cfg['pods']} instance pods ({cfg['functions']} Deployments,"
        f" PDB maxUnavailable 100%, terminationGracePeriodSeconds {cfg['grace']}),"
        f" {len(d['rounds'])} rounds alternating",
        *report.drain_table(d, TARGET_RATIO),
        "",
        *report.latency_rows(
            [
                ("2. NodeRepair created -> cordon", results["cordon"], TARGET_CORDON_MS),
                ("3. last task done -> 1st eviction", results["task"], TARGET_TASK_MS),
                ("   NodeRepair deleted -> uncordon", results["uncordon"], None),
            ]
        ),
    ]
    if results["cordon"]["n"]:
        lines.append(
            f"   cordon series: {results['cordoned_before_finalizer']} of"
            f" {results['cordon']['n']} nodes were cordoned before the NodeRepair carried"
            " its finalizer (a deletion in that window leaves the node cordoned)"
        )
    if results["anomalies"]:
        lines += ["", "anomalies:"] + [f"  - {a}" for a in results["anomalies"]]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench drain", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="drain rounds (default 5)")
    p.add_argument(
        "--samples", type=int, default=50, help="samples per latency series (default 50)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 10 samples")
    p.add_argument("--pods", type=int, default=110, help="instance pods per drained node")
    p.add_argument(
        "--functions", type=int, default=11, help="Deployments (with a PDB each) per node"
    )
    p.add_argument("--grace", type=int, default=1, help="terminationGracePeriodSeconds")
    p.add_argument("--spares", type=int, default=4, help="nodes taking the evicted pods")
    p.add_argument("--empty-nodes", type=int, default=5, help="nodes of the cordon series")
    p.add_argument("--task-nodes", type=int, default=5, help="nodes of the task series")
    p.add_argument("--task-pods", type=int, default=5, help="instance pods per task node")
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    return p


def quick(args: argparse.Namespace) -> None:
    args.rounds, args.samples = 2, 10


def main(argv: list[str] | None = None) -> int:
    return entry(parser(), quick, run, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
