"""Prometheus metrics of the operator, served at `/metrics` on the metrics port.

pitstop keeps its own registry (not prometheus_client's global one), so what is
exported is exactly what is defined here plus the process/platform/GC collectors.
"""

from __future__ import annotations

import contextlib
import platform
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, cast
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pitstop import __version__
from pitstop.models import ACTIVE_PHASES, FINAL_PHASES, Phase

REGISTRY = CollectorRegistry(auto_describe=True)
"""Everything pitstop exports."""

for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

BUILD_INFO = Gauge(
    "pitstop_build_info",
    "Always 1; the labels name the running pitstop, kopf and Python versions.",
    ["version", "kopf_version", "python_version"],
    registry=REGISTRY,
)
UP = Gauge(
    "pitstop_up",
    "1 while the operator is started and handling resources, 0 before and after.",
    registry=REGISTRY,
)

LEADER = Gauge(
    "pitstop_leader",
    "1 while this replica holds the leader Lease (and so acts), 0 while it stands by.",
    registry=REGISTRY,
)


def _kopf_version() -> str:
    try:
        return metadata.version("kopf")
    except metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.labels(
    version=__version__,
    kopf_version=_kopf_version(),
    python_version=platform.python_version(),
).set(1)
UP.set(0)


@dataclass
class MetricsServer:
    """A running `/metrics` HTTP server (a daemon thread); `close()` stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(port: int, addr: str = "0.0.0.0") -> MetricsServer:
    """Serve REGISTRY on http://addr:port/metrics; OSError if the port cannot be bound."""
    server, thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return MetricsServer(server=server, thread=thread)


# --- the repair flow ---

REPAIRS = Gauge(
    "pitstop_repairs",
    "NodeRepairs this operator drives, by phase.",
    ["phase"],
    registry=REGISTRY,
)
for _phase in Phase:
    REPAIRS.labels(_phase.value).set(0)  # every phase from the start, 0 until a repair is in it
PHASE_DURATION = Histogram(
    "pitstop_phase_duration_seconds",
    "Time NodeRepairs spent in each phase, observed when they leave it.",
    ["phase"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, float("inf")),
    registry=REGISTRY,
)
EVICTIONS = Counter(
    "pitstop_evictions",
    "Eviction requests by result: evicted, blocked (PDB, 429), gone (404), error.",
    ["result"],
    registry=REGISTRY,
)
EVICTION_RESULTS = ("evicted", "blocked", "gone", "error")
for _result in EVICTION_RESULTS:
    EVICTIONS.labels(_result)  # from 0: increase() counts the first evictions too
INFLIGHT_TASKS = Gauge(
    "pitstop_inflight_tasks",
    "Tasks in flight on the instances of nodes under repair.",
    ["node"],
    registry=REGISTRY,
)
ORPHANED_LOCKS = Counter(
    "pitstop_orphaned_locks_released",
    "Node locks released because their NodeRepair was gone (deleted without its finalizer).",
    registry=REGISTRY,
)
PASSES = Counter(
    "pitstop_repair_passes",
    "Passes of a NodeRepair's driver that decided its next step, by repair (while it exists).",
    ["repair"],
    registry=REGISTRY,
)


