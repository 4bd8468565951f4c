"""The policy benchmark (`make bench-policy`, part of `make bench`): pitstop at
scale on one local control plane.

- 1,000 fake nodes and 20,000 instance pods; the operator's RSS and CPU while idle
  (nothing failing) over a measurement window.
- Detection latency: a KernelDeadlock condition with `duration: 3s` is injected on
  one node at a time; latency = NodeRepair seen by a watch - (condition's
  lastTransitionTime + 3 s). p50/p99 over the samples.
- Burst: 50 nodes fail in the same second in a pool with maxConcurrentRepairs 5 and
  minAvailable 90%; a repair crew heals and marks each repair done as soon as it
  is Repairing. Time until all 50 were admitted, and the largest number of active
  repairs seen (must never exceed 5).

Targets of the issue: detection <= 1 s p99, RSS <= 250 MB, idle CPU <= 2% of a core.
Printed with PASS/MISS; the benchmark never fails on them (shared, noisy machine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import watch

from bench import report, workload
from bench.cluster import RESULTS, Cluster, Operator, log, poll, proc_stats
from bench.main import entry
from bench.watches import GROUP, VERSION

POOL = "bench-pool"
LOAD_NS = "load"


def policy(name: str, concurrent: int, min_available: str, duration: str = "3s") -> dict[str, Any]:
    return workload.policy(name, POOL, concurrent, min_available, duration)


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, operator: Operator) -> None:
        self.args = args
        self.cluster = cluster
        self.core = cluster.core
        self.custom = cluster.custom
        self.operator = operator

    def populate(self) -> None:
        n, pods = self.args.nodes, self.args.pods
        names = [f"bn-{i:04d}" for i in range(n)]
        log(f"creating {n} nodes")
        workload.apply_nodes(self.cluster, names, {"pool": POOL})
        poll(f"{n} nodes Ready", lambda: self.ready_nodes() >= n, timeout=600, interval=3)
        log(f"creating {pods} pods")
        self.cluster.make_namespace(LOAD_NS)
        per = 1000
        for i in range(pods // per):
            body = workload.deployment(f"fn-{i}", per, {}, grace=0, image="fake")
            self.cluster.apps.create_namespaced_deployment(LOAD_NS, body)
        poll(f"{pods} pods Running", lambda: self.running_pods() >= pods, timeout=1800, interval=10)

    def ready_nodes(self) -> int:
        out = self.cluster.run_kubectl("get", "nodes", "-l", f"pool={POOL}", "--no-headers").stdout
        return sum(1 for line in out.splitlines() if " Ready " in line)

    def running_pods(self) -> int:
        out = self.cluster.run_kubectl(
            "get",
            "pods",
            "-n",
            LOAD_NS,
            "--no-headers",
            "--field-selector=status.phase=Running",
            "-o",
            "name",
        ).stdout
        count = len(out.splitlines())
        log(f"  {count} pods Running")
        return count

    def repair_events(self, stop: threading.Event, timeout: int) -> Iterator[dict[str, Any]]:
        """NodeRepair watch events, until `stop` is seen set after one."""
        w = watch.Watch()
        for ev in w.stream(
            self.custom.list_cluster_custom_object,
            GROUP,
            VERSION,
            "noderepairs",
            timeout_seconds=timeout,
        ):
            yield ev
            if stop.is_set():
                w.stop()

    def idle(self) -> dict[str, float]:
        time.sleep(self.args.settle)
        rss0, cpu0 = proc_stats(self.operator.pid)
        t0 = time.monotonic()
        time.sleep(self.args.idle_window)
        rss1, cpu1 = proc_stats(self.operator.pid)
        share = (cpu1 - cpu0) / (time.monotonic() - t0) * 100
        return {"rss_mb": max(rss0, rss1), "idle_cpu_percent": share}

    def detection(self) -> list[float]:
        self.custom.create_cluster_custom_object(
            GROUP, VERSION, "repairpolicies", policy("detect", 1000, "0%")
        )
        seen: dict[str, float] = {}
        stop = threading.Event()

        def watcher() -> None:
            for ev in self.repair_events(stop, 600):
                if ev["type"] == "ADDED":
                    seen.setdefault(ev["object"]["spec"]["nodeName"], time.time())

        t = threading.Thread(target=watcher, daemon=True)
        t.start()
        time.sleep(1)
        latencies = []
        for i in range(self.args.samples):
            node = f"bn-{i:04d}"
            workload.set_fault(self.cluster, node, "KernelDeadlock")
            ltt = None
            deadline = time.monotonic() + 30
            while node not in seen and time.monotonic() < deadline:
                time.sleep(0.05)
            if node not in seen:
                log(f"  no repair for {node} within 30 s")
                continue
            for c in self.core.read_node(node).status.conditions or []:
                if c.type == "KernelDeadlock" and c.status == "True":
                    ltt = c.last_transition_time.timestamp()
            if ltt is not None:
                latencies.append(seen[node] - (ltt + 3.0))
        stop.set()
        self.custom.delete_cluster_custom_object(GROUP, VERSION, "repairpolicies", "detect")
        # Leave the pool as found: heal the nodes, end their repairs (they would
        # otherwise occupy the burst policy's maxConcurrentRepairs).
        for i in range(self.args.samples):
            node = f"bn-{i:04d}"
            workload.set_fault(self.cluster, node, None)
        for r in self.custom.list_cluster_custom_object(GROUP, VERSION, "noderepairs")["items"]:
            self.custom.delete_cluster_custom_object(
                GROUP, VERSION, "noderepairs", r["metadata"]["name"]
            )
        poll(
            "detection repairs gone",
            lambda: (
                not self.custom.list_cluster_custom_object(GROUP, VERSION, "noderepairs")["items"]
            ),
            timeout=120,
        )
        return latencies

    def burst(self) -> dict[str, float]:
        first = self.args.samples + 10
        names = [f"bn-{i:04d}" for i in range(first, first + 50)]
        self.custom.create_cluster_custom_object(
            GROUP, VERSION, "repairpolicies", policy("burst", 5, "90%", duration="0s")
        )
        admitted: dict[str, float] = {}
        peak = 0
        stop = threading.Event()

        def crew() -> None:
            nonlocal peak
            for ev in self.repair_events(stop, 900):
                obj = ev["object"]
                node = obj["spec"]["nodeName"]
                phase = (obj.get("status") or {}).get("phase")
                if node not in names:
                    continue
                if phase not in (None, "Pending"):
                    admitted.setdefault(node, time.monotonic())
                if phase == "Repairing" and not (obj["metadata"].get("annotations") or {}).get(
                    "pitstop.dev/repaired"
                ):
                    workload.set_fault(self.cluster, node, None)
                    self.custom.patch_cluster_custom_object(
                        GROUP,
                        VERSION,
                        "noderepairs",
                        obj["metadata"]["name"],
                        {"metadata": {"annotations": {"pitstop.dev/repaired": "true"}}},
                    )

        def counter() -> None:
            nonlocal peak
            while not stop.is_set():
                items = self.custom.list_cluster_custom_object(GROUP, VERSION, "noderepairs")[
                    "items"
                ]
                active = sum(
                    1
                    for r in items
                    if r["spec"]["nodeName"] in names
                    and (r.get("status") or {}).get("phase")
                    not in (None, "Pending", "Succeeded", "Failed", "Aborted")
                )
                peak = max(peak, active)
                time.sleep(0.05)

        threads = [
            threading.Thread(target=crew, daemon=True),
            threading.Thread(target=counter, daemon=True),
        ]
        for th in threads:
            th.start()
        time.sleep(1)
        start = time.monotonic()
        for node in names:
            workload.set_fault(self.cluster, node, "KernelDeadlock")
        poll("all 50 admitted", lambda: len(admitted) == 50, timeout=900, interval=0.2)
        stop.set()
        return {
            "burst_admitted_s": max(admitted.values()) - start,
            "burst_peak_active": float(peak),
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        cluster = Cluster(stack, prefix="pitstop-bench-policy-")
        cluster.start()
        operator = Operator(cluster, "operator-policy.log")
        operator.start("--alerts-port", "0")
        bench = Bench(args, cluster, operator)
        bench.populate()
        idle = bench.idle()
        log(f"idle: {idle}")
        latencies = bench.detection()
        burst = bench.burst()
    return {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()},
        "nodes": args.nodes,
        "pods": args.pods,
        **idle,
        "detection_p50_s": statistics.median(latencies) if latencies else None,
        "detection_p99_s": report.pct(latencies, 99) if latencies else None,
        "detection_samples": len(latencies),
        **burst,
        "wall_s": time.monotonic() - started,
    }


def render(r: dict[str, Any]) -> str:
    mark = report.verdict
    p99 = r["detection_p99_s"]
    lines = [
        f"pitstop policy benchmark: {r['nodes']} nodes, {r['pods']} pods"
        f" ({r['machine']['cpus']} CPUs, load {r['machine']['load'][0]:.1f}; shared and noisy)",
        f"  operator RSS                  {r['rss_mb']:8.1f} MB    target <= 250 MB   {mark(r['rss_mb'] <= 250)}",
        f"  operator idle CPU             {r['idle_cpu_percent']:8.2f} %     target <= 2 %      {mark(r['idle_cpu_percent'] <= 2)}",
        f"  detection latency p50         {r['detection_p50_s']:8.3f} s     ({r['detection_samples']} samples)",
        f"  detection latency p99         {p99:8.3f} s     target <= 1 s      {mark(p99 <= 1)}",
        f"  burst of 50: all admitted in  {r['burst_admitted_s']:8.1f} s     (maxConcurrentRepairs 5)",
        f"  burst: most active at once    {r['burst_peak_active']:8.0f}       limit 5            {mark(r['burst_peak_active'] <= 5)}",
        f"  wall time                     {r['wall_s']:8.0f} s",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench policy", description="pitstop policy benchmark"
    )
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pods", type=int, default=20000)
    p.add_argument("--samples", type=int, default=60)
    p.add_argument("--settle", type=float, default=30.0, help="seconds before the idle window")
    p.add_argument("--idle-window", type=float, default=60.0)
    p.add_argument("--quick", action="store_true", help="200 nodes, 2,000 pods, 20 samples")
    p.add_argument("--output", type=Path, default=RESULTS / "policy.json")
    return p


def quick(args: argparse.Namespace) -> None:
    args.nodes, args.pods, args.samples, args.settle, args.idle_window = 200, 2000, 20, 10, 20


def main(argv: list[str] | None = None) -> int:
    return entry(parser(), quick, run, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
