"""The task deadline a runtime declares for one of its pods: the longest a task may
run, read from the container environment its InstanceProfile's `taskDeadline`
names (of-watchdog's exec_timeout, Knative queue-proxy's REVISION_TIMEOUT_SECONDS).
What `drain.taskTimeoutSeconds: Auto` waits for. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pitstop.instances.sources.durations import go_duration
from pitstop.instances.sources.profiles import Profile


@dataclass(frozen=True)
class Deadline:
    """The longest a task of the instance may run, and where that was read."""

    seconds: float
    source: str
    """e.g. `exec_timeout=60s` (the variable and its value), or `default`."""


def task_deadline(pod: Mapping[str, Any], profile: Profile | None) -> Deadline | None:
    """The deadline the pod's profile declares for it: the largest of the named
    variables set to a positive duration on the pod's containers (0 is "no limit" to
    most runtimes; a value that is no duration is the runtime's problem, not a
    deadline), else the profile's default; None when the profile declares none."""
    spec = profile.spec.task_deadline if profile is not None else None
    if spec is None:
        return None
    best: Deadline | None = None
    for container in (pod.get("spec") or {}).get("containers") or []:
        env = {
            str(e.get("name")): str(e.get("value"))
            for e in container.get("env") or []
            if e.get("value") is not None
        }
        for want in spec.env:
            if want.container is not None and want.container != container.get("name"):
                continue
            value = env.get(want.name)
            seconds = go_duration(value) if value is not None else None
            if seconds is None or seconds <= 0:
                continue
            if best is None or seconds > best.seconds:
                best = Deadline(seconds, f"{want.name}={value}")
    if best is None and spec.default_seconds is not None:
        best = Deadline(float(spec.default_seconds), "default")
    return best
