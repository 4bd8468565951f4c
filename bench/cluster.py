"""The environment of a benchmark run: a private local control plane and the
operator, both started as processes and stopped on the way out.

The operator is only ever run through its public entry point (`pitstop run`);
nothing here imports pitstop.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


class BenchError(Exception):
    pass


def now() -> float:
    return time.perf_counter()


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def poll(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """For set-up only (nothing is timed here): probe every `interval` seconds."""
    deadline = now() + timeout
    while True:
        result = probe()
        if result:
            return result
        if now() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def run_command(
    args: list[str],
    what: str,
    timeout: float,
    *,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs a command with its output captured; a failure is a BenchError saying
    `what` failed, with the end of its stderr."""
    proc = subprocess.run(
        args, input=input, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise BenchError(f"{what} failed: {proc.stderr.strip()[-2000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def versions() -> dict[str, str]:
    """hack/versions.env as a dict."""
    return dict(
        line.split("=", 1)
        for line in (REPO / "hack/versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def cache_dir() -> Path:
    """Where hack/build-control-plane.sh keeps its builds and binaries."""
    return Path(os.environ.get("PITSTOP_CACHE", Path.home() / ".cache/pitstop"))


def kubectl_binary() -> str:
    """The kubectl built with the control plane (same release), else the one on PATH."""
    pinned = cache_dir() / "bin" / f"kube-{versions()['KUBE_VERSION']}" / "kubectl"
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


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MB, CPU seconds used so far) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_mb(pid: int) -> float:
    """The process's highest RSS so far (VmHWM), in MB: what a memory limit must hold."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


class Cluster:
    """A private control plane (`hack/cluster.sh up` in a temporary
    PITSTOP_CLUSTER_DIR, no initial nodes) with pitstop's CRDs applied. Everything
    it starts is stopped by `stack`, also after a failure or Ctrl-C."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        prefix: str = "pitstop-bench-",
        real_nodes: int | None = None,
        env: dict[str, str] | None = None,
        reuse: Path | None = None,
    ) -> None:
        self.stack = stack
        self.reused = reuse is not None
        """A running cluster of an earlier run (its state directory): kept at the end."""
        self.real_nodes = real_nodes
        """PITSTOP_REAL_NODES for hack/cluster.sh; None: its default (or the caller's)."""
        self.env = env or {}
        """More of hack/cluster.sh's PITSTOP_* settings."""
        self.kubectl = kubectl_binary()
        self.state = reuse or Path(tempfile.mkdtemp(prefix=prefix))
        self.kubeconfig = str(self.state / "admin.kubeconfig")

    def start(self) -> None:
        env = {**os.environ, "PITSTOP_CLUSTER_DIR": str(self.state), "PITSTOP_NODES": "0"}
        if self.real_nodes is not None:
            env["PITSTOP_REAL_NODES"] = str(self.real_nodes)
        env.update(self.env)
        if not self.reused:
            self.stack.callback(self._down, env)
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
        self.api = self.new_api()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.policy = client.PolicyV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.run_kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "crds"))
        self.run_kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        self.run_kubectl("api-resources")  # warms kubectl's discovery cache for the drains

    def new_api(self) -> client.ApiClient:
        """A client of its own (one per watch stream: a watch holds its connection)."""
        return config.new_client_from_config(config_file=self.kubeconfig)

    def _down(self, env: dict[str, str]) -> None:
        log("stopping the control plane")
        subprocess.run(
            [str(REPO / "hack/cluster.sh"), "down"],
            env=env,
            capture_output=True,
            timeout=120,
            start_new_session=True,
        )
        shutil.rmtree(self.state, ignore_errors=True)

    def make_namespace(self, name: str) -> None:
        """Creates the namespace; returns once its default ServiceAccount exists."""
        self.core.create_namespace({"metadata": {"name": name}})
        poll(
            f"the default ServiceAccount of {name}",
            lambda: self.core.list_namespaced_service_account(name).items,
            60,
        )

    def kubectl_command(
        self, *args: str, binary: str | None = None, kubeconfig: str | None = None
    ) -> list[str]:
        """kubectl (or a build of it) with the admin kubeconfig (or another) and a warm
        discovery cache."""
        cache = str(self.state / "kubectl-cache")
        kubectl, config = binary or self.kubectl, kubeconfig or self.kubeconfig
        return [kubectl, "--kubeconfig", config, "--cache-dir", cache, *args]

    def run_kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_command(
            self.kubectl_command(*args), f"kubectl {' '.join(args[:4])}", 600, input=input
        )

    def get_raw(self, path: str) -> str:
        """GET a non-resource path (e.g. /metrics) with the admin's credentials."""
        return self.run_kubectl("get", "--raw", path).stdout

    def server_version(self) -> str:
        return str(client.VersionApi(self.api).get_code().git_version)

    def kubeconfig_for(self, token: str, path: Path) -> str:
        """A kubeconfig with the admin's server and CA and the given bearer token."""
        view = json.loads(
            self.run_kubectl(
                "config", "view", "--raw", "--minify", "--flatten", "-o", "json"
            ).stdout
        )
        for user in view["users"]:
            user["user"] = {"token": token}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds a token
        with os.fdopen(fd, "w") as f:
            json.dump(view, f)
        return str(path)


CGROUP_ROOT = Path("/sys/fs/cgroup")
DEPLOYMENT_LIMITS = (1.0, 1 << 30)
"""The Deployment's resources.limits (manifests/operator/deployment.yaml): 1 CPU, 1 GiB."""


