"""InstanceProfiles as the operator reads them: a stored profile parsed into its
validated spec (or why it cannot be used), the types of its task source and drain
signal, and the words its status shows for them. Pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from pitstop.models import InstanceProfileSpec

ANNOTATION = "annotation"
PROMETHEUS = "prometheus"
HTTP = "http"
KNATIVE = "knative"
HTTP_POST = "httpPost"
NONE = "none"


@dataclass(frozen=True)
class Profile:
    """An InstanceProfile as indexed: its identity, age and validated spec."""

    name: str
    created: str
    """metadata.creationTimestamp (RFC 3339, so it sorts as text)."""
    spec: InstanceProfileSpec
    generation: int | None = None

    @cached_property
    def pod_selector(self) -> dict[str, Any]:
        """spec.podSelector as the selector rule reads it (built once: it is matched
        against every pod on every census and repair pass)."""
        return self.spec.pod_selector.wire()

    @cached_property
    def namespace_selector(self) -> dict[str, Any] | None:
        ns = self.spec.namespace_selector
        return ns.wire() if ns is not None else None

    @property
    def precedence(self) -> tuple[str, str]:
        """Sorts first when it wins: the oldest, then by name."""
        return (self.created, self.name)

    @property
    def fingerprint(self) -> str:
        """Changes with what a reading depends on: a reading taken under another
        source, signal or port is never mixed with one taken under this one."""
        wire = self.spec.wire()
        relevant = {k: wire.get(k) for k in ("tasks", "drainSignal", "timeoutSeconds")}
        text = json.dumps({"name": self.name, **relevant}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class InvalidProfile:
    """A stored profile the operator cannot use (the CRD let through what the model
    refuses): it describes no pod and says why in its Ready condition."""

    name: str
    created: str
    message: str


def parse_profile(body: Mapping[str, Any]) -> Profile | InvalidProfile:
    meta = body.get("metadata") or {}
    name, created = str(meta.get("name", "")), str(meta.get("creationTimestamp") or "")
    try:
        spec = InstanceProfileSpec.model_validate(body.get("spec") or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return InvalidProfile(name, created, f"spec.{where}: {first['msg']}")
    return Profile(name=name, created=created, spec=spec, generation=meta.get("generation"))


def task_source(profile: Profile | None) -> str:
    """annotation, prometheus, http or knative; no profile is the annotation contract."""
    return profile.spec.tasks.type if profile is not None else ANNOTATION


def drain_signal(profile: Profile | None) -> str:
    """annotation, httpPost or none; no profile is the annotation contract."""
    return profile.spec.drain_signal.type if profile is not None else ANNOTATION


def describe_tasks(spec: InstanceProfileSpec) -> str:
    """One line for the profile's status and columns."""
    t = spec.tasks
    if t.prometheus is not None:
        p = t.prometheus
        matchers = ",".join(f"{m.name}{m.operator.value}{m.value!r}" for m in p.labels)
        return f"prometheus :{p.port}{p.path} {p.metric}" + (f"{{{matchers}}}" if matchers else "")
    if t.http is not None:
        h = t.http
        return f"http :{h.port}{h.path}" + (f" .{h.field}" if h.field else "")
    if t.knative is not None:
        return f"knative :{t.knative.port}{t.knative.path}"
    return ANNOTATION


def describe_signal(spec: InstanceProfileSpec) -> str:
    s = spec.drain_signal
    if s.http_post is not None:
        return f"httpPost :{s.http_post.port}{s.http_post.path}"
    return s.type


def describe_deadline(spec: InstanceProfileSpec) -> str | None:
    """One line for the status: where the task deadline is read, e.g.
    `env exec_timeout,write_timeout, default 30s`; None when the profile declares none."""
    d = spec.task_deadline
    if d is None:
        return None
    names = ",".join(f"{e.container}/{e.name}" if e.container else e.name for e in d.env)
    parts = ([f"env {names}"] if names else []) + (
        [f"default {d.default_seconds}s"] if d.default_seconds is not None else []
    )
    return ", ".join(parts)
