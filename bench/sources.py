"""Task sources on a real node: the annotation contract against a metrics source
(an InstanceProfile reading the function's Prometheus gauge), side by side in one
run, with the project's own function runtime (function/) serving real requests.

1. **API-server writes per task**, at a fixed request rate, while no repair runs:
   PATCH/UPDATE/APPLY on pods (the pod object, not its status) counted by
   kube-apiserver itself (`apiserver_request_total`), divided by the requests
   the load generator saw completed. The annotation contract's runtime keeps
   `pitstop.dev/inflight-tasks` on its pod (`REPORT_ANNOTATION=1`); with the
   profile the count stays in the instance. Goal: 0 with a metrics source.
2. **Last task done → first eviction**, per repair of the real node under load:
   the end of the last request to the node's instances (the load generator's
   record) to the first pod of the node seen terminating (the benchmark's watch).
   Goal with the metrics source: p99 within one poll interval + 100 ms.

`python -m bench sources [--samples N] [--rate R] [--quick]`. The cluster has one
real node (PITSTOP_REAL_NODES, default 1); the function is built (`make function`)
and imported into its containerd. Traffic goes only to the real node's pods."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from tests.e2e.loadgen import BackgroundLoad, LoadConfig, Summary

from bench import report
from bench.cluster import REPO, RESULTS, BenchError, Cluster, Operator, log, poll
from bench.main import entry

GROUP, VERSION = "pitstop.dev", "v1alpha1"
POD_NETWORK = "10.90.0.0/16"
TOLERATE_REAL = [{"key": "pitstop.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]
IMAGE = "localhost/pitstop-function:bench"
POLL_INTERVAL = 0.5
REPLICAS = 2
SOURCES = ("annotation", "prometheus")


def pod_writes(cluster: Cluster) -> int:
    total = 0
    for line in cluster.get_raw("/metrics").splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if (
            labels.get("resource") == "pods"
            and labels.get("subresource", "") == ""
            and labels.get("verb") in ("PATCH", "UPDATE", "APPLY")
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def build_image(cluster: Cluster) -> None:
    log("building the function and importing its image into the real node")
    subprocess.run(
        ["make", "-s", "function"], cwd=REPO, check=True, capture_output=True, timeout=600
    )
    subprocess.run(
        [str(REPO / "function/build-image.sh")],
        cwd=REPO,
        env={**os.environ, "PITSTOP_CLUSTER_DIR": str(cluster.state), "IMAGE": IMAGE},
        check=True,
        capture_output=True,
        timeout=300,
    )


def deploy(cluster: Cluster, ns: str, node: str, source: str) -> None:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "ANNOTATIONS_FILE", "value": ""},
    ]
    if source == "annotation":
        env.append({"name": "REPORT_ANNOTATION", "value": "true"})
        cluster.run_kubectl("create", "role", "report", "-n", ns, "--verb=patch", "--resource=pods")
        cluster.run_kubectl(
            "create", "rolebinding", "report", "-n", ns, "--role=report",
            f"--serviceaccount={ns}:default",
        )  # fmt: skip
    else:
        profile = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InstanceProfile",
            "metadata": {"name": f"bench-{ns}"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "fn", "bench": ns}},
                "kind": "sync",
                "tasks": {
                    "prometheus": {"port": "metrics", "metric": "function_requests_in_flight"}
                },
                "drainSignal": {"httpPost": {"port": "metrics", "path": "/drain"}},
                "pollIntervalSeconds": POLL_INTERVAL,
            },
        }
        cluster.custom.create_cluster_custom_object(GROUP, VERSION, "instanceprofiles", profile)
    container = {
        "name": "function",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "metrics", "containerPort": 9100},
        ],
        "env": env,
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    labels = {"app": "fn", "bench": ns}
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "fn"},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": TOLERATE_REAL,
                    "readinessGates": [{"conditionType": "pitstop.dev/serving"}],
                    "terminationGracePeriodSeconds": 30,
                    "automountServiceAccountToken": source == "annotation",
                    "enableServiceLinks": False,
                    "containers": [container],
                },
            },
        },
    }
    cluster.apps.create_namespaced_deployment(ns, body)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fn"},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 8080}]},
    }
    cluster.core.create_namespaced_service(ns, service)
    routed(cluster, ns)


def routed(cluster: Cluster, ns: str) -> None:
    def ready() -> bool:
        slices = client.DiscoveryV1Api(cluster.api).list_namespaced_endpoint_slice(
            ns, label_selector="kubernetes.io/service-name=fn"
        )
        return (
            sum(
                1
                for s in slices.items
                for e in s.endpoints or []
                if e.conditions and e.conditions.ready
            )
            == REPLICAS
        )

    poll(f"{REPLICAS} fn pods routed in {ns}", ready, 180)


def load(cluster: Cluster, ns: str, rate: float, ms: tuple[int, int]) -> BackgroundLoad:
    config = LoadConfig(
        rate=rate, count=1_000_000, duration=600, ms=ms, allowed_networks=(POD_NETWORK,)
    )
    return BackgroundLoad(
        config, api=cluster.new_api(), namespace=ns, service="fn", port_name="http"
    )


class Evictions:
    """The first moment (wall clock) a pod of the namespace is seen terminating."""

    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.api = cluster.new_api()
        self.ns = ns
        self.first: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        core = client.CoreV1Api(self.api)
        w = watch.Watch()
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                for event in w.stream(core.list_namespaced_pod, self.ns, timeout_seconds=5):
                    pod = event["object"]
                    if pod.metadata.deletion_timestamp is not None and self.first is None:
                        self.first = time.time()
                    if self.stop.is_set():
                        return

    def __enter__(self) -> Evictions:
        self.thread.start()
        time.sleep(0.5)  # listed
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def last_task_end(summary: Summary) -> float | None:
    ends = [r["ended"] for r in summary.records if r.get("outcome") == "ok" and r.get("ended")]
    return summary.started_unix + max(ends) if ends else None


def repair_once(cluster: Cluster, ns: str, node: str, rate: float) -> dict[str, Any]:
    name = f"bench-{ns}-{int(time.time() * 1000) % 10**8}"
    with Evictions(cluster, ns) as evictions, load(cluster, ns, rate, (500, 1500)) as running:
        time.sleep(2.5)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodeRepair",
            "metadata": {"name": name},
            # Its pods are pinned to the node: the room check would hold it for ever.
            "spec": {
                "nodeName": node,
                "reason": "Bench",
                "requireRoom": False,
                "repair": {"strategy": "Manual"},
            },
        }
        cluster.custom.create_cluster_custom_object(GROUP, VERSION, "noderepairs", body)

        def repairing() -> bool:
            got = cluster.custom.get_cluster_custom_object(GROUP, VERSION, "noderepairs", name)
            return (got.get("status") or {}).get("phase") in ("Repairing", "Failed")

        poll(f"{name} Repairing", repairing, 180)
        summary = running.stop()
    end = last_task_end(summary)
    cluster.custom.delete_cluster_custom_object(GROUP, VERSION, "noderepairs", name)
    poll(
        f"{name} gone",
        lambda: (
            name
            not in {
                o["metadata"]["name"]
                for o in cluster.custom.list_cluster_custom_object(GROUP, VERSION, "noderepairs")[
                    "items"
                ]
            }
        ),
        120,
    )
    routed(cluster, ns)
    latency = None
    if end is not None and evictions.first is not None:
        latency = evictions.first - end
    return {"latency_s": latency, "clean": summary.clean, "defects": summary.defects()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started, load_start = time.monotonic(), report.load()
    with contextlib.ExitStack() as stack:
        cluster = Cluster(stack, prefix="pitstop-bench-sources-")
        cluster.start()
        nodes = cluster.core.list_node(label_selector="type=real").items
        if not nodes:
            raise BenchError("the cluster has no real node (PITSTOP_REAL_NODES=0?)")
        node = nodes[0].metadata.name
        build_image(cluster)
        Operator(cluster, "sources-operator.log").start()
        results: dict[str, Any] = {"rate": args.rate, "sources": {}}
        for source in SOURCES:
            ns = f"bench-{source}"
            cluster.make_namespace(ns)
            deploy(cluster, ns, node, source)
            log(f"{source}: {args.window:.0f} s of load at {args.rate:g} requests/s")
            with load(cluster, ns, args.rate, (50, 150)) as running:
                time.sleep(2)  # past the first requests' connection set-up
                before = pod_writes(cluster)
                time.sleep(args.window)
                writes = pod_writes(cluster) - before
                summary = running.stop()
            tasks = summary.ok  # the requests of the window, and the 2 s before it
            samples = []
            for i in range(args.samples):
                log(f"{source}: repair {i + 1} of {args.samples}")
                samples.append(repair_once(cluster, ns, node, args.rate))
            results["sources"][source] = {
                "tasks": tasks,
                "pod_writes": writes,
                "writes_per_task": writes / tasks if tasks else None,
                "load_clean": summary.clean,
                "last_task_to_eviction": report.series(
                    [s["latency_s"] for s in samples if s["latency_s"] is not None]
                ),
                "repairs_clean": all(s["clean"] for s in samples),
                "defects": [d for s in samples for d in s["defects"]],
            }
        results["poll_interval_s"] = POLL_INTERVAL
        results["machine"] = report.machine(load_start, cluster.server_version())
        results["source"] = report.source()
        results["date"] = report.today()
        results["wall_s"] = time.monotonic() - started
        return results


def render(r: dict[str, Any]) -> str:
    a, p = r["sources"]["annotation"], r["sources"]["prometheus"]
    goal = r["poll_interval_s"] * 1000 + 100
    lines = report.header("pitstop task sources on a real node", r)
    lines.append(f"  fixed rate {r['rate']:g} requests/s, the project's function, 2 instances")
    lines.append(f"  {'':34}{'annotation':>14}{'prometheus':>14}   target")
    lines.append(
        f"  {'pod writes per task':34}{a['writes_per_task']:>14.3f}{p['writes_per_task']:>14.3f}"
        f"   0 with prometheus: {report.verdict(p['writes_per_task'] == 0)}"
    )
    lines.append(
        f"  {'  (writes / tasks)':34}{a['pod_writes']:>7} / {a['tasks']:<5}{p['pod_writes']:>7} / {p['tasks']:<5}"
    )
    la, lp = a["last_task_to_eviction"], p["last_task_to_eviction"]

    def cell(s: dict[str, Any], key: str) -> str:
        return f"{s[key]:.0f} ms" if s.get("n") else "-"

    lines.append(
        f"  {'last task done -> first eviction p50':34}{cell(la, 'p50_ms'):>14}{cell(lp, 'p50_ms'):>14}"
    )
    lines.append(
        f"  {'                                 p99':34}{cell(la, 'p99_ms'):>14}{cell(lp, 'p99_ms'):>14}"
        f"   p99 <= {goal:.0f} ms with prometheus: "
        f"{report.verdict(bool(lp.get('n')) and lp['p99_ms'] <= goal)}"
    )
    lines.append(f"  {'repairs (samples each)':34}{la.get('n', 0):>14}{lp.get('n', 0):>14}")
    clean = all(s["repairs_clean"] and s["load_clean"] for s in (a, p))
    lines.append(f"  requests failed or cut in any run: {'none' if clean else 'SOME'}")
    for source, s in r["sources"].items():
        for d in s["defects"]:
            lines.append(f"    {source}: {d}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench sources", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rate", type=float, default=20.0, help="requests per second")
    p.add_argument("--window", type=float, default=15.0, help="seconds of load for the writes")
    p.add_argument("--samples", type=int, default=5, help="repairs per source")
    p.add_argument("--quick", action="store_true", help="2 repairs per source, a 8 s window")
    p.add_argument("--output", type=Path, default=RESULTS / "sources.json")
    return p


def quick(args: argparse.Namespace) -> None:
    args.samples, args.window = 2, 8.0


def main(argv: list[str] | None = None) -> int:
    return entry(parser(), quick, run, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
