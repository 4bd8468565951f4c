#!/usr/bin/env python3
"""The drain benchmark (`make bench`): pitstop against `kubectl drain` on one
local control plane, in one run.

- Drain: per round, two fresh fake nodes carrying 110 Deployment-owned instance
  pods each (PDBs allowing every disruption, no tasks in flight); one is drained by
  pitstop (NodeRepair created -> phase Repairing), the other by `kubectl drain
  --ignore-daemonsets --delete-emptydir-data` (wall time of the command). The tool
  that goes first alternates per round. Evicted pods are re-created on a spare pool.
- NodeRepair -> cordon: create call returned -> node seen `spec.unschedulable: true`.
- Last task done -> first eviction: an instance's `pitstop.dev/inflight-tasks`
  seen going 1 -> 0 -> the first pod of that node seen with a deletionTimestamp.

Every timestamp comes from watch streams read by this process (raw JSON, no model
deserialisation), on one monotonic clock. The script starts and stops its own
cluster and operator; it prints figures and PASS/MISS against the targets of the
issue but never fails on them (the machine it runs on is shared and noisy).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
NS = "bench"
GROUP, VERSION, PLURAL = "pitstop.dev", "v1alpha1", "noderepairs"
KEY = "bench.pitstop.dev"
"""Prefix of the benchmark's own labels."""
INFLIGHT = "pitstop.dev/inflight-tasks"
IMAGE = "registry.k8s.io/pause:3.10"  # never pulled: kwok runs no containers

TIMELINE = ("cordon_s", "first_eviction_s", "last_eviction_s", "last_pod_gone_s")
"""Per-drain marks, in seconds from the start, taken from the watches."""

TARGET_RATIO = 3.0
TARGET_CORDON_MS = 50.0
TARGET_TASK_MS = 100.0

T = TypeVar("T")


class BenchError(Exception):
    pass


def now() -> float:
    return time.perf_counter()


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- what the watches saw -------------------------------------------------------


@dataclass
class NodeSeen:
    unschedulable: bool = False
    ready: bool = False
    gone: bool = False
    flips: list[tuple[float, bool]] = field(default_factory=list)
    """(time, unschedulable) at every change of spec.unschedulable."""


@dataclass
class PodSeen:
    name: str
    node: str | None
    labels: dict[str, str]
    running: bool = False
    inflight: str | None = None
    inflight_seen: list[tuple[float, str | None]] = field(default_factory=list)
    deleting_at: float | None = None
    gone_at: float | None = None

    @property
    def live(self) -> bool:
        return self.gone_at is None

    @property
    def serving(self) -> bool:
        """Running, Ready and not terminating."""
        return self.live and self.running and self.deleting_at is None


@dataclass
class RepairSeen:
    node: str
    phase: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    """First time each phase was seen."""
    message: str = ""
    gone_at: float | None = None
    finalizer_at: float | None = None
    """First time seen with a finalizer (kopf's, which lets a deletion give the node back)."""
    history: list[str] = field(default_factory=list)
    """Every watch event: type, phase, finalizers, deletion mark (for anomalies)."""


