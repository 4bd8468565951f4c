"""The instance contract: which pods on a node are instances, of which kind, and
how many tasks each has in flight. Pure functions over pod dicts (as kopf and the
API give them), so the rules live in one place and are unit-tested without a cluster."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

from pitstop import constants

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


def key(pod: Mapping[str, Any]) -> str:
    """namespace/name, the pod's identity across indexes, status and Events."""
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def is_instance(pod: Mapping[str, Any]) -> bool:
    """A pod `kubectl drain` would evict: not a DaemonSet pod, not a mirror pod,
    not finished."""
    meta = pod.get("metadata", {})
    if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
        return False
    if any(ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or []):
        return False
    return pod.get("status", {}).get("phase") not in FINISHED_PHASES


def has_serving_gate(pod: Mapping[str, Any]) -> bool:
    gates = pod.get("spec", {}).get("readinessGates") or []
    return any(g.get("conditionType") == constants.CONDITION_SERVING for g in gates)


def serving_status(pod: Mapping[str, Any]) -> str | None:
    """Status of the pitstop.dev/serving pod condition, None when absent."""
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == constants.CONDITION_SERVING:
            return str(cond.get("status"))
    return None


def kind(pod: Mapping[str, Any], endpoint_pods: Set[str]) -> str:
    """`sync` or `async`: the platform's label wins; otherwise a pod that backs an
    EndpointSlice endpoint (ready or not) serves requests."""
    label = (pod.get("metadata", {}).get("labels") or {}).get(constants.LABEL_INSTANCE_TYPE)
    if label in (constants.INSTANCE_SYNC, constants.INSTANCE_ASYNC):
        return str(label)
    return constants.INSTANCE_SYNC if key(pod) in endpoint_pods else constants.INSTANCE_ASYNC


@dataclass(frozen=True)
class TaskCount:
    """The runtime's in-flight count; `invalid` holds the raw value when it is not
    a non-negative integer (the pod then counts as busy)."""

    count: int
    invalid: str | None = None

    @property
    def busy(self) -> bool:
        return self.count > 0 or self.invalid is not None


def inflight_tasks(pod: Mapping[str, Any]) -> TaskCount:
    """Absent annotation: the pod keeps no task count, i.e. 0."""
    raw = (pod.get("metadata", {}).get("annotations") or {}).get(constants.ANNOTATION_INFLIGHT)
    if raw is None:
        return TaskCount(0)
    text = str(raw).strip()
    if text.isdigit() and text.isascii():
        return TaskCount(int(text))
    return TaskCount(0, invalid=str(raw))


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return pod.get("metadata", {}).get("deletionTimestamp") is not None
