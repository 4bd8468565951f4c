"""Prometheus metrics of the operator, served at `/metrics` on the metrics port.

pitstop keeps its own registry (not prometheus_client's global one), so what is
exported is exactly what is defined here plus the process/platform/GC collectors.
"""

from __future__ import annotations

import platform
import threading
from dataclasses import dataclass
from importlib import metadata
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

from pitstop import __version__

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