class World:
    """The cluster as this process's watches saw it, with arrival times."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.nodes: dict[str, NodeSeen] = {}
        self.pods: dict[str, PodSeen] = {}
        self.repairs: dict[str, RepairSeen] = {}
        self.check: Callable[[], None] = lambda: None
        """Called while waiting: raises when something we depend on died."""

    def on_node(self, t: float, kind: str, obj: dict[str, Any]) -> None:
        seen = self.nodes.setdefault(obj["metadata"]["name"], NodeSeen())
        if kind == "DELETED":
            seen.gone = True
            return
        seen.gone = False
        unschedulable = bool((obj.get("spec") or {}).get("unschedulable"))
        if unschedulable != seen.unschedulable:
            seen.flips.append((t, unschedulable))
            seen.unschedulable = unschedulable
        conditions = (obj.get("status") or {}).get("conditions") or []
        seen.ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def on_pod(self, t: float, kind: str, obj: dict[str, Any]) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        seen = self.pods.get(meta["uid"])
        if seen is None:
            seen = self.pods[meta["uid"]] = PodSeen(meta["name"], None, {})
        seen.node = (obj.get("spec") or {}).get("nodeName")
        seen.labels = meta.get("labels") or {}
        seen.running = status.get("phase") == "Running" and any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
        )
        inflight = (meta.get("annotations") or {}).get(INFLIGHT)
        if inflight != seen.inflight:
            seen.inflight = inflight
            seen.inflight_seen.append((t, inflight))
        if meta.get("deletionTimestamp") and seen.deleting_at is None:
            seen.deleting_at = t
        if kind == "DELETED":
            seen.gone_at = t
            if seen.deleting_at is None:
                seen.deleting_at = t

    def on_repair(self, t: float, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        seen = self.repairs.setdefault(name, RepairSeen(node=obj["spec"]["nodeName"]))
        status = obj.get("status") or {}
        phase = status.get("phase")
        if phase:
            seen.phase = phase
            seen.phases.setdefault(phase, t)
        seen.message = status.get("message") or ""
        meta = obj["metadata"]
        if meta.get("finalizers") and seen.finalizer_at is None:
            seen.finalizer_at = t
        seen.history.append(
            f"{t:.3f} {kind} phase={phase} finalizers={meta.get('finalizers')}"
            f" deleting={bool(meta.get('deletionTimestamp'))}"
        )
        if kind == "DELETED":
            seen.gone_at = t

    # --- queries (call with the lock held, e.g. inside wait()) ---

    def pods_on(self, node: str) -> list[PodSeen]:
        return [p for p in self.pods.values() if p.node == node and p.live]

    def serving_on(self, node: str) -> list[PodSeen]:
        return [p for p in self.pods_on(node) if p.serving]

    def count_serving(self, labels: dict[str, str]) -> int:
        return sum(
            1
            for p in self.pods.values()
            if p.serving and all(p.labels.get(k) == v for k, v in labels.items())
        )

    def first_flip(self, node: str, to: bool, after: float) -> float | None:
        for t, value in self.nodes[node].flips:
            if value == to and t >= after:
                return t
        return None

    def active_repair_on(self, node: str) -> bool:
        return any(r.node == node and r.gone_at is None for r in self.repairs.values())

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """Blocks until probe() (run under the lock at every watch event) is truthy."""
        deadline = now() + timeout
        while True:
            with self.cond:
                result = self.cond.wait_for(probe, timeout=min(1.0, max(0.0, deadline - now())))
            if result:
                return result
            self.check()
            if now() >= deadline:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


class Watcher(threading.Thread):
    """One list+watch stream, read as raw JSON lines; each event is stamped on
    arrival and handed to `handle` under the World's lock."""

    def __init__(
        self,
        name: str,
        lister: Callable[..., Any],
        handle: Callable[[float, str, dict[str, Any]], None],
        world: World,
    ) -> None:
        super().__init__(name=f"watch-{name}", daemon=True)
        self.lister = lister
        self.handle = handle
        self.world = world
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self.response: Any = None

    def run(self) -> None:
        version: str | None = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    listing = json.loads(self.lister(_preload_content=False).data)
                    version = listing["metadata"]["resourceVersion"]
                    t = now()
                    with self.world.cond:
                        for item in listing["items"]:
                            self.handle(t, "ADDED", item)
                        self.world.cond.notify_all()
                    self.synced.set()
                self.response = self.lister(
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=240,
                    _preload_content=False,
                    _request_timeout=(5, 300),
                )
                for line in iter_resp_lines(self.response):
                    if not line:
                        continue
                    t = now()
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            version = None  # too old: list again
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if kind == "BOOKMARK":
                        continue
                    with self.world.cond:
                        self.handle(t, kind, obj)
                        self.world.cond.notify_all()
            except Exception as e:
                if self.stopping.is_set():
                    return
                log(f"{self.name}: {type(e).__name__}: {e}; reconnecting")
                time.sleep(0.5)

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(Exception):
            self.response.shutdown()
        with contextlib.suppress(Exception):
            self.response.close()


