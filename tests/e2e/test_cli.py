"""The `pitstop` command (and its kubectl plugin name) as a user runs it: the real
console script in a subprocess, with the admin kubeconfig, against the operator
under test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e import sa
from tests.e2e.kube import REPO, Cluster, wait_until
from tests.e2e.repairs import GROUP, PLURAL, VERSION, Repairs, node_markers
from tests.e2e.test_repair import RELEASED, REPAIRED, batch, make_pool
from tests.e2e.workloads import deployment, ready_endpoints, ready_pods, running_pods, service

pytestmark = pytest.mark.e2e

BIN = REPO / ".venv" / "bin"
FAST_VERIFY = {"verify": {"stableSeconds": 1, "timeoutSeconds": 10}}


def pitstop(
    cluster: Cluster, *args: str, prog: str = "pitstop", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / prog), *args, "--kubeconfig", cluster.kubeconfig],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess[str], prog: str = "pitstop") -> str:
    """A failed command: exit 1, nothing on stdout, one line on stderr; returns it."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "", proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0].removeprefix(f"{prog}: error: ")


def speed_up(cluster: Cluster, name: str) -> None:
    """The CLI creates repairs with the default verify.stableSeconds (30 s): shorten
    it once the repair exists (before it can reach Verifying)."""
    wait_until(
        f"{name} created",
        lambda: cluster.custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, field_selector=f"metadata.name={name}"
        )["items"],
        timeout=20,
    )
    cluster.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": FAST_VERIFY})


def test_plan_names_the_instances_and_a_blocking_pdb(
    cluster: Cluster, namespace: str, pool: Any, running_operator: Any
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("fn", 2, p.selector, gated=True)
    )
    service(cluster, namespace, "fn")
    cluster.apps.create_namespaced_deployment(namespace, deployment("worker", 2, p.selector))
    fn = {f"{namespace}/{x.metadata.name}" for x in ready_pods(cluster, namespace, "fn", 2)}
    workers = {
        f"{namespace}/{x.metadata.name}" for x in running_pods(cluster, namespace, "worker", 2)
    }
    wait_until("fn routed", lambda: len(ready_endpoints(cluster, namespace, "fn")) == 2)
    policy = client.PolicyV1Api(cluster.api)
    policy.create_namespaced_pod_disruption_budget(
        namespace,
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "worker-pdb"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "worker"}}},
        },
    )
    wait_until(
        "PDB computed",
        lambda: (
            (s := policy.read_namespaced_pod_disruption_budget("worker-pdb", namespace).status)
            and s.current_healthy == 2
            and s.disruptions_allowed == 0
        ),
        timeout=30,
    )

    proc = pitstop(cluster, "plan", node)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0] == f"A repair of {node} would now:"
    text = proc.stdout
    sync_line = next(x for x in lines if "sync instances" in x)
    assert "deregister 2 sync instances: " in sync_line
    assert all(k in sync_line for k in fn), (sync_line, fn)
    evict_line = next(x for x in lines if x.strip().startswith("evict "))
    assert "evict 4 instances (2 async: " in evict_line
    assert all(k in evict_line for k in workers), (evict_line, workers)
    assert f"blocked now by PodDisruptionBudgets: {namespace}/worker-pdb" in text
    assert "wait for 0 tasks in flight" in text
    assert node_markers(cluster, node) == RELEASED, "plan changes nothing"


def test_plan_of_a_missing_node(cluster: Cluster) -> None:
    node = f"missing-{uuid.uuid4().hex[:6]}"
    assert one_error_line(pitstop(cluster, "plan", node)) == f"node {node} does not exist"


