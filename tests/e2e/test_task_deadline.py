"""Task deadlines from the runtime, on kwok nodes: pods whose environment declares how
long a task may run (an InstanceProfile's taskDeadline names the variable), a repair
with `drain.taskTimeoutSeconds: Auto` that waits exactly that (plus the margin) for a
busy instance and says so in its status, `pitstop plan` showing each instance's
deadline and what Auto makes of them, the fallback to the default when no instance
declares one, and the schema refusing any string but Auto. Nothing is polled: the
profiles use the annotation contract."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.e2e.helpers import cond, make_pool
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.repairs import Repairs
from tests.e2e.workloads import deployment, running_pods

pytestmark = pytest.mark.e2e

GROUP, VERSION = "pitstop.dev", "v1alpha1"
INFLIGHT = "pitstop.dev/inflight-tasks"
MARGIN = 10
"""pitstop.repair.flow.AUTO_MARGIN_SECONDS (a constant of the operator under test)."""


@pytest.fixture
def profile(cluster: Cluster) -> Iterator[Callable[[str, dict[str, Any] | None], str]]:
    """An InstanceProfile for the pods labelled fleet=<label>, deleted afterwards."""
    made: list[str] = []

    def create(label: str, task_deadline: dict[str, Any] | None) -> str:
        name = f"ip-{uuid.uuid4().hex[:8]}"
        spec: dict[str, Any] = {"podSelector": {"matchLabels": {"fleet": label}}, "kind": "async"}
        if task_deadline is not None:
            spec["taskDeadline"] = task_deadline
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InstanceProfile"}
        body |= {"metadata": {"name": name}, "spec": spec}
        cluster.custom.create_cluster_custom_object(GROUP, VERSION, "instanceprofiles", body)
        made.append(name)
        return name

    yield create
    for name in made:
        cluster.custom.delete_cluster_custom_object(GROUP, VERSION, "instanceprofiles", name)


def functions(
    cluster: Cluster, ns: str, p: Any, label: str, env: dict[str, str], count: int = 2
) -> list[str]:
    body = deployment("fn", count, p.selector, grace=1, labels={"fleet": label})
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": k, "value": v} for k, v in env.items()
    ]
    cluster.apps.create_namespaced_deployment(ns, body)
    return sorted(x.metadata.name for x in running_pods(cluster, ns, "fn", count))


def plan(cluster: Cluster, node: str) -> str:
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bin_dir / "pitstop"), "plan", node, "--kubeconfig", cluster.kubeconfig],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_auto_waits_the_deadline_the_runtime_declares(
    cluster: Cluster,
    namespace: str,
    pool: Any,
    repairs: Repairs,
    profile: Callable[[str, dict[str, Any] | None], str],
) -> None:
    label = uuid.uuid4().hex[:8]
    name = profile(label, {"env": [{"name": "exec_timeout"}, {"name": "write_timeout"}]})
    p = make_pool(cluster, pool)
    # of-watchdog's variables: the larger positive one is the deadline (a bare number
    # is seconds, as the watchdog reads it).
    pods = functions(cluster, namespace, p, label, {"exec_timeout": "5s", "write_timeout": "3"})
    busy = pods[0]
    cluster.core.patch_namespaced_pod(
        busy, namespace, {"metadata": {"annotations": {INFLIGHT: "1"}}}
    )

    wait_until(
        "the profile's status names its deadline",
        lambda: (
            cluster.custom.get_cluster_custom_object(GROUP, VERSION, "instanceprofiles", name)
            .get("status", {})
            .get("taskDeadline")
            == "env exec_timeout,write_timeout"
        ),
        timeout=30,
    )
    out = plan(cluster, p.names[0])
    for pod in pods:
        assert f"{namespace}/{pod}=5s (exec_timeout=5s of InstanceProfile {name})" in out, out
    assert f"with drain.taskTimeoutSeconds: Auto: {5 + MARGIN}s, the 5s task deadline" in out

    repair = repairs.create(p.names[0], drain={"taskTimeoutSeconds": "Auto"})
    waiting = repairs.wait_phase(repair, "WaitingForTasks", timeout=40)
    timeout = waiting["taskTimeout"]
    assert timeout["seconds"] == 5 + MARGIN and timeout["source"] == "Runtime", timeout
    assert timeout["runtimeSeconds"] == 5 and timeout["instance"] in {
        f"{namespace}/{x}" for x in pods
    }
    assert f"exec_timeout=5s of InstanceProfile {name}" in timeout["message"]
    entered = time.monotonic()
    # The busy instance never reports 0: the declared deadline ends the wait, long
    # before the default (1800 s) would.
    done = repairs.wait_phase(repair, "Repairing", timeout=5 + MARGIN + 40)
    waited = time.monotonic() - entered
    drained = cond(done, "TasksDrained")
    assert drained["reason"] == "TaskTimeout", drained
    assert waited >= MARGIN, f"the wait ended {waited:.1f}s after it was seen to start"
    assert done["taskTimeout"]["seconds"] == 5 + MARGIN  # kept once the pods are gone


def test_auto_without_a_declared_deadline_is_the_default_and_says_so(
    cluster: Cluster,
    namespace: str,
    pool: Any,
    repairs: Repairs,
    profile: Callable[[str, dict[str, Any] | None], str],
) -> None:
    label = uuid.uuid4().hex[:8]
    profile(label, None)  # describes the pods, declares no deadline
    p = make_pool(cluster, pool)
    functions(cluster, namespace, p, label, {"exec_timeout": "5s"}, count=1)

    out = plan(cluster, p.names[0])
    assert "task deadlines its instances declare" not in out, out
    assert (
        "with drain.taskTimeoutSeconds: Auto: 1800s, the default: no instance on the node"
        " declares a task deadline"
    ) in out, out

    repair = repairs.create(p.names[0], dryRun=True, drain={"taskTimeoutSeconds": "Auto"})
    status = wait_until(
        "the dry run's plan",
        lambda: (s := repairs.status(repair)).get("plan") and s,
        timeout=30,
    )
    assert status["taskTimeout"]["seconds"] == 1800, status
    assert status["taskTimeout"]["source"] == "Default"
    assert "no instance on the node declares a task deadline" in status["taskTimeout"]["message"]
    assert status["plan"]["autoTaskTimeout"]["source"] == "Default"
    assert not status["plan"].get("taskDeadlines")


@pytest.mark.parametrize("value", ["auto", "60", "Soon", 0])
def test_task_timeout_takes_seconds_or_auto_only(
    cluster: Cluster, repairs: Repairs, value: Any
) -> None:
    with pytest.raises(ApiException) as e:
        repairs.create("no-such-node", drain={"taskTimeoutSeconds": value})
    assert e.value.status == 422
    assert "taskTimeoutSeconds" in str(e.value.body), e.value.body
