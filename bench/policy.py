"""The scale benchmark (`make bench-policy`, part of `make bench`): pitstop at
scale on one local control plane.

- N fake nodes and M instance pods (default 1,000 and 20,000: what this shared
  2-CPU machine holds; `--nodes 5000 --pods 100000` is the issue's size); the
  operator's RSS and CPU while idle (nothing failing) over a measurement window.
- Detection latency: a KernelDeadlock condition with `duration: 3s` is injected on
  one node at a time; latency = NodeRepair seen by a watch - (condition's
  lastTransitionTime + 3 s). p50/p99 over the samples.
- Burst: 50 nodes fail in the same second in a pool with maxConcurrentRepairs 10
  and minAvailable 90%; a repair crew heals and marks each repair done as soon as
  it is Repairing. Time until all 50 were admitted and done, and the largest
  number of active repairs seen (must never exceed the limit).
- API requests: the operator runs as its own ServiceAccount, and kube-apiserver
  counts its requests by verb (bench/apimetrics.py): per repair of the burst,
  against a budget of 3 x instances + 20, and cluster-wide LISTs after start-up
  (there should be none). The idle window's requests are reported too.

Targets of issue 11: RSS <= 300 MB, idle CPU <= 2% of a core, detection p99 <= 1 s,
limits never exceeded. Printed with PASS/MISS; the benchmark never fails on them
(shared, noisy machine).
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

from bench import apimetrics, report, workload
from bench.apimetrics import CLUSTER_LIST, Snapshot
from bench.cluster import (
    DEPLOYMENT_LIMITS,
    RESULTS,
    Cluster,
    Operator,
    log,
    peak_rss_mb,
    poll,
    proc_stats,
)
from bench.main import entry
from bench.watches import GROUP, VERSION

POOL = "bench-pool"
LOAD_NS = "load"
PER_DEPLOYMENT = 1000
"""Replicas per Deployment of the load."""
TARGET_RSS_MB = 300.0
TARGET_IDLE_CPU = 2.0
IDLE_WAIT_S = 900
"""--pods-made: how long the idle window waits for kwok to make every pod Running."""
TARGET_P99_S = 1.0
DONE = ("Succeeded", "Failed", "Aborted")


def policy(name: str, concurrent: int, min_available: str, duration: str = "3s") -> dict[str, Any]:
    return workload.policy(name, POOL, concurrent, min_available, duration)


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, operator: Operator) -> None:
        self.args = args
        self.cluster = cluster
        self.core = cluster.core
        self.custom = cluster.custom
        self.operator = operator

    def populate(self) -> dict[str, float]:
        """The fake nodes and the load's pods (all Running); returns the set-up times."""
        n, pods = self.args.nodes, self.args.pods
        names = [f"bn-{i:04d}" for i in range(n)]
        t0 = time.monotonic()
        if self.ready_nodes() < n:
            log(f"creating {n} nodes")
            workload.apply_nodes(self.cluster, names, {"pool": POOL})
        poll(f"{n} nodes Ready", lambda: self.ready_nodes() >= n, timeout=900, interval=3)
        nodes_s = time.monotonic() - t0
        log(f"{n} nodes Ready in {nodes_s:.0f} s; creating {pods} pods")
        t1 = time.monotonic()
        if not self.load_exists():
            self.cluster.make_namespace(LOAD_NS)
        # A kept cluster of a smaller size grows: only the Deployments it lacks are made.
        have = {
            d.metadata.name for d in self.cluster.apps.list_namespaced_deployment(LOAD_NS).items
        }
        for i, start in enumerate(range(0, pods, PER_DEPLOYMENT)):
            if f"fn-{i}" not in have:
                replicas = min(PER_DEPLOYMENT, pods - start)
                body = workload.deployment(f"fn-{i}", replicas, {}, grace=0, image="fake")
                self.cluster.apps.create_namespaced_deployment(LOAD_NS, body)
        if self.args.pods_made:
            poll(f"{pods} pods made", lambda: self.made_pods() >= pods, timeout=5400, interval=10)
        else:
            poll(
                f"{pods} pods Running",
                lambda: self.ready_pods(t1) >= pods,
                timeout=5400,
                interval=10,
            )
        pods_s = time.monotonic() - t1
        running = self.running_pods()
        log(f"{pods} pods made in {pods_s:.0f} s ({pods / pods_s:.0f} pods/s), {running} Running")
        return {
            "setup_nodes_s": nodes_s,
            "setup_pods_s": pods_s,
            "setup_pods_per_s": pods / pods_s,
            "pods_running_at_start": running,
        }

    def made_pods(self) -> int:
        """The load's pods, Running or not, from a page of one (remainingItemCount)."""
        page = self.core.list_namespaced_pod(LOAD_NS, limit=1)
        made = len(page.items) + (page.metadata.remaining_item_count or 0)
        log(f"  {made} pods made")
        return made

    def running_pods(self) -> int:
        """The load's Running pods (one LIST of their names, once)."""
        out = self.cluster.run_kubectl(
            "get", "pods", "-n", LOAD_NS, "--field-selector=status.phase=Running", "-o", "name"
        ).stdout
        return len(out.split())

    def load_exists(self) -> bool:
        """The load's namespace is there (a kept cluster populated before)."""
        names = self.cluster.run_kubectl("get", "namespaces", "-o", "name").stdout.split()
        return f"namespace/{LOAD_NS}" in names

    def ready_nodes(self) -> int:
        out = self.cluster.run_kubectl("get", "nodes", "-l", f"pool={POOL}", "--no-headers").stdout
        return sum(1 for line in out.splitlines() if " Ready " in line)

    def ready_pods(self, since: float) -> int:
        """Running pods of the load: every pod the Deployments made, less those not
        Running (one page of them: a LIST of 100,000 pods every 10 s would load the
        API server). Returns 0 until all are Running."""
        deployments = self.cluster.apps.list_namespaced_deployment(LOAD_NS).items
        made = sum(d.status.replicas or 0 for d in deployments)
        ready = sum(d.status.ready_replicas or 0 for d in deployments)
        page = self.core.list_namespaced_pod(
            LOAD_NS, field_selector="status.phase!=Running", limit=500
        )
        waiting = len(page.items) + (1 if page.metadata._continue else 0)
        log(
            f"  {made} pods made, {ready} Ready, {waiting}{'+' if waiting > 500 else ''}"
            f" not Running after {time.monotonic() - since:.0f} s"
        )
        return made if waiting == 0 else 0

    def operator_started(self) -> None:
        """Returns once the operator's initial listing is over: its LIST and WATCH
        counts (the API server's) have not moved for 10 s."""
        last: tuple[float, float] | None = None
        steady_since = time.monotonic()

        def steady() -> bool:
            nonlocal last, steady_since
            self.operator.check_alive()
            ops = Snapshot(self.cluster).operator
            now = (ops.get(CLUSTER_LIST, 0.0) + ops.get("list", 0.0), ops.get("watch", 0.0))
            if now != last or not now[1]:
                last, steady_since = now, time.monotonic()
            return time.monotonic() - steady_since >= 10

        poll("the operator's initial listing", steady, timeout=900, interval=1)

    def repair_events(self, stop: threading.Event, timeout: int) -> Iterator[dict[str, Any]]:
        """NodeRepair watch events, until `stop` is seen set after one."""
        w = watch.Watch()
        try:
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
        except Exception:
            if not stop.is_set():
                raise  # after `stop`, the stream ends with the cluster: that is no error

    def acting(self, since: float) -> dict[str, float]:
        """From the operator's start until it acts: the `detect` policy, made before
        the start, gets its first status. kopf runs no handler before every watched
        object is indexed once, so this is how long a restarted or newly elected
        operator leaves repairs waiting."""

        def written() -> bool:
            self.operator.check_alive()
            body = self.custom.get_cluster_custom_object(GROUP, VERSION, "repairpolicies", "detect")
            return (body.get("status") or {}).get("nodes") is not None

        poll("the operator's first policy status", written, timeout=900, interval=0.2)
        acting_s = time.monotonic() - since
        _, cpu = proc_stats(self.operator.pid)
        log(f"acting {acting_s:.1f} s after its start ({cpu:.1f} s of CPU)")
        return {"startup_acting_s": acting_s, "startup_cpu_s": cpu}

    def idle(self) -> dict[str, Any]:
        """RSS and CPU with nothing failing, the detection policy (made before the
        start) watching the whole pool: an operator in production has its policies.
        With --pods-made, kwok may still be starting pods (each one Running is a pod
        event the operator handles): the window waits for them, up to IDLE_WAIT_S."""
        running = None
        if self.args.pods_made:
            t0 = time.monotonic()
            while time.monotonic() - t0 < IDLE_WAIT_S and not self.ready_pods(t0):
                self.operator.check_alive()
                time.sleep(10)
            running = self.running_pods()
        time.sleep(self.args.settle)
        before = Snapshot(self.cluster)
        rss0, cpu0 = proc_stats(self.operator.pid)
        t0 = time.monotonic()
        time.sleep(self.args.idle_window)
        rss1, cpu1 = proc_stats(self.operator.pid)
        window = time.monotonic() - t0
        requests = Snapshot(self.cluster).since(before)["operator"]
        return {
            "rss_mb": max(rss0, rss1),
            # the start-up's peak (kopf holds every first event until all are indexed)
            "rss_peak_mb": peak_rss_mb(self.operator.pid),
            "idle_cpu_percent": (cpu1 - cpu0) / window * 100,
            "idle_requests_per_min": {k: v * 60 / window for k, v in requests.items()},
            "pods_running_at_idle": running if running is not None else self.args.pods,
        }

    def detection(self) -> list[float]:
        """The `detect` policy (made by idle()) at work, a node broken at a time."""
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

    def burst(self) -> dict[str, Any]:
        n, limit = self.args.burst, self.args.burst_concurrency
        first = self.args.samples + 10
        names = [f"bn-{i:04d}" for i in range(first, first + n)]
        self.custom.create_cluster_custom_object(
            GROUP, VERSION, "repairpolicies", policy("burst", limit, "90%", duration="0s")
        )
        admitted: dict[str, float] = {}
        finished: dict[str, float] = {}
        instances: dict[str, int] = {}
        peak = 0
        stop = threading.Event()

        def crew() -> None:
            for ev in self.repair_events(stop, 1800):
                obj = ev["object"]
                node = obj["spec"]["nodeName"]
                status = obj.get("status") or {}
                phase = status.get("phase")
                if node not in names:
                    continue
                total = (status.get("instances") or {}).get("total")
                if total is not None:
                    instances[node] = max(instances.get(node, 0), int(total))
                if phase not in (None, "Pending"):
                    admitted.setdefault(node, time.monotonic())
                if phase in DONE:
                    finished.setdefault(node, time.monotonic())
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
                    and (r.get("status") or {}).get("phase") not in (None, "Pending", *DONE)
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
        before = Snapshot(self.cluster)
        start = time.monotonic()
        for node in names:
            workload.set_fault(self.cluster, node, "KernelDeadlock")
        poll(f"all {n} admitted", lambda: len(admitted) == n, timeout=1800, interval=0.2)
        poll(f"all {n} done", lambda: len(finished) == n, timeout=600, interval=0.2)
        stop.set()
        requests = Snapshot(self.cluster).since(before)
        return {
            "burst": n,
            "burst_limit": limit,
            "burst_admitted_s": max(admitted.values()) - start,
            "burst_done_s": max(finished.values()) - start,
            "burst_peak_active": float(peak),
            "burst_instances": sum(instances.values()),
            "burst_requests": requests,
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    load_start = report.load()
    with contextlib.ExitStack() as stack:
        # no real node: the load's pods are fake (kwok), and a kubelet would only add noise
        # Leases of 200 s renewed every 50 s, 300 s of grace: thousands of fake nodes
        # stay Ready on a loaded machine (faults come from annotations, not lapses).
        cluster = Cluster(
            stack,
            prefix="pitstop-bench-policy-",
            real_nodes=0,
            env={"PITSTOP_NODE_LEASE_SECONDS": "200", "PITSTOP_NODE_MONITOR_GRACE": "300s"},
            reuse=args.cluster_dir,
        )
        cluster.start()
        if args.cluster_dir is not None:  # policies and repairs of the run before
            for plural in ("repairpolicies", "noderepairs"):
                # Their operator ended with that run: nothing else removes the finalizers
                # (a node left locked is given back by the orphan sweep at start-up).
                for name in cluster.run_kubectl("get", plural, "-o", "name").stdout.split():
                    unfinalize = '{"metadata":{"finalizers":null}}'
                    cluster.run_kubectl("patch", name, "--type=merge", "-p", unfinalize)
                cluster.run_kubectl("delete", plural, "--all", "--wait=true")
        kubeconfig = None
        if args.identity == "sa":
            apimetrics.install_flow_schemas(cluster)
            kubeconfig = apimetrics.operator_kubeconfig(
                cluster, cluster.state / "operator.kubeconfig"
            )
        operator = Operator(
            cluster,
            f"operator-policy-{args.nodes}.log",
            kubeconfig,
            # the Deployment's Lease, in the operator's namespace (its Role's), or the
            # admin's default namespace
            identity="bench-policy" if args.election else None,
            lease_namespace=apimetrics.NAMESPACE if args.identity == "sa" else "default",
        )
        if not args.no_limits:
            operator.limits = DEPLOYMENT_LIMITS
        bench = Bench(args, cluster, operator)
        # The operator starts on the populated cluster, as after a restart: the set-up
        # is not slowed by it, and its RSS includes the initial listing of every pod.
        setup = bench.populate()
        cluster.custom.create_cluster_custom_object(
            GROUP, VERSION, "repairpolicies", policy("detect", 1000, "0%")
        )
        started_at = time.monotonic()
        operator.start("--alerts-port", "0")
        log(f"operator confined: {operator.confined or 'no limits (--no-limits)'}")
        startup = bench.acting(started_at)
        bench.operator_started()
        started_up = Snapshot(cluster)  # the operator has listed and watched by now
        idle = bench.idle()
        log(f"idle: {idle}")
        with operator.profiled("operator-detection") if args.profile else contextlib.nullcontext():
            latencies = bench.detection()
        with operator.profiled("operator-burst") if args.profile else contextlib.nullcontext():
            burst = bench.burst()
        after_start = Snapshot(cluster).since(started_up)["operator"]
        version = cluster.server_version()
    return {
        "when": datetime.now(UTC).isoformat(),
        "machine": {**report.machine(load_start, version), "load": os.getloadavg()},
        "source": report.source(),
        "nodes": args.nodes,
        "pods": args.pods,
        "identity": args.identity,
        "election": args.election,
        "limits": operator.confined or "none (--no-limits)",
        **setup,
        **startup,
        **idle,
        "detection_p50_s": statistics.median(latencies) if latencies else None,
        "detection_p99_s": report.pct(latencies, 99) if latencies else None,
        "detection_samples": len(latencies),
        **burst,
        "cluster_wide_lists_after_start": after_start.get(CLUSTER_LIST, 0.0),
        "pod_lists_after_start": after_start.get(f"{CLUSTER_LIST} pods", 0.0),
        "operator_requests_after_start": after_start,
        "wall_s": time.monotonic() - started,
    }


def render(r: dict[str, Any]) -> str:
    mark = report.verdict
    p99 = r["detection_p99_s"]
    limit = r["burst_limit"]
    lines = [
        f"pitstop scale benchmark: {r['nodes']} nodes, {r['pods']} pods"
        f" ({r['machine']['cpus']} CPUs, load {r['machine']['load_start']} at start,"
        f" {r['machine']['load_end']} at end; shared and noisy)",
        f"  set-up: nodes Ready in        {r['setup_nodes_s']:8.0f} s",
        f"  set-up: pods made in          {r['setup_pods_s']:8.0f} s     ({r['setup_pods_per_s']:.0f} pods/s; {r.get('pods_running_at_start', '?')} Running at the operator's start)",
        f"  start -> acting               {r['startup_acting_s']:8.1f} s     ({r['startup_cpu_s']:.1f} s of the operator's CPU; no handler runs before all is indexed)",
        f"  operator: {'leader election on' if r.get('election') else 'alone (no Lease)'}; limits: {r.get('limits', 'none')}",
        f"  operator RSS                  {r['rss_mb']:8.1f} MB    target <= {TARGET_RSS_MB:.0f} MB   {mark(r['rss_mb'] <= TARGET_RSS_MB)}",
        f"  operator RSS peak (start-up)  {r.get('rss_peak_mb', float('nan')):8.1f} MB    (what the memory limit must hold)",
        f"  operator idle CPU             {r['idle_cpu_percent']:8.2f} %     target <= {TARGET_IDLE_CPU:.0f} %      {mark(r['idle_cpu_percent'] <= TARGET_IDLE_CPU)}{idle_note(r)}",
        f"  detection latency p50         {r['detection_p50_s']:8.3f} s     ({r['detection_samples']} samples)",
        f"  detection latency p99         {p99:8.3f} s     target <= {TARGET_P99_S:.0f} s      {mark(p99 <= TARGET_P99_S)}",
        f"  burst of {r['burst']}: all admitted in  {r['burst_admitted_s']:8.1f} s     (maxConcurrentRepairs {limit})",
        f"  burst: all done in            {r['burst_done_s']:8.1f} s",
        f"  burst: most active at once    {r['burst_peak_active']:8.0f}       limit {limit:<11} {mark(r['burst_peak_active'] <= limit)}",
    ]
    lines += requests_lines(r)
    lines.append(f"  wall time                     {r['wall_s']:8.0f} s")
    return "\n".join(lines)


def idle_note(r: dict[str, Any]) -> str:
    """Whether the idle window was idle: kwok starting pods during it makes events."""
    running = r.get("pods_running_at_idle")
    if running is None or running >= r["pods"]:
        return ""
    return f"  (kwok still starting pods: {running} of {r['pods']} Running)"


def requests_lines(r: dict[str, Any]) -> list[str]:
    """The operator's API requests per repair against the budget, and its LISTs."""
    if r["identity"] != "sa":
        return ["  API requests: not attributed (the operator ran as admin: --identity admin)"]
    mark = report.verdict
    mine = r["burst_requests"]["operator"]
    n, instances = r["burst"], r["burst_instances"]
    budget = (3 * instances + 20 * n) / n
    verbs = sorted(k for k in mine if " " not in k)
    by_verb = []
    for verb in verbs:
        parts = sorted(
            ((k.split(" ", 1)[1], v) for k, v in mine.items() if k.startswith(verb + " ")),
            key=lambda kv: -kv[1],
        )
        detail = ", ".join(f"{res} {v / n:.1f}" for res, v in parts)
        by_verb.append(f"{verb} {mine[verb] / n:.1f}" + (f" ({detail})" if detail else ""))
    everyone = r["burst_requests"]["everyone"]
    lists = r["cluster_wide_lists_after_start"]
    pod_lists = r.get("pod_lists_after_start", 0.0)
    repairs = r["detection_samples"] + n  # every repair made after the start-up
    total = sum(v for k, v in mine.items() if " " not in k)
    idle = ", ".join(
        f"{k} {v:.1f}" for k, v in sorted(r["idle_requests_per_min"].items()) if " " not in k
    )
    per = total / n
    return [
        f"  API requests per repair       {per:8.1f}       budget 3 x {instances / n:.1f} instances + 20 = {budget:.0f}   {mark(per <= budget)}",
        "    by verb (operator's ServiceAccount), per repair:",
        *(f"      {line}" for line in by_verb),
        "    everyone, apiserver_request_total during the burst: "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(everyone.items())),
        f"  cluster-wide LISTs after start-up {lists - pod_lists:4.0f}       target 0           {mark(lists == pod_lists)}",
        f"  its reads of a node's pods   {pod_lists:8.0f}       <= 3 a repair ({3 * repairs})  {mark(pod_lists <= 3 * repairs)}"
        "  (fieldSelector spec.nodeName: the drain's end, the give-back, a deletion's give-back)",
        f"  operator requests per minute while idle: {idle or '0'}",
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench policy", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pods", type=int, default=20000)
    p.add_argument("--samples", type=int, default=60)
    p.add_argument("--settle", type=float, default=30.0, help="seconds before the idle window")
    p.add_argument("--idle-window", type=float, default=60.0)
    p.add_argument("--burst", type=int, default=50, help="nodes failing in the same second")
    p.add_argument(
        "--burst-concurrency", type=int, default=10, help="the burst pool's maxConcurrentRepairs"
    )
    p.add_argument(
        "--identity",
        choices=("sa", "admin"),
        default="sa",
        help="the operator's credentials: its ServiceAccount (its requests are counted) or admin",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the operator with py-spy during detection and the burst"
        " (bench/results/operator-*.speedscope.json)",
    )
    p.add_argument(
        "--cluster-dir",
        type=Path,
        help="measure on the cluster in this PITSTOP_CLUSTER_DIR (started there if it is"
        " not running, populated if it is not yet, grown if it is smaller) and keep it at"
        " the end, to measure again on it",
    )
    p.add_argument(
        "--election",
        action="store_true",
        help="the operator in leader election (--leader-elect, the Deployment's Lease):"
        " start -> acting includes taking the Lease",
    )
    p.add_argument(
        "--no-limits",
        action="store_true",
        help="the operator without the Deployment's limits (by default it runs in a cgroup"
        " of 1 CPU and 1 GiB where the machine allows it)",
    )
    p.add_argument(
        "--pods-made",
        action="store_true",
        help="start the operator once every pod is made, Running or not: on a loaded"
        " machine kwok marks pods Running at a few a second, and the operator watches and"
        " indexes them either way (the count Running at its start is reported); the idle"
        " window waits for every pod to be Running (up to 15 min)",
    )
    p.add_argument("--quick", action="store_true", help="200 nodes, 2,000 pods, 20 samples")
    p.add_argument("--output", type=Path, default=RESULTS / "policy.json")
    return p


def quick(args: argparse.Namespace) -> None:
    args.nodes, args.pods, args.samples, args.settle, args.idle_window = 200, 2000, 20, 10, 20


def main(argv: list[str] | None = None) -> int:
    return entry(parser(), quick, run, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