def test_repair_wait_done_and_status(cluster: Cluster, pool: Any, repairs: Repairs) -> None:
    node = make_pool(cluster, pool).names[0]
    name = f"cli-{uuid.uuid4().hex[:8]}"
    repairs.made.append(name)  # deleted after the test
    follow = subprocess.Popen(
        [
            str(BIN / "pitstop"),
            "repair",
            node,
            "--name",
            name,
            "--reason",
            "Disk errors",
            "--wait",
            "--timeout",
            "60",
            "--kubeconfig",
            cluster.kubeconfig,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        speed_up(cluster, name)
        repairs.wait_phase(name, "Repairing", timeout=30)
        assert follow.poll() is None, "--wait follows the repair while it runs"
        done = pitstop(cluster, "done", name)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"NodeRepair {name} marked repaired"
        out, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert follow.returncode == 0, (out, err)
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"noderepair/{name} created"
    phases = [x.split()[1] for x in lines[1:]]
    assert "Repairing" in phases and phases[-1] == "Succeeded", out
    assert phases.index("Repairing") < phases.index("Verifying") < len(phases) - 1, out

    body = repairs.get(name)
    assert body["spec"]["nodeName"] == node and body["spec"]["reason"] == "Disk errors"
    assert body["spec"]["repair"]["strategy"] == "Manual"
    assert body["metadata"]["annotations"][REPAIRED] == "true"
    assert node_markers(cluster, node) == RELEASED

    status = pitstop(cluster, "status")
    assert status.returncode == 0, status.stderr
    table = status.stdout.splitlines()
    assert table[0].split() == ["NAME", "NODE", "PHASE", "INSTANCES", "TASKS", "AGE", "MESSAGE"]
    row = next(x for x in table if x.startswith(f"{name} "))
    assert row.split()[:5] == [name, node, "Succeeded", "0", "0"], row

    again = one_error_line(pitstop(cluster, "done", name))
    assert again == f"NodeRepair {name} is already Succeeded"


def test_repair_with_a_job_file(
    cluster: Cluster, pool: Any, repairs: Repairs, tmp_path: Path
) -> None:
    """--job-file takes a whole Job manifest; its name and namespace are pitstop's."""
    node = make_pool(cluster, pool).names[0]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "reimage", "namespace": "default", "labels": {"tool": "reimage"}},
        "spec": {
            "template": {
                "metadata": {"annotations": {"sim.pitstop.dev/run-duration": "500ms"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{"name": "reimage", "image": "fake"}],
                },
            }
        },
    }
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    name = f"cli-{uuid.uuid4().hex[:8]}"
    repairs.made.append(name)
    follow = subprocess.Popen(
        [
            str(BIN / "kubectl-pitstop"),
            "repair",
            node,
            "--name",
            name,
            "--strategy",
            "Job",
            "--job-file",
            str(job_file),
            "--wait",
            "--timeout",
            "60",
            "--kubeconfig",
            cluster.kubeconfig,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        speed_up(cluster, name)
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert follow.returncode == 0, (out, err)
    assert out.splitlines()[-1].split()[1] == "Succeeded", out
    made = batch(cluster).read_namespaced_job(f"pitstop-{name}-1", "pitstop-system")
    assert made.metadata.labels["tool"] == "reimage"


def test_done_refuses_what_it_cannot_do(cluster: Cluster, pool: Any, repairs: Repairs) -> None:
    node = make_pool(cluster, pool).names[0]
    missing = f"nope-{uuid.uuid4().hex[:6]}"
    assert one_error_line(pitstop(cluster, "done", missing)) == (
        f"NodeRepair {missing} does not exist"
    )
    assert one_error_line(
        pitstop(cluster, "done", missing, "--failed", prog="kubectl-pitstop"),
        prog="kubectl pitstop",
    ) == (f"NodeRepair {missing} does not exist")

    # A dry run of a Job repair: it changes nothing, but it is not Manual.
    job = {"template": {"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}}
    name = repairs.create(node, dryRun=True, repair={"strategy": "Job", "job": job})
    line = one_error_line(pitstop(cluster, "done", name))
    assert line == f"NodeRepair {name} uses strategy Job; only Manual repairs wait for done"
    assert REPAIRED not in (repairs.get(name)["metadata"].get("annotations") or {})


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--strategy", "Job"], "--strategy Job needs --job-file"),
        (["--strategy", "Webhook"], "--strategy Webhook needs --webhook-url"),
        (
            ["--strategy", "Webhook", "--webhook-url", "http://x", "--webhook-secret", "s"],
            "--webhook-secret must be NAME/KEY",
        ),
        (["--strategy", "Job", "--job-file", "/nonexistent/job.yaml"], "/nonexistent/job.yaml: "),
    ],
    ids=["job-without-file", "webhook-without-url", "bad-secret", "missing-job-file"],
)
def test_repair_refuses_incomplete_options(
    cluster: Cluster, pool: Any, repairs: Repairs, args: list[str], error: str
) -> None:
    node = make_pool(cluster, pool).names[0]
    name = f"cli-{uuid.uuid4().hex[:8]}"
    line = one_error_line(pitstop(cluster, "repair", node, "--name", name, *args))
    assert line.startswith(error), line
    assert not repairs.exists(name), "nothing was created"
    assert node_markers(cluster, node) == RELEASED


def test_dry_run_shows_the_plan(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    p = make_pool(cluster, pool)
    node = p.names[0]
    cluster.apps.create_namespaced_deployment(namespace, deployment("worker", 2, p.selector))
    running_pods(cluster, namespace, "worker", 2)
    name = f"cli-{uuid.uuid4().hex[:8]}"
    repairs.made.append(name)
    proc = pitstop(
        cluster, "repair", node, "--name", name, "--dry-run", "--wait", "--timeout", "30"
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stdout.splitlines()[0] == f"noderepair/{name} created"
    assert f"Dry run: would cordon {node}" in proc.stdout
    assert "evict 2 instances" in proc.stdout
    status = repairs.status(name)
    assert sorted(status["plan"]["async"]) == sorted(
        f"{namespace}/{x.metadata.name}" for x in running_pods(cluster, namespace, "worker", 2)
    )
    assert node_markers(cluster, node) == RELEASED, "a dry run changes nothing"


def kubeconfig_of(cluster: Cluster, namespace: str, account: str, path: Path) -> str:
    """A kubeconfig for a fresh ServiceAccount with no rights at all."""
    cluster.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account))
    )
    token = sa._kubectl(cluster.kubeconfig, "create", "token", account, "-n", namespace).strip()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "nobody",
                "clusters": [{"name": "c", "cluster": sa._current_cluster(cluster.kubeconfig)}],
                "users": [{"name": "nobody", "user": {"token": token}}],
                "contexts": [{"name": "nobody", "context": {"cluster": "c", "user": "nobody"}}],
            }
        )
    )
    return str(path)


