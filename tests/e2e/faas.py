"""A simulated FaaS runtime and router: the judge of invariants 1 and 2.

It plays what a FaaS platform does around pitstop, through the real API:
- every instance pod takes tasks over time and finishes them, keeping
  `pitstop.dev/inflight-tasks` current; a task is taken only with a conditional
  patch (resourceVersion), so a drain signal that lands first always wins;
- it stops taking tasks once the pod carries `pitstop.dev/draining`;
- a router sends "requests" only to ready endpoints of the Service, as seen in
  its EndpointSlices.

And it records what would hurt users:
- `interrupted`: a pod was evicted (deletionTimestamp appeared) while its own
  in-flight annotation was above 0 — a task killed (invariant 1);
- `routed_when_evicted`: a gated sync pod whose EndpointSlice entry went straight
  from ready to terminating, i.e. it was evicted while still routed (invariant 2);
- `dropped`: a request routed to a pod by an EndpointSlice state written after the
  pod had begun terminating (or was gone).

The router and the pod watch are two streams that arrive at their own pace, so
"after" is judged in the API's own order, by resourceVersion (etcd revisions, one
counter for every kind; opaque to clients, comparable in a test of one cluster),
never by which stream happened to be read first.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.e2e.kube import Cluster

DRAINING = "pitstop.dev/draining"
INFLIGHT = "pitstop.dev/inflight-tasks"


@dataclass
class PodView:
    name: str
    node: str | None
    rv: str
    annotations: dict[str, str]
    terminating: bool
    phase: str | None
    gated: bool
    left_rv: int | None = None
    """The resourceVersion at which the pod was first seen terminating."""


@dataclass
class Judge:
    interrupted: list[tuple[str, str]] = field(default_factory=list)
    """(pod, in-flight count at eviction)"""
    evicted: list[str] = field(default_factory=list)
    routed_when_evicted: list[str] = field(default_factory=list)
    dropped: int = 0
    dropped_to: list[str] = field(default_factory=list)
    """(pod) of each dropped request, for the failure message"""
    served: int = 0
    tasks_done: int = 0


class FaasRuntime:
    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        service: str | None = None,
        *,
        take_probability: float = 0.3,
        task_seconds: tuple[float, float] = (0.3, 1.5),
        requests_per_tick: int = 5,
        seed: int = 7,
        busy_forever: frozenset[str] = frozenset(),
        max_errors: int = 3,
    ):
        self.cluster = cluster
        self.ns = namespace
        self.service = service
        self.take_probability = take_probability
        self.task_seconds = task_seconds
        self.requests_per_tick = requests_per_tick
        self.rand = random.Random(seed)
        self.core = client.CoreV1Api(cluster.api)
        self.discovery = client.DiscoveryV1Api(cluster.api)
        self.pods: dict[str, PodView] = {}
        self.tasks: dict[str, list[float]] = defaultdict(list)
        self.slice_ready: dict[str, tuple[int, dict[str, bool]]] = {}
        """slice → (its resourceVersion, pod → routable)"""
        self.gone: dict[str, int] = {}  # pod → resourceVersion at which it left
        self.history: dict[str, list[str]] = defaultdict(list)  # pod → slice states
        self.gated: set[str] = set()
        self.judge = Judge()
        self.accepting = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy_forever = busy_forever
        self.errors: list[str] = []
        """... but a judge that keeps failing must not pass silently (see stop())."""
        self.max_errors = max_errors
        """More errors fail stop(); a chaos run, whose API server restarts, allows many."""

    # --- lifecycle ---

    def start(self) -> FaasRuntime:
        targets = [self._watch_pods, self._tick_loop]
        if self.service:
            targets.append(self._watch_slices)
        for target in targets:
            t = threading.Thread(target=self._guard(target), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> Judge:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._judge_routing()
        if len(self.errors) > self.max_errors:
            raise AssertionError(f"the simulated runtime kept failing: {self.errors[:5]}")
        return self.judge

    def __enter__(self) -> FaasRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pause_new_tasks(self) -> None:
        """The platform stops sending work (e.g. to let a drain finish in a test)."""
        self.accepting = False

    def inflight(self, pod: str) -> int:
        with self._lock:
            return len(self.tasks.get(pod, ()))

    def _guard(self, target: Any) -> Any:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    target()
                except Exception as e:  # a watch hiccup must not end the judge ...
                    self.errors.append(f"{target.__name__}: {type(e).__name__}: {e}")
                    time.sleep(0.1)

        return run

    # --- the pod watch: evictions are judged at the moment they appear ---

    def _watch_pods(self) -> None:
        w = watch.Watch()
        for event in w.stream(self.core.list_namespaced_pod, self.ns, timeout_seconds=2):
            if self._stop.is_set():
                w.stop()
                return
            pod = event["object"]
            name = pod.metadata.name
            view = PodView(
                name=name,
                node=pod.spec.node_name,
                rv=pod.metadata.resource_version,
                annotations=dict(pod.metadata.annotations or {}),
                terminating=pod.metadata.deletion_timestamp is not None,
                phase=pod.status.phase,
                gated=any(
                    g.condition_type == "pitstop.dev/serving"
                    for g in pod.spec.readiness_gates or []
                ),
            )
            with self._lock:
                before = self.pods.get(name)
                if view.terminating:
                    view.left_rv = before.left_rv if before and before.left_rv else int(view.rv)
                if event["type"] == "DELETED":
                    self.pods.pop(name, None)
                    self.tasks.pop(name, None)
                    self.gone[name] = view.left_rv or int(view.rv)
                else:
                    self.pods[name] = view
                    if view.gated:
                        self.gated.add(name)
                if view.terminating and (before is None or not before.terminating):
                    self.judge.evicted.append(name)
                    count = view.annotations.get(INFLIGHT, "0")
                    if count != "0" or self.tasks.get(name):
                        self.judge.interrupted.append((name, count))
                    self.tasks.pop(name, None)

    # --- the EndpointSlice watch: what the router sees ---

    def _watch_slices(self) -> None:
        w = watch.Watch()
        selector = f"kubernetes.io/service-name={self.service}"
        stream = w.stream(
            self.discovery.list_namespaced_endpoint_slice,
            self.ns,
            label_selector=selector,
            timeout_seconds=2,  # short: stop() waits for the stream to end
        )
        for event in stream:
            if self._stop.is_set():
                w.stop()
                return
            s = event["object"]
            routable: dict[str, bool] = {}
            for ep in s.endpoints or []:
                if not ep.target_ref:
                    continue
                pod = ep.target_ref.name
                ready = bool(ep.conditions and ep.conditions.ready)
                terminating = bool(ep.conditions and ep.conditions.terminating)
                routable[pod] = ready
                state = "ready" if ready else ("terminating" if terminating else "unready")
                with self._lock:
                    if not self.history[pod] or self.history[pod][-1] != state:
                        self.history[pod].append(state)
            with self._lock:
                if event["type"] == "DELETED":
                    self.slice_ready.pop(s.metadata.name, None)
                else:
                    self.slice_ready[s.metadata.name] = (int(s.metadata.resource_version), routable)

    def _judge_routing(self) -> None:
        """A gated sync pod must have left routing (ready → unready) before it was
        evicted (→ terminating); ready → terminating means it was evicted while routed."""
        for pod in self.judge.evicted:
            if pod not in self.gated:
                continue  # without the gate, eviction is what takes it out (NoServingGate)
            states = self.history.get(pod, [])
            if "ready" not in states:
                continue  # never routed (not behind the Service, or never Ready)
            last_ready = len(states) - 1 - states[::-1].index("ready")
            after = states[last_ready + 1 :]
            if after and after[0] == "terminating":
                self.judge.routed_when_evicted.append(pod)

    # --- the runtime and the router ---

    def _tick_loop(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            with self._lock:
                live = [p for p in self.pods.values() if p.phase == "Running" and not p.terminating]
            for pod in live:
                self._work(pod, now)
            self._route()

    def _work(self, pod: PodView, now: float) -> None:
        with self._lock:
            tasks = self.tasks[pod.name]
            if pod.name not in self._busy_forever:
                done = [t for t in tasks if t <= now]
                tasks[:] = [t for t in tasks if t > now]
                self.judge.tasks_done += len(done)
            else:
                done = []
            count = len(tasks)
        rv = pod.rv
        if done or pod.annotations.get(INFLIGHT) not in (None, str(count)):
            rv = self._write_count(pod, count, rv=None) or rv
        draining = DRAINING in pod.annotations
        if draining or not self.accepting or self.rand.random() > self.take_probability:
            return
        # Take a task only if nothing (e.g. the drain signal) changed the pod meanwhile.
        if self._write_count(pod, count + 1, rv=rv) is not None:
            with self._lock:
                if pod.name in self.pods:
                    self.tasks[pod.name].append(now + self.rand.uniform(*self.task_seconds))

    def _write_count(self, pod: PodView, count: int, rv: str | None) -> str | None:
        meta: dict[str, Any] = {"annotations": {INFLIGHT: str(count)}}
        if rv is not None:
            meta["resourceVersion"] = rv
        try:
            answer = self.core.patch_namespaced_pod(pod.name, self.ns, {"metadata": meta})
        except ApiException as e:
            if e.status in (404, 409):
                return None
            raise
        with self._lock:
            current = self.pods.get(pod.name)
            if current is not None:
                current.annotations[INFLIGHT] = str(count)
                current.rv = answer.metadata.resource_version
        return str(answer.metadata.resource_version)

    def _route(self) -> None:
        if not self.service:
            return
        with self._lock:
            routed_at: dict[str, int] = {}  # pod → newest slice rv that says it is ready
            for rv, routable in self.slice_ready.values():
                for pod, ok in routable.items():
                    if ok:
                        routed_at[pod] = max(rv, routed_at.get(pod, 0))
            ready = sorted(routed_at)
            for _ in range(self.requests_per_tick if ready else 0):
                target = self.rand.choice(ready)
                view = self.pods.get(target)
                left = view.left_rv if view is not None else self.gone.get(target)
                # A pod the pod watch has not caught up with (left is None) is judged
                # by the slice, as a router would.
                if left is not None and left < routed_at[target]:
                    self.judge.dropped += 1
                    self.judge.dropped_to.append(target)
                else:
                    self.judge.served += 1
