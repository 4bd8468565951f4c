"""The instance contract (DESIGN "The instance contract"), on pod dicts (no cluster):
which pods are instances, their kind, their in-flight task count, the serving gate."""

from __future__ import annotations

from typing import Any

import pytest

from pitstop import constants as C
from pitstop.instances import contract


def pod(
    name: str = "p1",
    namespace: str = "fn",
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owners: list[str] | None = None,
    phase: str = "Running",
    gates: list[str] | None = None,
    conditions: list[dict[str, str]] | None = None,
    deletion: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    if owners is not None:
        meta["ownerReferences"] = [{"kind": k, "name": "x", "apiVersion": "v1"} for k in owners]
    if deletion is not None:
        meta["deletionTimestamp"] = deletion
    spec: dict[str, Any] = {"nodeName": "n1"}
    if gates is not None:
        spec["readinessGates"] = [{"conditionType": g} for g in gates]
    status: dict[str, Any] = {"phase": phase}
    if conditions is not None:
        status["conditions"] = conditions
    return {"metadata": meta, "spec": spec, "status": status}


def with_tasks(raw: str) -> dict[str, Any]:
    return pod(annotations={C.ANNOTATION_INFLIGHT: raw})


# --- key ---


def test_key_is_namespace_slash_name() -> None:
    assert contract.key(pod("a", "ns")) == "ns/a"


# --- is_instance ---


@pytest.mark.parametrize("owner", ["ReplicaSet", "StatefulSet", "Job"])
def test_controller_owned_running_pod_is_an_instance(owner: str) -> None:
    assert contract.is_instance(pod(owners=[owner]))


def test_bare_pod_is_an_instance() -> None:
    assert contract.is_instance(pod())


@pytest.mark.parametrize("phase", ["Pending", "Running", "Unknown"])
def test_unfinished_pod_is_an_instance(phase: str) -> None:
    assert contract.is_instance(pod(phase=phase))


def test_daemonset_pod_is_not_an_instance() -> None:
    assert not contract.is_instance(pod(owners=["DaemonSet"]))


def test_daemonset_among_several_owners_still_excludes() -> None:
    assert not contract.is_instance(pod(owners=["ConfigMap", "DaemonSet"]))


def test_mirror_pod_is_not_an_instance() -> None:
    assert not contract.is_instance(pod(annotations={"kubernetes.io/config.mirror": "abc"}))


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_pod_is_not_an_instance(phase: str) -> None:
    assert not contract.is_instance(pod(phase=phase))


def test_pod_with_null_annotations_and_owners_is_an_instance() -> None:
    body = pod()
    body["metadata"]["annotations"] = None
    body["metadata"]["ownerReferences"] = None
    assert contract.is_instance(body)


# --- kind ---


@pytest.mark.parametrize("label", ["sync", "async"])
def test_instance_type_label_wins_over_endpoints(label: str) -> None:
    p = pod(labels={C.LABEL_INSTANCE_TYPE: label})
    assert contract.kind(p, {"fn/p1"}) == label
    assert contract.kind(p, set()) == label


def test_unlabelled_pod_backing_an_endpoint_is_sync() -> None:
    assert contract.kind(pod(), {"fn/p1"}) == C.INSTANCE_SYNC


def test_unlabelled_pod_without_endpoint_is_async() -> None:
    assert contract.kind(pod(), {"fn/other", "other/p1"}) == C.INSTANCE_ASYNC


def test_unlabelled_pod_declaring_the_serving_gate_is_sync_before_its_endpoint_is_seen() -> None:
    # Long-run seed 20130: a pod made Ready a moment ago is routed before the
    # operator's view of the EndpointSlices lists it. Taken for async, it was evicted
    # without deregistration, still routed (invariant 2). Its gate says it is routed
    # by readiness: sync, so its gate is closed and the slices must confirm it.
    p = pod(
        gates=[C.CONDITION_SERVING], conditions=[{"type": C.CONDITION_SERVING, "status": "True"}]
    )
    assert contract.kind(p, set()) == C.INSTANCE_SYNC
    i = contract.observe(p, None)
    assert i.sync and i.gated and not i.deregistered


@pytest.mark.parametrize("label", ["Sync", "ASYNC", "", "both", "http"])
def test_invalid_instance_type_label_falls_back_to_endpoints(label: str) -> None:
    p = pod(labels={C.LABEL_INSTANCE_TYPE: label})
    assert contract.kind(p, {"fn/p1"}) == C.INSTANCE_SYNC
    assert contract.kind(p, set()) == C.INSTANCE_ASYNC


# --- inflight_tasks ---


def test_absent_task_annotation_means_zero_and_not_busy() -> None:
    tasks = contract.inflight_tasks(pod())
    assert tasks == contract.TaskCount(0)
    assert not tasks.busy


def test_null_annotations_mean_zero_tasks() -> None:
    body = pod()
    body["metadata"]["annotations"] = None
    assert contract.inflight_tasks(body) == contract.TaskCount(0)


@pytest.mark.parametrize(("raw", "count"), [("0", 0), ("3", 3), ("007", 7), (" 12 ", 12)])
def test_non_negative_integer_is_the_count(raw: str, count: int) -> None:
    tasks = contract.inflight_tasks(with_tasks(raw))
    assert tasks.count == count
    assert tasks.invalid is None


def test_zero_tasks_is_not_busy_and_positive_is_busy() -> None:
    assert not contract.inflight_tasks(with_tasks("0")).busy
    assert contract.inflight_tasks(with_tasks("3")).busy


@pytest.mark.parametrize(
    "raw",
    ["-1", "abc", "1.5", " ", "", "+3", "0x10", "1e3", "\u0663", "\u00b3", "\uff13"],
    ids=repr,
)
def test_invalid_task_count_is_reported_raw_and_busy(raw: str) -> None:
    """Signs, decimals, blanks and non-ASCII digits (Arabic-Indic, superscript, fullwidth)."""
    tasks = contract.inflight_tasks(with_tasks(raw))
    assert tasks.invalid == raw
    assert tasks.count == 0
    assert tasks.busy


# --- serving gate ---


def test_pod_declaring_the_serving_gate_has_it() -> None:
    assert contract.has_serving_gate(pod(gates=["other/gate", C.CONDITION_SERVING]))


def test_pod_with_other_gates_or_none_has_no_serving_gate() -> None:
    assert not contract.has_serving_gate(pod(gates=["other/gate"]))
    assert not contract.has_serving_gate(pod())


@pytest.mark.parametrize("value", ["True", "False", "Unknown"])
def test_serving_status_reads_the_serving_condition(value: str) -> None:
    conds = [{"type": "Ready", "status": "True"}, {"type": C.CONDITION_SERVING, "status": value}]
    assert contract.serving_status(pod(conditions=conds)) == value


def test_serving_status_is_none_without_the_condition() -> None:
    assert contract.serving_status(pod(conditions=[{"type": "Ready", "status": "True"}])) is None
    assert contract.serving_status(pod()) is None


def test_gate_closed_since_is_the_closed_conditions_transition_time() -> None:
    """Invariant 9: the deregistration wait of each instance counts from its own gate
    closing; an open gate, or a closed one without a time, has none."""
    closed = {"type": C.CONDITION_SERVING, "status": "False"}
    at = {"lastTransitionTime": "2024-05-01T12:00:00Z"}
    i = contract.observe(pod(gates=[C.CONDITION_SERVING], conditions=[{**closed, **at}]), None)
    assert i.gate_closed_since is not None and i.gate_closed_since.isoformat() == (
        "2024-05-01T12:00:00+00:00"
    )
    opened = {"type": C.CONDITION_SERVING, "status": "True", **at}
    assert contract.observe(pod(conditions=[opened]), None).gate_closed_since is None
    assert contract.observe(pod(conditions=[closed]), None).gate_closed_since is None


# --- terminating ---


def test_pod_with_deletion_timestamp_is_terminating() -> None:
    assert contract.is_terminating(pod(deletion="2024-01-01T00:00:00Z"))


def test_pod_without_deletion_timestamp_is_not_terminating() -> None:
    assert not contract.is_terminating(pod())