def test_forbidden_and_not_found_are_one_line(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    nobody = kubeconfig_of(cluster, namespace, "nobody", tmp_path / "nobody")
    for argv in (("status",), ("abort", "x"), ("done", "x")):
        proc = subprocess.run(
            [str(BIN / "pitstop"), "--kubeconfig", nobody, *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        line = one_error_line(proc)
        assert "forbidden" in line, line
    missing = f"missing-{uuid.uuid4().hex[:6]}"
    assert one_error_line(pitstop(cluster, "abort", missing)) == (
        f"NodeRepair {missing} does not exist"
    )
    assert one_error_line(pitstop(cluster, "status", missing)) == (
        f"NodeRepair {missing} not found"
    )


def test_abort_gives_the_node_back_and_status_watch_follows(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Any, tmp_path: Path
) -> None:
    node = make_pool(cluster, pool).names[0]
    name = f"cli-{uuid.uuid4().hex[:8]}"
    repairs.made.append(name)
    made = pitstop(cluster, "repair", node, "--name", name, "--reason", "abort me")
    assert made.returncode == 0, made.stderr
    # Options before the subcommand, as kubectl takes them; the watch runs until killed.
    seen, errors = tmp_path / "watch.out", tmp_path / "watch.err"
    with seen.open("w") as to_out, errors.open("w") as to_err:
        watcher = subprocess.Popen(
            [str(BIN / "pitstop"), "--kubeconfig", cluster.kubeconfig, "status", "-w", name],
            stdout=to_out,
            stderr=to_err,
        )
    try:
        repairs.wait_phase(name, "Repairing", timeout=30)
        assert node_markers(cluster, node) != RELEASED
        as_json = pitstop(cluster, "status", name, "-o", "json")
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout)["status"]["phase"] == "Repairing"

        aborted = pitstop(cluster, "abort", name, "--wait", "--timeout", "60")
        assert aborted.returncode == 0, aborted.stderr
        first, gone = aborted.stdout.splitlines()
        assert first == f"noderepair/{name} deleted while Repairing: the operator gives {node} back"
        assert gone == f"noderepair/{name} gone: its node is given back"
        assert node_markers(cluster, node) == RELEASED
        # The watch runs until it is stopped: its DELETED event is the last we wait for.
        wait_until(
            "the watch printed the deletion",
            lambda: any(line.split()[2:3] == ["Deleted"] for line in seen.read_text().splitlines()),
            timeout=30,
        )
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)
    out, err = seen.read_text(), errors.read_text()
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["NAME", "NODE", "PHASE", "INSTANCES", "TASKS", "AGE"]
    phases = [x.split()[2] for x in lines[1:]]
    assert phases[-1] == "Deleted", out
    assert "Repairing" in phases, out
    assert err == "", err


def test_the_kubectl_plugin_takes_the_same_options(cluster: Cluster) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl on PATH"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [kubectl, "pitstop", "--kubeconfig", cluster.kubeconfig, "status", "-o", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["kind"] == "List"
