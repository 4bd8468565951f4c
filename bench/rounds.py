"""The drain rounds: per round and PDB layout, one fresh node per tool, each
carrying the same instance pods, drained one tool after the other."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

from bench import peers, workload
from bench.cluster import Operator, log, now, poll
from bench.latency import Series
from bench.workload import KEY, NS


@dataclass(frozen=True)
class Layout:
    """How the PDBs cover a node's instances."""

    name: str
    title: str
    pdb_per_function: str | None = None
    """maxUnavailable of a PDB per Deployment, or None."""
    pdb_per_node: str | None = None
    """maxUnavailable of one PDB over all the node's instances, or None."""


LAYOUTS = {
    "nopdb": Layout("nopdb", "no PDB"),
    "pdb10": Layout("pdb10", "one PDB maxUnavailable 10% over all", pdb_per_node="10%"),
    "per-function": Layout(
        "per-function", "a PDB maxUnavailable 100% per Deployment", pdb_per_function="100%"
    ),
}


def allowed_disruptions(max_unavailable: str, pods: int) -> int:
    """What a PDB allows at once over `pods` healthy pods (a percentage rounds up)."""
    if max_unavailable.endswith("%"):
        return math.ceil(int(max_unavailable[:-1]) * pods / 100)
    return int(max_unavailable)


class Drains:
    """Round after round, one node drained by each tool, the first tool rotating."""

    def __init__(self, s: Series, operator: Operator, tools: list[str], qps: str | None) -> None:
        self.s, self.c, self.w, self.args = s, s.cluster, s.world, s.args
        self.operator = operator
        self.tools = tools
        self.kubectl_qps = qps
        """The kubectl-qps binary, when that peer runs."""

    def rounds(self, layout: Layout, first_round: int) -> list[dict[str, Any]]:
        args, c, w = self.args, self.c, self.w
        spares = [f"bench-spare-{i}" for i in range(args.spares)]
        workload.make_nodes(c, w, spares, {KEY + "/pool": "spare"})
        per_fn = [
            args.pods // args.functions + (i < args.pods % args.functions)
            for i in range(args.functions)
        ]
        rounds = []
        for r in range(first_round, first_round + args.rounds):
            shift = (r - first_round) % len(self.tools)
            order = self.tools[shift:] + self.tools[:shift]
            nodes = {tool: f"bench-r{r}-{tool}" for tool in order}
            slot = {tool: f"{KEY}/r{r}-{tool}" for tool in order}
            round_label = {KEY + "/round": str(r)}
            stages = Laps()
            stage = stages.lap
            for tool, node in nodes.items():
                workload.make_nodes(c, w, [node], {slot[tool]: "true"})
            for tool in order:
                labels = {**round_label, KEY + "/tool": tool}
                for f, replicas in enumerate(per_fn):
                    workload.make_function(
                        c,
                        f"r{r}-{tool}-f{f}",
                        replicas,
                        {slot[tool]: "true"},
                        labels,
                        args.grace,
                        layout.pdb_per_function,
                    )
                if layout.pdb_per_node is not None:
                    workload.make_pdb(c, f"r{r}-{tool}", labels, labels, layout.pdb_per_node)
            # Each wait below ends within its own iteration: the loop's names are current.
            w.wait(
                f"round {r}: {args.pods} Running pods on each node",
                lambda: all(len(w.serving_on(n)) == args.pods for n in nodes.values()),  # noqa: B023
                300,
            )
            stage("pods_running")
            poll("PDBs settled", partial(workload.pdbs_settled, c, f"{KEY}/round={r}"), 60)
            stage("pdbs_settled")
            result: dict[str, Any] = {"round": r, "first": order[0], "stages_s": stages.laps}
            if layout.pdb_per_node is not None:
                result["budget_cycle"] = self.budget_cycle(
                    r, order[0], nodes[order[0]], layout.pdb_per_node
                )
                stage("budget_cycle")
            # From now on, re-created pods may also land on the spare pool.
            for spare in spares:
                c.core.patch_node(
                    spare, {"metadata": {"labels": {s: "true" for s in slot.values()}}}
                )
            for tool in order:
                result[tool] = self.drain(tool, nodes[tool], f"bench-drain-r{r}")
                stage(tool)
                labels = {KEY + "/round": str(r), KEY + "/tool": tool}
                w.wait(
                    f"round {r}: {tool}'s evicted pods re-created and Running",
                    lambda: w.count_serving(labels) == args.pods,  # noqa: B023
                    300,
                )
                stage(f"{tool}_pods_recreated")
            p = result["pitstop"]["drain_s"]
            result["ratio"] = {t: result[t]["drain_s"] / p for t in order if t != "pitstop"}
            log(
                f"round {r} ({layout.name}, {order[0]} first): "
                + ", ".join(f"{t} {result[t]['drain_s']:.2f}s" for t in self.tools)
            )
            rounds.append(result)
            self.end_round(r, list(nodes.values()), spares, list(slot.values()))
            stage("cleanup")
            log(f"    stages (s): {stages.laps}")
        workload.delete_nodes(c, spares)
        return rounds

    def budget_cycle(self, r: int, tool: str, node: str, max_unavailable: str) -> dict[str, Any]:
        """One eviction under the node's PDB, before any drain: seconds from the
        eviction call until the pod is gone, and until the PDB allows as many
        disruptions as before (its replacement is Ready: the PDB's own cycle). The
        replacement lands on the same node (the spares are not open yet)."""
        c, w, name = self.c, self.w, f"r{r}-{tool}"
        full = allowed_disruptions(max_unavailable, self.args.pods)
        w.wait(f"PDB {name} allows {full}", lambda: w.budgets[name].allowed == full, 60)
        with w.cond:
            pod = sorted(p.name for p in w.serving_on(node))[0]
            victim = next(p for p in w.pods.values() if p.name == pod and p.live)
        start = now()
        c.core.create_namespaced_pod_eviction(pod, NS, {"metadata": {"name": pod, "namespace": NS}})
        gone = w.wait(f"{pod} gone", lambda: victim.gone_at, 60)
        back = w.wait(
            f"PDB {name} back to {full}",
            lambda: next((t for t, a in w.budgets[name].changes if t > start and a == full), None),
            60,
        )
        w.wait(f"{node} full again", lambda: len(w.serving_on(node)) == self.args.pods, 60)
        return {"allowed": full, "pod_gone_s": gone - start, "budget_back_s": back - start}

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

    def drain(self, tool: str, node: str, name: str) -> dict[str, Any]:
        start = now()
        if tool == "pitstop":
            result = self.pitstop(node, name)
        elif tool == "kubectl":
            result = peers.kubectl_drain(self.c, self.w, node, self.s.anomalies)
        elif tool == "evictor":
            result = peers.sequential_evict(self.c, self.w, node)
        else:
            assert self.kubectl_qps is not None
            result = peers.kubectl_drain_tuned(
                self.c, self.w, node, self.s.anomalies, self.kubectl_qps, self.args.kubectl_qps
            )
        return {**result, **self.timeline(node, start)}

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
            "phases_s": {k: round(t - start, 3) for k, t in phases.items()},
            "eviction_requests": {k: v - evictions.get(k, 0) for k, v in after.items()},
        }
        workload.release(c, w, name, node)
        return result


class Laps:
    """Seconds spent in each named stage, one after the other."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.mark = now()

    def lap(self, name: str) -> None:
        self.laps[name] = round(now() - self.mark, 2)
        self.mark = now()
