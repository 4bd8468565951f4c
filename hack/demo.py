"""`make demo`: pitstop's main job, shown live on the local control plane.

A pool of fake nodes runs a FaaS-like workload: a sync function behind a Service
(with the pitstop.dev/serving readiness gate), fed by a request router, and an
async worker whose tasks a simulated runtime keeps in flight. One node develops a
fault; a NodeRepair with a Job repair takes it out gracefully, repairs it, verifies
it and returns it, while the display shows the phase, the instances left and the
tasks in flight. The summary proves the point: no request routed to a leaving
instance, no task interrupted, and the node receives pods again.

Run from the repository root (the Makefile does): it starts and removes its own
cluster, unless --keep is given."""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client, watch  # noqa: E402
from tests.e2e.faas import FaasRuntime  # noqa: E402
from tests.e2e.kube import Cluster, wait_until  # noqa: E402
from tests.e2e.operator import Operator  # noqa: E402
from tests.e2e.sa import operator_kubeconfig  # noqa: E402
from tests.e2e.workloads import deployment, ready_pods, running_pods, service  # noqa: E402

POOL = "faas-a"
NODES = [f"{POOL}-{i}" for i in range(4)]
FAULTY = NODES[1]
NS = "faas"
REPAIR = f"{FAULTY}-kernel-deadlock"
BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"


def say(text: str) -> None:
    print(f"{BOLD}==>{RESET} {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()
    if not sys.stdout.isatty():
        global BOLD, DIM, GREEN, RED, RESET
        BOLD = DIM = GREEN = RED = RESET = ""

    state = tempfile.mkdtemp(prefix="pitstop-demo-")
    env = {**os.environ, "PITSTOP_CLUSTER_DIR": state, "PITSTOP_NODES": "0"}
    started = time.monotonic()
    say("Starting the local control plane: etcd, apiserver, controller-manager, scheduler, kwok")
    subprocess.run([str(REPO / "hack/cluster.sh"), "up"], env=env, check=True)
    op: Operator | None = None
    runtime: FaasRuntime | None = None
    try:
        cluster = Cluster(f"{state}/admin.kubeconfig")
        cluster.kubectl("apply", "--server-side", "-k", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/noderepairs.pitstop.dev")

        say(f"A node pool '{POOL}' of {len(NODES)} fake nodes")
        for name in NODES:
            cluster.create_node(name, {"pool": POOL})
        for name in NODES:
            wait_until(f"{name} Ready", lambda n=name: cluster.node_ready(n), timeout=30)

        say("Starting pitstop with its own ServiceAccount (manifests/rbac)")
        sa = operator_kubeconfig(cluster.kubeconfig, f"{state}/sa.kubeconfig")
        op = Operator(sa, Path(state) / "operator.log")
        op.start()

        say(f"A FaaS workload in '{NS}': sync function 'hello' and async worker 'thumbnails'")
        cluster.core.create_namespace({"metadata": {"name": NS}})
        wait_until(
            "namespace ready", lambda: cluster.core.list_namespaced_service_account(NS).items
        )
        selector = {"pool": POOL}
        cluster.apps.create_namespaced_deployment(NS, deployment("hello", 8, selector, gated=True))
        service(cluster, NS, "hello")
        cluster.apps.create_namespaced_deployment(NS, deployment("thumbnails", 8, selector))
        ready_pods(cluster, NS, "hello", 8)
        running_pods(cluster, NS, "thumbnails", 8)
        runtime = FaasRuntime(cluster, NS, "hello", take_probability=0.35, task_seconds=(0.5, 2.5))
        runtime.start()
        time.sleep(2)
        show_node(cluster, FAULTY, "before the fault")

        say(f"Injecting a fault: {FAULTY} reports KernelDeadlock=True")
        cluster.core.patch_node(
            FAULTY, {"metadata": {"annotations": {"sim.pitstop.dev/fault": "KernelDeadlock"}}}
        )
        wait_until("fault visible", lambda: condition(cluster, FAULTY, "KernelDeadlock") == "True")

        say(f"Applying NodeRepair {REPAIR} (strategy Job) and following it live")
        agent = threading.Thread(target=repair_agent, args=(cluster,), daemon=True)
        agent.start()
        cluster.custom.create_cluster_custom_object(
            "pitstop.dev", "v1alpha1", "noderepairs", repair_body()
        )
        timeline = follow(cluster)
        judge = runtime.stop()
        runtime = None

        say(f"Allocation resumes: a new pod is scheduled onto {FAULTY}")
        canary = deployment("canary", 1, {"kubernetes.io/hostname": FAULTY})
        cluster.apps.create_namespaced_deployment(NS, canary)
        pod = running_pods(cluster, NS, "canary", 1, timeout=30)[0]
        print(f"    pod {pod.metadata.name} is {pod.status.phase} on {pod.spec.node_name}")

        summary(timeline, judge, time.monotonic() - started)
        # The judge of routing is the EndpointSlice history of each evicted sync pod
        # (one watch stream, so its order is exact); `dropped` compares two streams
        # and is only reported.
        ok = (
            timeline.get("Succeeded") is not None
            and not judge.interrupted
            and not judge.routed_when_evicted
        )
        return 0 if ok else 1
    finally:
        if runtime is not None:
            runtime.stop()
        if op is not None:
            op.stop()
        if args.keep:
            print(f"\ncluster kept: export KUBECONFIG={state}/admin.kubeconfig")
            print(f"operator log: {state}/operator.log")
        else:
            subprocess.run([str(REPO / "hack/cluster.sh"), "down"], env=env, check=False)


def repair_body() -> dict[str, Any]:
    return {
        "apiVersion": "pitstop.dev/v1alpha1",
        "kind": "NodeRepair",
        "metadata": {"name": REPAIR},
        "spec": {
            "nodeName": FAULTY,
            "reason": "KernelDeadlock",
            "drain": {"taskTimeoutSeconds": 120},
            "repair": {
                "strategy": "Job",
                "timeoutSeconds": 60,
                "job": {
                    "template": {
                        "spec": {
                            "template": {
                                "metadata": {"annotations": {"sim.pitstop.dev/run-duration": "2s"}},
                                "spec": {
                                    "nodeSelector": {"kubernetes.io/hostname": FAULTY},
                                    "containers": [
                                        {
                                            "name": "reboot",
                                            "image": "registry.example/node-reboot:1",
                                        }
                                    ],
                                },
                            }
                        }
                    }
                },
            },
            "verify": {
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "KernelDeadlock", "status": "False"},
                ],
                "stableSeconds": 5,
                "timeoutSeconds": 60,
            },
        },
    }


