"""`make demo`: pitstop's main job, shown live on the local control plane.

A pool of fake nodes runs a FaaS-like workload: a sync function behind a Service
(with the pitstop.dev/serving readiness gate), fed by a request router, and an
async worker whose tasks a simulated runtime keeps in flight. One node develops a
fault; a NodeRepair with a Job repair takes it out gracefully, repairs it, verifies
it and returns it, while the display shows the phase, the instances left and the
tasks in flight. The summary proves the point: no request routed to a leaving
instance, no task interrupted, and the node receives pods again.

Then the same flow on real nodes (two kubelets with containerd on this machine,
PITSTOP_REAL_NODES=2): the project's function runtime (function/) serves real HTTP
requests from a load generator that routes by EndpointSlices, and the real node
holding most of its pods is repaired under that load. Its summary counts the
requests that failed, were cut mid-flight or were sent to a pod after it left the
ready endpoints: all three must be 0. Without real nodes (PITSTOP_REAL_NODES=0,
or not root) that part is skipped and said so.

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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client, watch  # noqa: E402
from tests.e2e import realfunction  # noqa: E402
from tests.e2e.faas import FaasRuntime  # noqa: E402
from tests.e2e.kube import Cluster, wait_until  # noqa: E402
from tests.e2e.loadgen import BackgroundLoad, LoadConfig  # noqa: E402
from tests.e2e.operator import Operator  # noqa: E402
from tests.e2e.sa import operator_kubeconfig  # noqa: E402
from tests.e2e.workloads import deployment, ready_pods, running_pods, service  # noqa: E402

POOL = "faas-a"
NODES = [f"{POOL}-{i}" for i in range(4)]
FAULTY = NODES[1]
NS = "faas"
REPAIR = f"{FAULTY}-kernel-deadlock"
REAL_NS = "faas-real"
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
    env = {
        **os.environ,
        "PITSTOP_CLUSTER_DIR": state,
        "PITSTOP_NODES": "0",
        "PITSTOP_REAL_NODES": os.environ.get("PITSTOP_REAL_NODES", "2"),
    }
    started = time.monotonic()
    say(
        "Starting the local control plane: etcd, apiserver, controller-manager, scheduler,"
        f" kwok, and {env['PITSTOP_REAL_NODES']} real node(s)"
    )
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
        timeline = follow(cluster, REPAIR)
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
        real_ok = real_node_act(cluster, Path(state))
        print(f"\n    demo wall time: {time.monotonic() - started:.0f} s")
        return 0 if ok and real_ok is not False else 1
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


def follow(
    cluster: Cluster,
    name: str,
    on_phase: Callable[[str], None] | None = None,
    timeout: float = 150,
    extra: Callable[[], str] | None = None,
) -> dict[str, float]:
    """Prints a line per change (with `extra()` appended); calls on_phase(phase)
    once per phase entered; returns when each phase was entered (seconds)."""
    custom = client.CustomObjectsApi(cluster.api)
    start = time.monotonic()
    timeline: dict[str, float] = {}
    shown = ""
    deadline = start + timeout
    while time.monotonic() < deadline:
        status = (
            custom.get_cluster_custom_object("pitstop.dev", "v1alpha1", "noderepairs", name).get(
                "status"
            )
            or {}
        )
        phase = status.get("phase") or "Pending"
        if phase not in timeline:
            timeline[phase] = time.monotonic() - start
            if on_phase is not None:
                on_phase(phase)
        counts = status.get("instances") or {}
        message = status.get("message") or ""
        line = (
            f"{phase:<16} instances left {counts.get('remaining', '-'):>3}   "
            f"tasks in flight {counts.get('inflightTasks', '-'):>3}   "
        )
        if line + message != shown:  # a line per change of the repair, not of `extra`
            shown = line + message
            more = f"{extra()}   " if extra is not None else ""
            print(
                f"    {datetime.now():%H:%M:%S.%f}"[:-3] + f"  {line}{more}{DIM}{message}{RESET}",
                flush=True,
            )
        if phase in ("Succeeded", "Failed", "Aborted"):
            break
        time.sleep(0.1)
    return timeline


PHASES = [
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


def phase_times(timeline: dict[str, float]) -> None:
    seen = [p for p in PHASES if p in timeline]
    for a, b in itertools.pairwise(seen):
        print(f"    {a:<16} {timeline[b] - timeline[a]:6.2f} s")
    end = timeline.get("Succeeded", timeline.get("Failed"))
    if end is not None:
        print(f"    {'total repair':<16} {end:6.2f} s")


def summary(timeline: dict[str, float], judge: Any, total: float) -> None:
    print(f"\n{BOLD}Summary{RESET}")
    phase_times(timeline)
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
    print(f"    first act's wall time:                           {total:.0f} s")


def real_node_act(cluster: Cluster, state: Path) -> bool | None:
    """The repair of a real node whose function pods serve real requests. None when
    the cluster has no two real nodes to move the function between."""
    nodes = realfunction.real_nodes(cluster)
    if len(nodes) < 2:
        say(
            f"Real nodes: {len(nodes)} (two are needed: PITSTOP_REAL_NODES=2, as root);"
            " the real-node part is skipped"
        )
        return None
    say(f"On real nodes {', '.join(nodes)} (kubelet + containerd): the function of function/")
    realfunction.build_image(state)
    cluster.core.create_namespace({"metadata": {"name": REAL_NS}})
    wait_until(
        "namespace ready", lambda: cluster.core.list_namespaced_service_account(REAL_NS).items
    )
    realfunction.deploy(cluster, REAL_NS, 4, state)
    for pod in realfunction.pods(cluster, REAL_NS):
        print(f"    {pod.metadata.name} on {pod.spec.node_name} at {pod.status.pod_ip}")
    node = realfunction.busiest_node(cluster, REAL_NS)
    name = f"{node}-disk-pressure"
    config = LoadConfig(
        rate=40,
        count=1_000_000,
        duration=300,
        ms=(50, 400),
        allowed_networks=(realfunction.POD_NETWORK,),
    )
    say("A load generator on this machine routes real requests by the EndpointSlices")
    load = BackgroundLoad(
        config, api=cluster.api, namespace=REAL_NS, service=realfunction.APP, port_name="http"
    )
    with load:
        time.sleep(3)

        def technician(phase: str) -> None:
            if phase == "Repairing":  # the node is empty: the hands-on work happens here
                print(f"    {DIM}(a technician repairs {node} and marks it repaired){RESET}")
                cluster.custom.patch_cluster_custom_object(
                    "pitstop.dev",
                    "v1alpha1",
                    "noderepairs",
                    name,
                    {"metadata": {"annotations": {"pitstop.dev/repaired": "true"}}},
                )

        def requests() -> str:
            g = load.generator
            return f"requests sent {g.sent if g is not None else 0:>5}"

        say(f"Applying NodeRepair {name} (strategy Manual) under load and following it live")
        cluster.custom.create_cluster_custom_object(
            "pitstop.dev",
            "v1alpha1",
            "noderepairs",
            {
                "apiVersion": "pitstop.dev/v1alpha1",
                "kind": "NodeRepair",
                "metadata": {"name": name},
                "spec": {
                    "nodeName": node,
                    "reason": "DiskPressure",
                    "drain": {"taskTimeoutSeconds": 120},
                    "repair": {"strategy": "Manual"},
                    "verify": {"stableSeconds": 2, "timeoutSeconds": 120},
                },
            },
        )
        timeline = follow(cluster, name, on_phase=technician, timeout=300, extra=requests)
        wait_until(
            "the function available again",
            lambda: realfunction.available(cluster, REAL_NS, 4),
            timeout=180,
        )
        time.sleep(3)  # requests to the replacements, too
    result = load.summary
    assert result is not None
    for pod in realfunction.pods(cluster, REAL_NS):
        print(f"    {pod.metadata.name} on {pod.spec.node_name} at {pod.status.pod_ip}")
    print(f"\n{BOLD}Summary on real nodes{RESET}")
    phase_times(timeline)
    good = GREEN if result.clean else RED
    print(f"    requests sent / answered ok:      {result.sent} / {result.ok}")
    for label, n in (
        ("requests failed", result.failed_total),
        ("requests cut mid-flight", result.cut),
        ("requests sent after leaving", result.sent_after_leaving),
    ):
        print(f"    {label + ':':<34}{GREEN if n == 0 else RED}{n}{RESET}")
    print(f"    pods that left the ready set:     {len(result.left)}")
    verdict = "; ".join(result.defects()) or "clean"
    print(f"    verdict:                          {good}{verdict}{RESET}")
    return timeline.get("Succeeded") is not None and result.clean and bool(result.left)


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
