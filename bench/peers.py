"""The tools pitstop is measured against, each draining one node on the same
cluster in the same run."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from kubernetes.client.rest import ApiException

from bench.cluster import RESULTS, BenchError, Cluster, cache_dir, log, now, run_command, versions
from bench.watches import World
from bench.workload import NS

KUBECTL_DRAIN = ("--ignore-daemonsets", "--delete-emptydir-data", "--timeout=5m")
"""`kubectl drain` with its default settings, plus what a node with these pods needs."""

DRAIN_ATTEMPTS = 5
"""Runs of a failing `kubectl drain` before the round is given up."""


def kubectl_drain(
    cluster: Cluster,
    world: World,
    node: str,
    anomalies: list[str],
    *flags: str,
    binary: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Runs `kubectl drain NODE` (with `flags` after the defaults); the figure is the
    wall time until a run of it succeeds. kubectl retries a 429 but gives up on any
    other refused eviction (under one PDB, a burst of evictions makes the API server
    answer 409 when the budget's status keeps changing), so a failed drain is run
    again, as the script or person around it would; each failure is an anomaly."""
    start = now()
    stderr, failures, attempts = "", 0, 0
    for attempts in range(1, DRAIN_ATTEMPTS + 1):
        proc = subprocess.run(
            cluster.kubectl_command("drain", node, *KUBECTL_DRAIN, *flags, binary=binary),
            capture_output=True,
            text=True,
            timeout=400,
            env={**os.environ, **(env or {})},
        )
        stderr += proc.stderr
        if proc.returncode == 0:
            break
        failures += 1
        anomalies.append(
            f"kubectl drain {node} failed (run {attempts}): {proc.stderr.strip()[-300:]}"
        )
    done = now()
    try:
        world.wait(f"pods of {node} gone", lambda: not world.pods_on(node), 60)
    except BenchError as e:  # say what the drain said, not only that pods stayed
        said = proc.stderr.strip()[-600:] or "(nothing on stderr)"
        raise BenchError(f"{e}; kubectl drain exited {proc.returncode}: {said}") from e
    return {
        "drain_s": done - start,
        "runs": attempts,
        "failed_runs": failures,
        "retries_after_429": stderr.count("will retry after"),
        "client_side_throttling_notes": stderr.count("client-side throttling"),
        "exit_code": proc.returncode,
    }


def kubectl_drain_tuned(
    cluster: Cluster, world: World, node: str, anomalies: list[str], binary: str, qps: float
) -> dict[str, Any]:
    """The same drain by kubectl-qps (below) with its client rate limit raised to `qps`
    (burst twice that), and `--disable-eviction=false` said out loud: it still evicts
    through the Eviction API, so PDBs are honoured as by the default drain."""
    env = {"BENCH_KUBECTL_QPS": str(qps), "BENCH_KUBECTL_BURST": str(int(2 * qps))}
    return kubectl_drain(
        cluster, world, node, anomalies, "--disable-eviction=false", binary=binary, env=env
    )


EVICTOR_RETRY = 0.05
"""The bare evictor's pause after a refused eviction (429: the budget is spent)."""


def sequential_evict(cluster: Cluster, world: World, node: str) -> dict[str, Any]:
    """The bare sequential evictor, the floor under a PDB: cordon, then one eviction
    after the other with nothing between (no drain signal, no status, no pass), each
    sent when the one before answered, a refused one (429) sent again after
    EVICTOR_RETRY. `floor_s` is the sum of the accepted evictions' round trips: n x
    the API server's own time per eviction under the budget, which no client of the
    Eviction API can go below while evicting one at a time. `drain_s` runs until
    every pod is seen gone (after its grace period), as pitstop's does."""
    start = now()
    cluster.core.patch_node(node, {"spec": {"unschedulable": True}})
    with world.cond:
        pods = sorted(p.name for p in world.pods_on(node))
    took: list[float] = []
    refused = 0
    for pod in pods:
        body = {"metadata": {"name": pod, "namespace": NS}}
        while True:
            sent = now()
            try:
                cluster.core.create_namespaced_pod_eviction(pod, NS, body)
            except ApiException as e:
                if e.status == 404:
                    break
                if e.status not in (409, 429):  # 409: a conflict on the budget's status
                    raise BenchError(f"evicting {pod}: {e.status} {e.reason}") from e
                refused += 1
                time.sleep(EVICTOR_RETRY)
                continue
            took.append(now() - sent)
            break
    evicted = now()
    world.wait(f"pods of {node} gone", lambda: not world.pods_on(node), 60)
    return {
        "drain_s": now() - start,
        "evictions_s": evicted - start,
        "floor_s": sum(took),
        "eviction_p50_s": statistics.median(took) if took else None,
        "refused": refused,
    }


KUBECTL_QPS_SOURCE = Path(__file__).parent / "kubectl_qps" / "main.go"


def build_kubectl_qps() -> str:
    """Builds bench/kubectl_qps (kubectl with its client rate limit taken from the
    environment) into bench/results/build, with the module graph of the control
    plane's own build (same k8s.io/kubectl release as the server and the stock
    kubectl), offline from the module cache that build filled. Returns its path."""
    source = cache_dir() / "build" / f"kube-{versions()['KUBE_VERSION']}"
    work = RESULTS / "build" / "kubectl-qps"
    binary = work / "kubectl-qps"
    if binary.exists() and binary.stat().st_mtime > KUBECTL_QPS_SOURCE.stat().st_mtime:
        return str(binary)
    if not (source / "go.mod").exists():
        raise BenchError(f"no control plane build in {source}: run `make build` first")
    work.mkdir(parents=True, exist_ok=True)
    mod = (
        (source / "go.mod")
        .read_text()
        .replace("module pitstop.dev/kubebuild", "module pitstop.dev/benchkubectl", 1)
    )
    (work / "go.mod").write_text(mod)
    shutil.copy(source / "go.sum", work / "go.sum")
    shutil.copy(KUBECTL_QPS_SOURCE, work / "main.go")
    log("building bench/kubectl_qps (kubectl with a settable client rate limit)")
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    version = versions()["KUBE_VERSION"] + "+qps"  # says what it is in `version --client`
    ldflags = " ".join(
        f"-X {pkg}.gitVersion={version}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    )
    ldflags = "-s -w " + ldflags
    run_command(
        ["nice", "go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(binary), "."],
        "building kubectl-qps",
        1800,
        env=env,
        cwd=work,
    )
    return str(binary)
