"""Where an instance is asked: its port (a number, or a name of its pod's container
ports), its URL, and the requests that poll its task source and send its httpPost
drain signal, resolved against its pod. Pure (pitstop.instances.sources.poller
sends them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pitstop.instances.sources.errors import INVALID, UNREACHABLE, SourceError
from pitstop.instances.sources.profiles import Profile


def resolve_port(pod: Mapping[str, Any], port: int | str) -> int:
    """A port number as is; a name looked up in the pod's container ports."""
    if isinstance(port, int):
        return port
    for container in (pod.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == port and p.get("containerPort"):
                return int(p["containerPort"])
    raise SourceError(INVALID, f"the pod has no container port named {port!r}")


def url(pod: Mapping[str, Any], port: int | str, path: str) -> str:
    """http://<pod IP>:<port><path>; a pod without an IP raises SourceError."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        raise SourceError(UNREACHABLE, "the pod has no IP address yet")
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{resolve_port(pod, port)}{path}"


@dataclass(frozen=True)
class Request:
    """One HTTP request to an instance, resolved against its pod."""

    method: str
    url: str
    timeout: float


def poll_request(profile: Profile, pod: Mapping[str, Any]) -> Request:
    """The GET that reads a polled source (SourceError if it cannot be addressed)."""
    t = profile.spec.tasks
    target = t.prometheus or t.http or t.knative
    if target is None:
        raise ValueError(f"profile {profile.name} reads the annotation, not a polled source")
    return Request("GET", url(pod, target.port, target.path), profile.spec.timeout_seconds)


def signal_request(profile: Profile, pod: Mapping[str, Any]) -> Request:
    """The POST of an httpPost drain signal."""
    post = profile.spec.drain_signal.http_post
    if post is None:
        raise ValueError(f"profile {profile.name} has no httpPost drain signal")
    return Request("POST", url(pod, post.port, post.path), profile.spec.timeout_seconds)