class Laps:
    """Seconds spent in each named stage, one after the other."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.mark = now()

    def lap(self, name: str) -> None:
        self.laps[name] = round(now() - self.mark, 2)
        self.mark = now()


# --- the environment: cluster, operator, API clients ------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubectl_binary() -> str:
    versions = dict(
        line.split("=", 1)
        for line in (REPO / "hack/versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    cache = Path(os.environ.get("PITSTOP_CACHE", Path.home() / ".cache/pitstop"))
    pinned = cache / "bin" / f"kube-{versions['KUBE_VERSION']}" / "kubectl"
    if pinned.exists():
        return str(pinned)
    found = shutil.which("kubectl")
    if found is None:
        raise BenchError("no kubectl: run `make build` first")
    return found


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM to the process group we started, then SIGKILL after `grace`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


class Bench:
    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.world = World()
        self.kubectl = kubectl_binary()
        self.state = Path(tempfile.mkdtemp(prefix="pitstop-bench-"))
        self.kubeconfig = str(self.state / "admin.kubeconfig")
        self.operator: subprocess.Popen[Any] | None = None
        self.watchers: list[Watcher] = []
        self.anomalies: list[str] = []
        self.early_cordons = 0

    # --- setup and teardown ---

    def start_cluster(self) -> None:
        env = {**os.environ, "PITSTOP_CLUSTER_DIR": str(self.state), "PITSTOP_NODES": "0"}
        self.stack.callback(self._cluster_down, env)
        log(f"starting a private control plane in {self.state}")
        up = subprocess.run(
            [str(REPO / "hack/cluster.sh"), "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            start_new_session=True,
        )
        if up.returncode != 0:
            raise BenchError(f"hack/cluster.sh up failed:\n{up.stderr}")
        api = config.new_client_from_config(config_file=self.kubeconfig)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.run_kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "crds"))
        self.run_kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        self.run_kubectl("api-resources")  # warms kubectl's discovery cache for the drains
        self.core.create_namespace({"metadata": {"name": NS}})
        self.poll("the default ServiceAccount", lambda: self._has_default_sa(), 60)

    def _has_default_sa(self) -> bool:
        return bool(self.core.list_namespaced_service_account(NS).items)

    def _cluster_down(self, env: dict[str, str]) -> None:
        log("stopping the control plane")
        subprocess.run(
            [str(REPO / "hack/cluster.sh"), "down"],
            env=env,
            capture_output=True,
            timeout=120,
            start_new_session=True,
        )
        shutil.rmtree(self.state, ignore_errors=True)

    def start_watches(self) -> None:
        def api() -> client.ApiClient:
            return config.new_client_from_config(config_file=self.kubeconfig)

        w = self.world
        core_nodes, core_pods = client.CoreV1Api(api()), client.CoreV1Api(api())
        custom = client.CustomObjectsApi(api())
        self.watchers = [
            Watcher("nodes", core_nodes.list_node, w.on_node, w),
            Watcher("pods", lambda **kw: core_pods.list_namespaced_pod(NS, **kw), w.on_pod, w),
            Watcher(
                "repairs",
                lambda **kw: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw),
                w.on_repair,
                w,
            ),
        ]
        for watcher in self.watchers:
            watcher.start()
            self.stack.callback(watcher.stop)
        for watcher in self.watchers:
            if not watcher.synced.wait(30):
                raise BenchError(f"{watcher.name} did not sync")

    def start_operator(self) -> None:
        health, metrics = free_port(), free_port()
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = (RESULTS / "operator.log").open("w")
        self.stack.callback(out.close)
        pitstop = Path(sys.executable).parent / "pitstop"
        self.operator = subprocess.Popen(
            [
                *(str(pitstop), "run", "--kubeconfig", self.kubeconfig, "--bind", "127.0.0.1"),
                *("--health-port", str(health), "--metrics-port", str(metrics)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.stack.callback(stop_process, self.operator)
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        self.world.check = self._operator_alive
        self.poll("the operator's /healthz", lambda: self._healthy(health), 60)
        log(f"operator running (pid {self.operator.pid}, log {RESULTS / 'operator.log'})")

    def _operator_alive(self) -> None:
        if self.operator is not None and self.operator.poll() is not None:
            raise BenchError(f"the operator exited ({self.operator.returncode}); see operator.log")

    def _healthy(self, port: int) -> bool:
        self._operator_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def poll(self, what: str, probe: Callable[[], Any], timeout: float) -> Any:
        """For set-up only (nothing is timed here): probe every 0.2 s."""
        deadline = now() + timeout
        while True:
            result = probe()
            if result:
                return result
            if now() > deadline:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.2)

    def kubectl_command(self, *args: str) -> list[str]:
        cache = str(self.state / "kubectl-cache")
        return [self.kubectl, "--kubeconfig", self.kubeconfig, "--cache-dir", cache, *args]

    def run_kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.kubectl_command(*args),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise BenchError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    # --- objects ---

    def make_nodes(self, names: list[str], labels: dict[str, str]) -> None:
        for name in names:
            self.core.create_node(
                {
                    "metadata": {
                        "name": name,
                        "annotations": {
                            "kwok.x-k8s.io/node": "fake",
                            "node.alpha.kubernetes.io/ttl": "0",
                        },
                        "labels": {
                            "type": "kwok",
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            **labels,
                        },
                    }
                }
            )
        w = self.world
        w.wait(
            f"nodes {names[0]}.. Ready",
            lambda: all(n in w.nodes and w.nodes[n].ready for n in names),
            60,
        )

    def delete_nodes(self, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(ApiException):
                self.core.delete_node(name)

    def make_function(
        self, name: str, replicas: int, selector: dict[str, str], labels: dict[str, str], pdb: bool
    ) -> None:
        """A Deployment of `replicas` instance pods pinned by `selector`, and a PDB
        that allows every disruption."""
        pod_labels = {"app": name, "pitstop.dev/instance-type": "async", **labels}
        self.apps.create_namespaced_deployment(
            NS,
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": pod_labels},
                        "spec": {
                            "nodeSelector": selector,
                            "terminationGracePeriodSeconds": self.args.grace,
                            "containers": [{"name": "fn", "image": IMAGE}],
                        },
                    },
                },
            },
        )
        if pdb:
            self.policy.create_namespaced_pod_disruption_budget(
                NS,
                {
                    "metadata": {"name": name, "labels": labels},
                    "spec": {"maxUnavailable": "100%", "selector": {"matchLabels": {"app": name}}},
                },
            )

    def pdbs_settled(self, selector: str) -> bool:
        for pdb in self.policy.list_namespaced_pod_disruption_budget(
            NS, label_selector=selector
        ).items:
            s = pdb.status
            if s is None or (s.observed_generation or 0) < pdb.metadata.generation:
                return False
            if not s.expected_pods or s.disruptions_allowed != s.expected_pods:
                return False
        return True

    def create_repair(self, name: str, node: str) -> None:
        self.custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "NodeRepair",
                "metadata": {"name": name, "labels": {KEY + "/bench": "true"}},
                "spec": {"nodeName": node, "reason": "bench"},
            },
        )

    def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float) -> str:
        w = self.world

        def reached() -> str | None:
            seen = w.repairs.get(name)
            if seen is None:
                return None
            if seen.phase in ("Failed", "Aborted"):
                raise BenchError(f"NodeRepair {name} ended {seen.phase}: {seen.message}")
            return next((p for p in phases if p in seen.phases), None)

        return w.wait(f"NodeRepair {name} in {'/'.join(phases)}", reached, timeout)

    def release(self, name: str, node: str) -> float:
        """Deletes the NodeRepair; returns the seconds until the node was seen uncordoned.
        The node is given back before the finalizer goes, so it must be uncordoned by
        the time the NodeRepair is gone."""
        start = now()
        self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        deleted = now()
        w = self.world
        w.wait(f"{name} gone", lambda: w.repairs[name].gone_at is not None, 60)
        w.wait(
            f"{node} uncordoned after {name} was gone",
            lambda: not w.nodes[node].unschedulable,
            5,
        )
        with w.cond:
            t = w.first_flip(node, False, start)
        return (t - deleted) if t is not None else 0.0

    # --- 1. drain: pitstop against kubectl drain ---

    def drain_rounds(self) -> list[dict[str, Any]]:
        args, w = self.args, self.world
        spares = [f"bench-spare-{i}" for i in range(args.spares)]
        self.make_nodes(spares, {KEY + "/pool": "spare"})
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
                self.make_nodes([node], {slot[tool]: "true"})
            for tool in order:
                for f, replicas in enumerate(per_fn):
                    self.make_function(
                        f"r{r}-{tool}-f{f}",
                        replicas,
                        {slot[tool]: "true"},
                        {**round_label, KEY + "/tool": tool},
                        pdb=True,
                    )
            w.wait(
                f"round {r}: {args.pods} Running pods on each node",
                lambda nodes=nodes: all(len(w.serving_on(n)) == args.pods for n in nodes.values()),
                300,
            )
            stage("pods_running")
            self.poll("PDBs settled", lambda r=r: self.pdbs_settled(f"{KEY}/round={r}"), 60)
            stage("pdbs_settled")
            # From now on, re-created pods may also land on the spare pool.
            for spare in spares:
                self.core.patch_node(
                    spare, {"metadata": {"labels": {s: "true" for s in slot.values()}}}
                )
            result: dict[str, Any] = {"round": r, "first": order[0], "stages_s": stages.laps}
            for tool in order:
                measure = self.drain_pitstop if tool == "pitstop" else self.drain_kubectl
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
        self.delete_nodes(spares)
        return rounds

    def end_round(self, r: int, nodes: list[str], spares: list[str], slots: list[str]) -> None:
        self.delete_workload(f"{KEY}/round={r}")
        for spare in spares:
            self.core.patch_node(spare, {"metadata": {"labels": dict.fromkeys(slots)}})
        self.delete_nodes(nodes)
        w = self.world
        w.wait(
            f"round {r}'s pods gone",
            lambda: (
                not any(p.live and p.labels.get(KEY + "/round") == str(r) for p in w.pods.values())
            ),
            180,
        )

    def delete_workload(self, selector: str) -> None:
        """Deletes Deployments, PDBs and pods by label. The garbage collector would
        take about a minute for 220 pods here, so once the ReplicaSets are gone
        (nothing re-creates pods any more) the pods go at once (grace period 0)."""
        self.apps.delete_collection_namespaced_deployment(
            NS, label_selector=selector, propagation_policy="Background"
        )
        self.policy.delete_collection_namespaced_pod_disruption_budget(NS, label_selector=selector)
        self.poll(
            f"ReplicaSets {selector} gone",
            lambda: not self.apps.list_namespaced_replica_set(NS, label_selector=selector).items,
            120,
        )
        self.core.delete_collection_namespaced_pod(
            NS, label_selector=selector, grace_period_seconds=0
        )

    def node_timeline(self, node: str, start: float) -> dict[str, float | None]:
        """Seconds from `start` to the cordon, the first and last eviction (pod seen
        terminating) and the last pod gone."""
        w = self.world
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

    def drain_pitstop(self, node: str, name: str) -> dict[str, Any]:
        w = self.world
        evictions = self.eviction_counts()
        start = now()
        self.create_repair(name, node)
        self.wait_phase(name, ("Repairing",), 600)
        with w.cond:
            phases = dict(w.repairs[name].phases)
        w.wait(f"pods of {node} gone", lambda: not w.pods_on(node), 30)
        after = self.eviction_counts()
        result = {
            "drain_s": phases["Repairing"] - start,
            **self.node_timeline(node, start),
            "phases_s": {k: round(t - start, 3) for k, t in phases.items()},
            "eviction_requests": {k: v - evictions.get(k, 0) for k, v in after.items()},
        }
        self.release(name, node)
        return result

    def eviction_counts(self) -> dict[str, float]:
        """pitstop_evictions_total by result, from the operator's /metrics."""
        counts: dict[str, float] = {}
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("pitstop_evictions_total{"):
                    labels, value = line.rsplit(" ", 1)
                    result = labels.split('result="', 1)[1].split('"', 1)[0]
                    counts[result] = float(value)
        return counts

    def drain_kubectl(self, node: str, _name: str) -> dict[str, Any]:
        w = self.world
        start = now()
        proc = subprocess.run(
            self.kubectl_command(
                "drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=5m"
            ),
            capture_output=True,
            text=True,
            timeout=400,
        )
        done = now()
        if proc.returncode != 0:
            self.anomalies.append(f"kubectl drain {node} failed: {proc.stderr.strip()[-300:]}")
        w.wait(f"pods of {node} gone", lambda: not w.pods_on(node), 60)
        return {
            "drain_s": done - start,
            "retries_after_429": proc.stderr.count("will retry after"),
            "client_side_throttling_notes": proc.stderr.count("client-side throttling"),
            "exit_code": proc.returncode,
            **self.node_timeline(node, start),
        }

    # --- 2. NodeRepair -> cordon (and delete -> uncordon) ---

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
                self.anomalies.append(f"{series} #{attempt} on {node}: {e}; {self.describe(node)}")
                log(f"    sample failed, {node} retired: {e}")
                pool.remove(node)
            attempt += 1

    def describe(self, node: str) -> str:
        """The node's cordon and lock, and every NodeRepair of it, as the API has them."""
        seen = self.core.read_node(node)
        lock = (seen.metadata.annotations or {}).get("pitstop.dev/repair")
        parts = [f"node unschedulable={bool(seen.spec.unschedulable)} lock={lock}"]
        with self.world.cond:
            last = [(n, r) for n, r in self.world.repairs.items() if r.node == node][-1:]
            for name, seen in last:
                parts.append(f"{name} as watched: " + " | ".join(seen.history[-8:]))
        listing = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        for nr in listing["items"]:
            if nr["spec"]["nodeName"] != node:
                continue
            meta, status = nr["metadata"], nr.get("status") or {}
            parts.append(
                f"{meta['name']}: phase={status.get('phase')} message={status.get('message')!r}"
                f" deletionTimestamp={meta.get('deletionTimestamp')}"
                f" finalizers={meta.get('finalizers')}"
            )
        return "; ".join(parts)

    def cordon_series(self) -> tuple[list[float], list[float]]:
        w = self.world
        pool = [f"bench-empty-{i}" for i in range(self.args.empty_nodes)]
        self.make_nodes(pool, {KEY + "/pool": "empty"})
        # Warm-up, not counted: the operator's first repair.
        self.create_repair("bench-warmup", pool[0])
        self.wait_phase("bench-warmup", ("Repairing",), 60)
        self.release("bench-warmup", pool[0])
        cordon: list[float] = []
        uncordon: list[float] = []
        self.early_cordons = 0

        def take(i: int, node: str) -> bool:
            name = f"bench-cordon-{i}"
            w.wait(
                f"{node} free",
                lambda: not w.nodes[node].unschedulable and not w.active_repair_on(node),
                60,
            )
            before = now()
            self.create_repair(name, node)
            returned = now()
            seen = w.wait(f"{node} cordoned", lambda: w.first_flip(node, True, before), 30)
            cordon.append(seen - returned)
            self.wait_phase(name, ("Repairing",), 60)
            with w.cond:
                finalized = w.repairs[name].finalizer_at
            if finalized is None or finalized > seen:
                self.early_cordons += 1  # the node was touched before a deletion could undo it
            uncordon.append(self.release(name, node))
            return True

        self.sample_loop("cordon", pool, take)
        self.delete_nodes(pool)
        return cordon, uncordon

    # --- 3. last task done -> first eviction ---

    def task_series(self) -> list[float]:
        args, w = self.args, self.world
        pool = [f"bench-task-{i}" for i in range(args.task_nodes)]
        for i, node in enumerate(pool):
            self.make_nodes([node], {KEY + "/task": str(i)})
            self.make_function(
                f"task-{i}", args.task_pods, {KEY + "/task": str(i)}, {KEY + "/task": "yes"}, False
            )
        samples: list[float] = []

        def take(i: int, node: str) -> bool:
            name = f"bench-task-{i}"
            pods = w.wait(
                f"{node} free with {args.task_pods} Running pods",
                lambda: self.free_with_pods(node),
                120,
            )
            pod = sorted(pods, key=lambda p: p.name)[0]
            self.set_inflight(pod, "1")
            start = now()
            self.create_repair(name, node)
            phase = self.wait_phase(name, ("WaitingForTasks", "Evicting", "Repairing"), 60)
            with w.cond:
                early = [
                    p.name
                    for p in w.pods.values()
                    if p.node == node and p.deleting_at and p.deleting_at >= start
                ]
            measured = phase == "WaitingForTasks" and not early
            if not measured:
                self.anomalies.append(
                    f"{name}: phase {phase} with a busy instance; evicted early: {early}"
                )
            else:
                done = self.set_inflight(pod, "0")
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
            self.wait_phase(name, ("Repairing",), 60)
            self.release(name, node)
            return measured

        self.sample_loop("task", pool, take)
        self.delete_workload(f"{KEY}/task=yes")
        self.delete_nodes(pool)
        return samples

    def free_with_pods(self, node: str) -> list[PodSeen] | None:
        """The node's pods, once it is uncordoned, without a repair, and carries its
        full set of Running pods (call with the lock held)."""
        w = self.world
        if w.nodes[node].unschedulable or w.active_repair_on(node):
            return None
        pods = w.pods_on(node)
        if len(pods) != self.args.task_pods or not all(p.serving for p in pods):
            return None
        return pods

    def set_inflight(self, pod: PodSeen, value: str) -> float:
        """Annotates the pod; returns when this process's pod watch saw the change
        (the operator's watch gets the same event at the same moment)."""
        start = now()
        self.core.patch_namespaced_pod(
            pod.name, NS, {"metadata": {"annotations": {INFLIGHT: value}}}
        )
        w = self.world
        return w.wait(
            f"{pod.name} {INFLIGHT}={value}",
            lambda: next((t for t, v in pod.inflight_seen if v == value and t >= start), None),
            30,
        )