class Sampled(Collector):
    """A gauge read when scraped, from `read` (set by the module that keeps the state):
    for values derived from a clock or from a large set, which a gauge set on every
    change would have to recompute each time."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]):
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.read: Callable[[], Mapping[tuple[str, ...], float]] = dict
        REGISTRY.register(self)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in sorted(self.read().items()):
            family.add_metric(list(labels), value)
        yield family


PAST_DEADLINE = Sampled(
    "pitstop_repairs_past_deadline",
    "NodeRepairs still in a phase whose deadline (its timeout) has passed, by phase:"
    " the driver acts at the deadline, so a repair stays here only when it is stuck.",
    ["phase"],
)
COMPLETED = Counter(
    "pitstop_repairs_completed",
    "NodeRepairs that reached a final phase (Succeeded, Failed, Aborted) in this process.",
    ["phase"],
    registry=REGISTRY,
)
for _phase in FINAL_PHASES:
    COMPLETED.labels(_phase.value)  # from 0, so increase() sees the first one

# --- the pools (one series per RepairPolicy and gauge) ---

POOL_NODES = Gauge(
    "pitstop_pool_nodes", "Nodes a RepairPolicy selects.", ["policy"], registry=REGISTRY
)
POOL_AVAILABLE = Gauge(
    "pitstop_pool_available_nodes",
    "Nodes of the pool that are Ready, schedulable and not under repair.",
    ["policy"],
    registry=REGISTRY,
)
POOL_MIN_AVAILABLE = Gauge(
    "pitstop_pool_min_available_nodes",
    "The policy's minAvailable, in nodes for the pool's present size.",
    ["policy"],
    registry=REGISTRY,
)
POOL_UNHEALTHY = Gauge(
    "pitstop_pool_unhealthy_nodes",
    "Nodes of the pool with a fault (a condition held long enough, or a firing alert).",
    ["policy"],
    registry=REGISTRY,
)
POOL_MAX_UNHEALTHY = Gauge(
    "pitstop_pool_max_unhealthy_nodes",
    "The policy's maxUnhealthy, in nodes: more unhealthy nodes engage the storm guard.",
    ["policy"],
    registry=REGISTRY,
)
POOL_ACTIVE_REPAIRS = Gauge(
    "pitstop_pool_active_repairs",
    "NodeRepairs of the pool's nodes that are under way.",
    ["policy"],
    registry=REGISTRY,
)
POOL_STORM = Gauge(
    "pitstop_pool_storm_active",
    "1 while the policy's storm guard holds back new automatic repairs, else 0.",
    ["policy"],
    registry=REGISTRY,
)
POOL_GAUGES = (
    POOL_NODES,
    POOL_AVAILABLE,
    POOL_MIN_AVAILABLE,
    POOL_UNHEALTHY,
    POOL_MAX_UNHEALTHY,
    POOL_ACTIVE_REPAIRS,
    POOL_STORM,
)

# --- the instances ---

GATED_PODS = Sampled(
    "pitstop_gated_pods",
    "Pods that declare the pitstop.dev/serving readiness gate, by state: open (True),"
    " held (closed by a repair of their node), waiting (pitstop should open it and has"
    " not yet: the pod cannot turn Ready).",
    ["state"],
)
SOURCE_FAILING = Sampled(
    "pitstop_task_source_failing_instances",
    "Instances polled for their tasks whose last poll failed (unreachable, refused, a"
    " bad answer), by InstanceProfile: counted busy until their task timeout.",
    ["profile"],
)


# --- what the run keeps for the repair gauges (pitstop.registry makes one per run) ---

DEADLINE_PHASES = ACTIVE_PHASES
"""The phases `repair.flow.phase_deadline` gives a deadline (each reported, 0 or more)."""


class RepairPhases:
    """The phase of every repair this run knows, which pitstop_repairs{phase} counts,
    and the deadline of each one's phase, which pitstop_repairs_past_deadline counts
    when scraped: one per operator run, in kopf's memo (`repair_phases(memo)`;
    pitstop.registry makes it and points PAST_DEADLINE at it), so a second run in the
    process does not count the first one's."""

    def __init__(self) -> None:
        self.phases: dict[str, Phase] = {}
        self.deadlines: dict[str, tuple[Phase, datetime]] = {}
        """The phase and its deadline of every repair in a phase that has one."""

    def record(self, repair: str, phase: Phase | None, deadline: datetime | None = None) -> None:
        """Keeps pitstop_repairs{phase} equal to the count of repairs in each phase
        (None: the repair is gone, and its pass count goes too), and the deadline of
        the repair's phase for pitstop_repairs_past_deadline."""
        if phase is None:
            self.phases.pop(repair, None)
            with contextlib.suppress(KeyError):  # never counted
                PASSES.remove(repair)
        else:
            self.phases[repair] = phase
        if phase is None or deadline is None:
            self.deadlines.pop(repair, None)
        else:
            self.deadlines[repair] = (phase, deadline)
        for p in Phase:
            REPAIRS.labels(p.value).set(sum(1 for v in self.phases.values() if v == p))

    def past_deadline(self, now: datetime | None = None) -> dict[tuple[str, ...], float]:
        """Repairs whose phase's deadline has passed, by phase (every phase with a
        deadline reported, so a panel or an alert sees 0 rather than nothing)."""
        now = now or datetime.now(UTC)
        counts: dict[tuple[str, ...], float] = {(p.value,): 0 for p in DEADLINE_PHASES}
        for phase, deadline in list(self.deadlines.values()):
            if deadline <= now:
                counts[(phase.value,)] = counts.get((phase.value,), 0) + 1
        return counts


MEMO_REPAIR_PHASES = "repair_phases"
"""Key of the run's RepairPhases in kopf's operator memo (and so in every object's)."""


def repair_phases(memo: Mapping[str, Any]) -> RepairPhases:
    """This operator run's RepairPhases, from any handler's memo."""
    return cast(RepairPhases, memo[MEMO_REPAIR_PHASES])
