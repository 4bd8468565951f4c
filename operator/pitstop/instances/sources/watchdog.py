"""What the OpenFaaS of-watchdog needs on SIGTERM, for `pitstop plan`: the grace
period its pods must exceed. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pitstop.instances.sources.durations import go_duration
from pitstop.instances.sources.profiles import Profile

WATCHDOG_WRITE_TIMEOUT = 30.0
"""of-watchdog's default write_timeout (seconds): 30 s since 0.9.11 (January 2023,
config/config.go `defaultTimeout`), 10 s before."""


WATCHDOG_METRIC = "http_requests_in_flight"
"""of-watchdog's in-flight gauge: a profile reading it describes watchdog pods."""
WATCHDOG_ENV = frozenset({"write_timeout", "healthcheck_interval", "exec_timeout"})


def watchdog_grace(pod: Mapping[str, Any], profile: Profile | None) -> tuple[float, int] | None:
    """(needed, configured) termination grace seconds of an of-watchdog pod whose
    grace is too short, else None. On SIGTERM the watchdog keeps accepting for
    healthcheck_interval (default: write_timeout), then waits up to write_timeout
    for the requests in flight: the grace period must exceed their sum, or the
    kubelet's SIGKILL cuts them. A pod is a watchdog when its profile reads
    http_requests_in_flight, or when a container sets the watchdog's timeouts."""
    spec = pod.get("spec") or {}
    configured = spec.get("terminationGracePeriodSeconds")
    configured = 30 if configured is None else int(configured)
    prom = profile.spec.tasks.prometheus if profile is not None else None
    by_profile = prom is not None and prom.metric == WATCHDOG_METRIC
    worst: float | None = None
    for container in spec.get("containers") or []:
        env = {
            str(e.get("name")): str(e.get("value"))
            for e in container.get("env") or []
            if e.get("value") is not None
        }
        if not by_profile and not WATCHDOG_ENV & set(env):
            continue
        # As the watchdog reads them: unparsable is the default; a write_timeout of 0
        # stops it from starting, a healthcheck_interval of 0 drains at once.
        write = go_duration(env.get("write_timeout", "")) or WATCHDOG_WRITE_TIMEOUT
        health = go_duration(env.get("healthcheck_interval", ""))
        health = write if health is None else health
        needed = health + write
        worst = needed if worst is None else max(worst, needed)
    if worst is None or configured > worst:
        return None
    return worst, configured
