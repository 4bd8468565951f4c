"""The project's function runtime (function/) as a local process, for tests that
need a real server: it binds loopback ports the OS picks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.loadgen import Endpoint

REPO = Path(__file__).resolve().parents[2]


def build_function(out: Path) -> Path:
    """go build the runtime into `out` (static, as `make function` does; go caches)."""
    subprocess.run(
        ["go", "build", "-trimpath", "-buildvcs=false", "-o", str(out), "."],
        cwd=REPO / "function",
        env={**os.environ, "CGO_ENABLED": "0"},
        check=True,
        timeout=300,
    )
    return out


class FunctionProcess:
    """One instance of the runtime, its log in `tmp`."""

    def __init__(self, binary: Path, tmp: Path, pod: str, *args: str, **env: str):
        self.pod = pod
        self.log = tmp / f"{pod}.log"
        addr_file = tmp / f"{pod}.addr.json"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    *(str(binary), "-bind", "127.0.0.1", "-port", "0", "-admin-port", "0"),
                    *("-annotations-file", "", "-pod-name", pod, "-addr-file", str(addr_file)),
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )
        deadline = time.monotonic() + 10
        while not addr_file.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"{pod} did not start: {self.log.read_text()}")
            time.sleep(0.01)
        addrs = json.loads(addr_file.read_text())
        host, _, port = addrs["serve"].rpartition(":")
        self.endpoint = Endpoint(pod, host, int(port))
        self.admin = f"http://{addrs['admin']}"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
