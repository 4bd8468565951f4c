"""The operator under test: `pitstop run` as a separate process, with the
ServiceAccount's token (so the RBAC in manifests/ is what it runs with), which a
test can SIGKILL and restart (invariant 6)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path

from tests.e2e.kube import REPO, wait_until

PITSTOP = REPO / ".venv" / "bin" / "pitstop"
STOP_TIMEOUT = 30.0


def free_port(*taken: int) -> int:
    """A loopback port nothing listens on now, and none of `taken`."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


class Operator:
    """One `pitstop run` process on free loopback ports, its output in `log`. The one
    wrapper of the operator process for every e2e test (conftest's shared operator,
    the restarts of the crash tests, test_run's start and stop, the HA replicas).

    `args` are extra `pitstop run` arguments; `identity` names the replica in the
    Lease and is kept across restarts, as a Pod's name is, so a restarted operator
    takes its own Lease back at once instead of waiting for it to expire."""

    def __init__(
        self,
        kubeconfig: str,
        log: Path,
        *args: str,
        identity: str | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.kubeconfig = kubeconfig
        self.env = dict(env or {})
        """Added to the process's environment (e.g. POD_NAME, as the downward API)."""
        self.log = log
        self.args = args
        self.identity = identity or f"e2e-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0
        self.alerts_port = 0
        self.starts = 0

    def start(self, wait: bool = True) -> None:
        """Starts the process; with `wait`, returns once it leads (holds the Lease and
        runs its handlers: a standby answers /healthz too, with its role)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.health_port = free_port()
        self.metrics_port = free_port(self.health_port)
        self.alerts_port = free_port(self.health_port, self.metrics_port)
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start #{self.starts} =====\n".encode())
            self.proc = subprocess.Popen(
                [
                    str(PITSTOP),
                    "run",
                    "--kubeconfig",
                    self.kubeconfig,
                    "--bind",
                    "127.0.0.1",
                    "--health-port",
                    str(self.health_port),
                    "--metrics-port",
                    str(self.metrics_port),
                    "--alerts-port",
                    str(self.alerts_port),
                    "--identity",
                    self.identity,
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        if wait:
            wait_until("operator leading", self.healthy, timeout=60, interval=0.2)

    def alive(self) -> bool:
        """True while it runs; fails the test with its output once it has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"operator exited with {self.proc.returncode}; log: {self.log}\n{self.output}"
            )
        return True

    def healthy(self) -> bool:
        return self.role() == "leader"

    def role(self) -> str | None:
        """ "leader" or "standby" from /healthz; None while it does not answer."""
        self.alive()
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as r:
                role = json.loads(r.read()).get("role") if r.status == 200 else None
                return str(role) if role else None
        except OSError:
            return None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizer work, exactly like a crashed pod."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def output(self) -> str:
        """Everything the process wrote (stdout and stderr), so far."""
        return self.log_text() if self.log.exists() else ""
