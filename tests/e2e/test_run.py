"""`pitstop run` as a real process, with the ServiceAccount's kubeconfig: it logs in,
serves /healthz and /metrics, hits no permission error, and stops on SIGTERM."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pitstop import __version__
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.operator import PITSTOP, STOP_TIMEOUT, Operator, free_port
from tests.e2e.sa import operator_kubeconfig

pytestmark = pytest.mark.e2e

STARTUP_TIMEOUT = 60.0


def http_get(url: str) -> tuple[int, str] | None:
    """(status, body), or None while nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.fixture(scope="module")
def sa_kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("sa") / "pitstop.kubeconfig"
    return operator_kubeconfig(cluster.kubeconfig, str(out))


@pytest.fixture
def operator(sa_kubeconfig: str, tmp_path: Path) -> Iterator[tuple[Operator, int, int]]:
    """A fresh operator of its own (not the session's), started without waiting:
    the test watches it come up. A Lease of its own: the session's operator may
    hold the shared one."""
    lease = f"e2e-run-{uuid.uuid4().hex[:8]}"
    op = Operator(sa_kubeconfig, tmp_path / "operator.log", "--lease-name", lease)
    op.start(wait=False)
    try:
        yield op, op.health_port, op.metrics_port
    finally:
        op.kill()


def test_run_serves_health_and_metrics_and_stops_on_sigterm(
    operator: tuple[Operator, int, int],
) -> None:
    op, health, metrics = operator

    def healthy() -> str | None:
        op.alive()
        got = http_get(f"http://127.0.0.1:{health}/healthz")
        return got[1] if got and got[0] == 200 else None

    body = wait_until("/healthz answers 200", healthy, timeout=STARTUP_TIMEOUT, interval=0.5)
    assert '"version"' in body  # pitstop's probe, run by kopf's liveness endpoint

    def metrics_up() -> str | None:
        op.alive()
        got = http_get(f"http://127.0.0.1:{metrics}/metrics")
        return got[1] if got and got[0] == 200 and "pitstop_up 1.0" in got[1] else None

    text = wait_until("/metrics with pitstop_up 1", metrics_up, timeout=STARTUP_TIMEOUT)
    assert "pitstop_build_info{" in text

    # kopf logged in with the ServiceAccount token and started watching the CRDs.
    wait_until(
        "kopf's initial authentication",
        lambda: op.alive() and "Initial authentication has finished" in op.output,
        timeout=STARTUP_TIMEOUT,
    )
    time.sleep(2)  # let the first list/watch requests answer, to catch 403s below

    started = time.monotonic()
    code = op.stop()
    assert time.monotonic() - started < STOP_TIMEOUT
    assert code == 0, op.output

    output = op.output
    for sign in ("Not enough permissions", "Forbidden", "403", "Traceback"):
        assert sign not in output, f"{sign!r} in the operator's output:\n{output}"
    assert f"pitstop {__version__} started" in output  # the startup handler ran


def test_run_with_missing_kubeconfig_fails_in_one_line() -> None:
    proc = subprocess.run(
        [str(PITSTOP), "run", "--kubeconfig", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines == ["pitstop: error: kubeconfig /nonexistent: no such file"], proc.stderr


def test_run_with_a_busy_port_fails_in_one_line(sa_kubeconfig: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [
                str(PITSTOP),
                "run",
                "--kubeconfig",
                sa_kubeconfig,
                "--bind",
                "127.0.0.1",
                "--health-port",
                str(free_port()),
                "--metrics-port",
                str(port),
                "--alerts-port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pitstop: error: ")
