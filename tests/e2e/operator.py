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
from pathlib import Path

from tests.e2e.kube import REPO, wait_until

PITSTOP = REPO / ".venv" / "bin" / "pitstop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    def __init__(self, kubeconfig: str, log: Path, *args: str, identity: str | None = None):
        self.kubeconfig = kubeconfig
        self.log = log
        self.args = args
        """Extra `pitstop run` arguments."""
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0
        self.alerts_port = 0
        self.starts = 0
        # Stable across restarts, as a Pod's name is: a restarted operator takes its
        # own Lease back at once instead of waiting for it to expire.
        self.identity = identity or f"e2e-{uuid.uuid4().hex[:8]}"

    def start(self, wait: bool = True) -> None:
        """Starts `pitstop run`; with `wait`, until it holds the Lease (a standby
        answers /healthz too, with its role)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.health_port, self.metrics_port = free_port(), free_port()
        self.alerts_port = free_port()
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
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if wait:
            wait_until("operator leading", self.healthy, timeout=60, interval=0.2)

    def healthy(self) -> bool:
        return self.role() == "leader"

    def role(self) -> str | None:
        """ "leader" or "standby" from /healthz; None while it does not answer."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}; log: {self.log}")
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
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")