def confine(pid: int, name: str, cpus: float, memory_bytes: int) -> tuple[str, list[Path]]:
    """Puts the process in a cgroup of its own with a CPU quota and a memory limit, as
    a container's `resources.limits` do (cgroup v2, else v1's cpu and memory
    controllers). Returns what was applied, or why nothing was (the bench goes on
    without limits rather than fail on a machine that does not allow them), and the
    groups made, to remove once the process is gone."""
    period = 100_000
    quota = int(cpus * period)
    made: list[Path] = []
    try:
        unified = CGROUP_ROOT / "cgroup.controllers"
        if unified.exists():
            group = CGROUP_ROOT / name
            group.mkdir(exist_ok=True)
            made.append(group)
            (group / "cpu.max").write_text(f"{quota} {period}")
            (group / "memory.max").write_text(str(memory_bytes))
            (group / "cgroup.procs").write_text(str(pid))
        else:
            for controller, settings in (
                ("cpu", {"cpu.cfs_period_us": period, "cpu.cfs_quota_us": quota}),
                ("memory", {"memory.limit_in_bytes": memory_bytes}),
            ):
                group = CGROUP_ROOT / controller / name
                group.mkdir(exist_ok=True)
                made.append(group)
                for key, value in settings.items():
                    (group / key).write_text(str(value))
                (group / "cgroup.procs").write_text(str(pid))
    except OSError as e:
        return f"no limits ({type(e).__name__}: {e})", made
    return f"cpu {cpus:g}, memory {memory_bytes // 2**20} MiB (cgroup {name})", made


def remove_groups(groups: list[Path]) -> None:
    for group in groups:
        with contextlib.suppress(OSError):
            group.rmdir()


class Operator:
    """`pitstop run` as a subprocess with the given kubeconfig, its output in
    bench/results/<log_name>, stopped by the cluster's stack. With `identity`, a
    replica in leader election on the Lease `pitstop` of `lease_namespace` (the
    Deployment's default timings); without, one replica acting alone."""

    def __init__(
        self,
        cluster: Cluster,
        log_name: str,
        kubeconfig: str | None = None,
        identity: str | None = None,
        lease_namespace: str = "default",
    ) -> None:
        self.cluster = cluster
        self.log_path = RESULTS / log_name
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.identity = identity
        self.lease_namespace = lease_namespace
        self.proc: subprocess.Popen[Any] | None = None
        self.metrics_url = ""
        self.limits: tuple[float, int] | None = None
        """(CPUs, memory bytes) to confine each start to, as the Deployment's limits."""
        self.confined = ""
        self.starts = 0

    def start(self, *extra: str) -> None:
        health, metrics = free_port(), free_port()
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        out = self.log_path.open("w" if self.starts == 1 else "a")
        self.cluster.stack.callback(out.close)
        pitstop = Path(sys.executable).parent / "pitstop"
        election = (
            [
                "--leader-elect",
                "--identity",
                self.identity,
                "--lease-namespace",
                self.lease_namespace,
            ]
            if self.identity
            # one replica, measured alone: no Lease (whose namespace a bench
            # cluster may not have) and no stand-by start-up in the figures
            else ["--no-leader-elect"]
        )
        self.proc = subprocess.Popen(
            [
                *(str(pitstop), "run", "--kubeconfig", self.kubeconfig, "--bind", "127.0.0.1"),
                *("--health-port", str(health), "--metrics-port", str(metrics)),
                *election,
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.limits is not None:
            cpus, memory = self.limits
            name = f"pitstop-bench-{self.proc.pid}"
            self.confined, groups = confine(self.proc.pid, name, cpus, memory)
            self.cluster.stack.callback(remove_groups, groups)  # once stopped, just below
        self.cluster.stack.callback(stop_process, self.proc)
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        poll("the operator's /healthz", lambda: self._healthy(health), 60)
        log(f"operator running (pid {self.proc.pid}, log {self.log_path})")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        """Sends `signum` (SIGTERM: a clean stop; SIGKILL: a crash) and waits for the exit."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)
        self.proc.wait(timeout=60)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"the operator exited ({self.proc.returncode}); see {self.log_path}")

    def _healthy(self, port: int) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @contextlib.contextmanager
    def profiled(self, name: str) -> Iterator[None]:
        """Samples the operator with py-spy for the duration of the block, into
        bench/results/<name>.speedscope.json (open it in speedscope). py-spy attaches
        to the running process; it is stopped with SIGINT, on which it writes."""
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if py_spy is None:
            raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
        out = RESULTS / f"{name}.speedscope.json"
        spy = subprocess.Popen(
            [
                *(py_spy, "record", "--pid", str(self.pid), "--format", "speedscope"),
                *("--rate", "50", "--nonblocking", "--output", str(out)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(spy.pid, signal.SIGINT)
            try:
                _, err = spy.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                stop_process(spy, 1)
                err = b""
            if out.exists():
                log(f"operator profile written to {out}")
            else:
                log(f"py-spy wrote no profile: {err.decode(errors='replace').strip()[-300:]}")

    def metric(self, name: str, label: str) -> dict[str, float]:
        """One counter of the operator's /metrics, by the value of one label."""
        counts: dict[str, float] = {}
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + "{"):
                    labels, value = line.rsplit(" ", 1)
                    key = labels.split(f'{label}="', 1)[1].split('"', 1)[0]
                    counts[key] = float(value)
        return counts