# --- figures -----------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def series(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 1),
        "p99_ms": round(pct(ms, 99), 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
        "samples_ms": [round(v, 1) for v in ms],
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def median_of(rounds: list[dict[str, Any]], tool: str, key: str) -> float | None:
    values = [r[tool][key] for r in rounds if r[tool].get(key) is not None]
    return statistics.median(values) if values else None


def report(results: dict[str, Any]) -> str:
    m, cfg, d = results["machine"], results["config"], results["drain"]
    lines = [
        f"pitstop drain benchmark, {results['date']} (wall time {results['wall_s']:.0f} s)",
        f"machine: {m['cpus']} CPUs, load average {m['load_start']} at start,"
        f" {m['load_end']} at end; Kubernetes {m['kubernetes']}, local control plane + kwok",
        f"pitstop at {results['source']['commit']}"
        + (" + uncommitted operator/ changes" if results["source"]["operator_modified"] else ""),
        "note: the machine is shared and noisy; read the figures as orders of magnitude.",
        "",
        f"1. drain a node of {cfg['pods']} instance pods ({cfg['functions']} Deployments,"
        f" PDB maxUnavailable 100%, terminationGracePeriodSeconds {cfg['grace']}),"
        f" {len(d['rounds'])} rounds alternating",
        f"   {'round':<6}{'first':<9}{'pitstop':>10}{'kubectl':>10}{'ratio':>9}",
    ]
    for r in d["rounds"]:
        lines.append(
            f"   {r['round']:<6}{r['first']:<9}{r['pitstop']['drain_s']:>9.2f}s"
            f"{r['kubectl']['drain_s']:>9.2f}s{r['ratio']:>8.1f}x"
        )
    if d["rounds"]:
        lines.append(
            f"   {'median':<15}{d['pitstop_median_s']:>9.2f}s{d['kubectl_median_s']:>9.2f}s"
            f"{d['ratio']:>8.1f}x   target >= {TARGET_RATIO:.0f}x: {verdict(d['ratio_met'])}"
        )
        heads = ("cordon", "1st evict", "last evict", "last gone", "done")
        lines.append("   medians, s from the start " + "".join(f"{h:>11}" for h in heads))
        for tool in ("pitstop", "kubectl"):
            t = d["timeline_medians"][tool]
            cells = [t.get(k) for k in TIMELINE] + [d[tool + "_median_s"]]
            text = "".join(f"{c:>11.2f}" if c is not None else f"{'-':>11}" for c in cells)
            lines.append(f"     {tool:<23}{text}")
        requests: dict[str, float] = {}
        for r in d["rounds"]:
            for k, v in r["pitstop"].get("eviction_requests", {}).items():
                requests[k] = requests.get(k, 0) + v
        lines.append(
            "   pitstop eviction requests: "
            + (", ".join(f"{k} {v:.0f}" for k, v in sorted(requests.items())) or "-")
        )
        retries = sum(r["kubectl"].get("retries_after_429", 0) for r in d["rounds"])
        throttled = sum(r["kubectl"].get("client_side_throttling_notes", 0) for r in d["rounds"])
        lines.append(
            f"   kubectl: eviction retries after 429: {retries};"
            f" 'client-side throttling' notes in its stderr: {throttled}"
        )
    lines += [
        "",
        f"   {'latency':<36}{'n':>4}{'p50':>10}{'p99':>10}   target",
    ]
    rows = [
        ("2. NodeRepair created -> cordon", results["cordon"], TARGET_CORDON_MS),
        ("3. last task done -> 1st eviction", results["task"], TARGET_TASK_MS),
        ("   NodeRepair deleted -> uncordon", results["uncordon"], None),
    ]
    for label, s, target in rows:
        if not s["n"]:
            lines.append(f"{label:<39}{0:>4}   (no samples)")
            continue
        goal = ""
        if target is not None:
            goal = f"p50 <= {target:.0f} ms: {verdict(s['p50_ms'] <= target)}"
        lines.append(f"{label:<39}{s['n']:>4}{s['p50_ms']:>8.1f}ms{s['p99_ms']:>8.1f}ms   {goal}")
    if results["cordon"]["n"]:
        lines.append(
            f"   cordon series: {results['cordoned_before_finalizer']} of"
            f" {results['cordon']['n']} nodes were cordoned before the NodeRepair carried"
            " its finalizer (a deletion in that window leaves the node cordoned)"
        )
    if results["anomalies"]:
        lines += ["", "anomalies:"] + [f"  - {a}" for a in results["anomalies"]]
    return "\n".join(lines)


def source() -> dict[str, Any]:
    """The commit measured, and whether operator/ differed from it."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return proc.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "operator_modified": bool(git("status", "--porcelain", "--", "operator")),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = now()
    measured = source()  # what the operator process is about to load
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with contextlib.ExitStack() as stack:
        bench = Bench(args, stack)
        bench.start_cluster()
        bench.start_watches()
        bench.start_operator()
        log(f"1/3 drain rounds ({now() - started:.0f}s)")
        rounds = bench.drain_rounds()
        log(f"2/3 NodeRepair -> cordon ({now() - started:.0f}s)")
        cordon, uncordon = bench.cordon_series()
        if cordon:
            log(f"    cordon p50 {pct(cordon, 50) * 1000:.0f} ms over {len(cordon)}")
        log(f"3/3 last task done -> first eviction ({now() - started:.0f}s)")
        task = bench.task_series()
        if task:
            log(f"    last task -> eviction p50 {pct(task, 50) * 1000:.0f} ms over {len(task)}")
        version = client.VersionApi(bench.core.api_client).get_code().git_version
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
                tool: {key: median_of(rounds, tool, key) for key in TIMELINE}
                for tool in ("pitstop", "kubectl")
            },
        )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(now() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "load_start": load_start,
            "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "kubernetes": version,
        },
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
        "cordon": series(cordon),
        "task": series(task),
        "uncordon": series(uncordon),
        "targets": {
            "ratio": TARGET_RATIO,
            "cordon_p50_ms": TARGET_CORDON_MS,
            "task_p50_ms": TARGET_TASK_MS,
        },
        "cordoned_before_finalizer": bench.early_cordons,
        "anomalies": bench.anomalies,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="drain rounds (default 5)")
    parser.add_argument(
        "--samples", type=int, default=50, help="samples per latency series (default 50)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 10 samples")
    parser.add_argument("--pods", type=int, default=110, help="instance pods per drained node")
    parser.add_argument(
        "--functions", type=int, default=11, help="Deployments (with a PDB each) per node"
    )
    parser.add_argument("--grace", type=int, default=1, help="terminationGracePeriodSeconds")
    parser.add_argument("--spares", type=int, default=4, help="nodes taking the evicted pods")
    parser.add_argument("--empty-nodes", type=int, default=5, help="nodes of the cordon series")
    parser.add_argument("--task-nodes", type=int, default=5, help="nodes of the task series")
    parser.add_argument("--task-pods", type=int, default=5, help="instance pods per task node")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.samples = 2, 10

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        results = run(args)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    log(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
