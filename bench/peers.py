"""The tools pitstop is measured against, each draining one node on the same
cluster in the same run."""

from __future__ import annotations

import subprocess
from typing import Any

from bench.cluster import Cluster, now
from bench.watches import World

KUBECTL_DRAIN = ("--ignore-daemonsets", "--delete-emptydir-data", "--timeout=5m")
"""`kubectl drain` with its default settings, plus what a node with these pods needs."""


def kubectl_drain(
    cluster: Cluster, world: World, node: str, anomalies: list[str], *flags: str
) -> dict[str, Any]:
    """Runs `kubectl drain NODE` (with `flags` after the defaults); the figure is the
    wall time of the command. A failed drain is kept as an anomaly."""
    start = now()
    proc = subprocess.run(
        cluster.kubectl_command("drain", node, *KUBECTL_DRAIN, *flags),
        capture_output=True,
        text=True,
        timeout=400,
    )
    done = now()
    if proc.returncode != 0:
        anomalies.append(f"kubectl drain {node} failed: {proc.stderr.strip()[-300:]}")
    world.wait(f"pods of {node} gone", lambda: not world.pods_on(node), 60)
    return {
        "drain_s": done - start,
        "retries_after_429": proc.stderr.count("will retry after"),
        "client_side_throttling_notes": proc.stderr.count("client-side throttling"),
        "exit_code": proc.returncode,
    }
