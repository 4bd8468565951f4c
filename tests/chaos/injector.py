"""The chaos: at random moments, SIGKILL the operator, restart kube-apiserver, restart
etcd (hack/cluster.sh restart), one at a time, spread over a time window; and a
supervisor that restarts the operator whenever it is not running, as a kubelet would
(it also exits by itself when it cannot renew its Lease through an outage: fencing)."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.e2e.kube import REPO
from tests.e2e.operator import Operator

KILL, APISERVER, ETCD = "operator SIGKILL", "kube-apiserver restart", "etcd restart"
COMPONENT = {APISERVER: "kube-apiserver", ETCD: "etcd"}


@dataclass
class Supervisor:
    """Keeps the operator running: restarts it (after `delay`) whenever it has exited."""

    op: Operator
    delay: tuple[float, float] = (0.2, 1.5)
    rand: random.Random = field(default_factory=random.Random)
    exits: Counter[int] = field(default_factory=Counter)
    """Exit codes of the operator's own exits (not our SIGKILLs), e.g. fencing."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def kill(self) -> None:
        """SIGKILL, then a restart after a short random pause (a pod's restart)."""
        with self.lock:
            self.op.kill()
            self._stop.wait(self.rand.uniform(*self.delay))
            self.op.start(wait=False)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with self.lock:
                proc = self.op.proc
                if proc is not None and proc.poll() is not None:
                    self.exits[proc.returncode] += 1
                    self.op.start(wait=False)


@dataclass
class Injector:
    """Does `plan` (counts per kind) at random moments within `seconds`, sequentially."""

    supervisor: Supervisor
    state: str
    plan: dict[str, int]
    seconds: float
    rand: random.Random
    done: Counter[str] = field(default_factory=Counter)
    log: list[tuple[float, str, float]] = field(default_factory=list)
    """(seconds since start, what, how long it took)"""
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Injector:
        self._thread = threading.Thread(target=self._guarded, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=180)

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.finished.set()

    def _run(self) -> None:
        actions = [kind for kind, count in self.plan.items() for _ in range(count)]
        self.rand.shuffle(actions)
        start = time.monotonic()
        # Random moments, sorted: each action waits for its moment (or for the one
        # before it to end, a restart takes a while).
        moments = sorted(self.rand.uniform(2.0, self.seconds) for _ in actions)
        for at, kind in zip(moments, actions, strict=True):
            if self._stop.wait(max(0.0, start + at - time.monotonic())):
                return
            began = time.monotonic()
            if kind == KILL:
                self.supervisor.kill()
            else:
                restart(self.state, COMPONENT[kind])
            self.done[kind] += 1
            self.log.append((began - start, kind, time.monotonic() - began))


def restart(state: str, component: str) -> None:
    env = {**os.environ, "PITSTOP_CLUSTER_DIR": state}
    proc = subprocess.run(
        [str(REPO / "hack/cluster.sh"), "restart", component],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise AssertionError(f"restart {component} failed: {proc.stderr.strip()}")