def repair_agent(cluster: Cluster) -> None:
    """Plays the repair Job's container (kwok runs no code): once the Job's pod runs
    on the node, the node's fault is cleared, as a reboot would."""
    core = client.CoreV1Api(cluster.api)
    for event in watch.Watch().stream(
        core.list_namespaced_pod, "pitstop-system", timeout_seconds=120
    ):
        pod = event["object"]
        if pod.status.phase == "Running" and (pod.metadata.labels or {}).get(
            "job-name", ""
        ).startswith("pitstop-"):
            cluster.core.patch_node(
                FAULTY, {"metadata": {"annotations": {"sim.pitstop.dev/fault": None}}}
            )
            return


def follow(cluster: Cluster) -> dict[str, float]:
    """Prints a line per change; returns when each phase was entered (seconds)."""
    custom = client.CustomObjectsApi(cluster.api)
    start = time.monotonic()
    timeline: dict[str, float] = {}
    shown = ""
    deadline = start + 150
    while time.monotonic() < deadline:
        status = (
            custom.get_cluster_custom_object("pitstop.dev", "v1alpha1", "noderepairs", REPAIR).get(
                "status"
            )
            or {}
        )
        phase = status.get("phase") or "Pending"
        timeline.setdefault(phase, time.monotonic() - start)
        counts = status.get("instances") or {}
        message = status.get("message") or ""
        line = (
            f"{phase:<16} instances left {counts.get('remaining', '-'):>3}   "
            f"tasks in flight {counts.get('inflightTasks', '-'):>3}   {DIM}{message}{RESET}"
        )
        if line != shown:
            shown = line
            print(f"    {datetime.now():%H:%M:%S.%f}"[:-3] + f"  {line}", flush=True)
        if phase in ("Succeeded", "Failed", "Aborted"):
            break
        time.sleep(0.1)
    return timeline


def summary(timeline: dict[str, float], judge: Any, total: float) -> None:
    print(f"\n{BOLD}Summary{RESET}")
    order = [
        "Pending",
        "Cordoning",
        "Deregistering",
        "WaitingForTasks",
        "Evicting",
        "Repairing",
        "Verifying",
        "Uncordoning",
        "Succeeded",
    ]
    seen = [p for p in order if p in timeline]
    for a, b in itertools.pairwise(seen):
        print(f"    {a:<16} {timeline[b] - timeline[a]:6.2f} s")
    end = timeline.get("Succeeded", timeline.get("Failed"))
    if end is not None:
        print(f"    {'total repair':<16} {end:6.2f} s")
    ok, bad = f"{GREEN}", f"{RED}"
    routed = len(judge.routed_when_evicted)
    print(f"    requests served by the function:                 {judge.served}")
    routed_color = ok if routed == 0 else bad
    print(f"    instances evicted while still routed:            {routed_color}{routed}{RESET}")
    print(
        f"    {DIM}requests the simulated router sent to a pod it already saw terminating"
        f" (watch lag between its two streams): {judge.dropped}{RESET}"
    )
    print(f"    tasks completed during the demo:                 {judge.tasks_done}")
    killed = len(judge.interrupted)
    killed_color = ok if not killed else bad
    print(f"    tasks interrupted:                               {killed_color}{killed}{RESET}")
    print(f"    demo wall time:                                  {total:.0f} s")


def condition(cluster: Cluster, node: str, type_: str) -> str | None:
    for c in cluster.core.read_node(node).status.conditions or []:
        if c.type == type_:
            return str(c.status)
    return None


def show_node(cluster: Cluster, node: str, when: str) -> None:
    pods = cluster.core.list_namespaced_pod(NS, field_selector=f"spec.nodeName={node}").items
    print(
        f"    {node} ({when}): {len(pods)} instances: "
        + ", ".join(sorted(p.metadata.name for p in pods))
    )


if __name__ == "__main__":
    sys.exit(main())
