"""The pydantic models of NodeRepair and RepairPolicy (no cluster): defaults,
enums, validation that mirrors the CRD schema, and the examples in manifests/."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pitstop.constants import API_VERSION
from pitstop.models import (
    CamelModel,
    ConditionStatus,
    DrainSpec,
    InstanceCounts,
    InstanceProfileSpec,
    LabelSelectorRequirement,
    NodeRepairSpec,
    NodeRepairStatus,
    NodeRepairTemplateSpec,
    OnFailure,
    OnTaskTimeout,
    Phase,
    RepairPolicySpec,
    RepairPolicyStatus,
    RepairSpec,
    RepairStrategy,
    UnhealthyCondition,
    VerifySpec,
    WebhookRepair,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"

DEFAULT_NODE_REPAIR_SPEC = {
    "nodeName": "node-7",
    "dryRun": False,
    "drain": {"taskTimeoutSeconds": 1800, "onTaskTimeout": "Evict", "evictionTimeoutSeconds": 600},
    "repair": {"timeoutSeconds": 3600, "maxAttempts": 3},  # no strategy, no steps: Manual
    "verify": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "stableSeconds": 30,
        "timeoutSeconds": 900,
    },
    "onFailure": "KeepCordoned",
    "requireRoom": True,
}


def test_node_repair_defaults() -> None:
    spec = NodeRepairSpec.model_validate({"nodeName": "node-7"})
    assert spec.wire() == DEFAULT_NODE_REPAIR_SPEC
    assert spec.drain.grace_period_seconds is None
    assert spec.repair.job is None and spec.repair.webhook is None
    assert spec.reason is None


def test_defaults_are_not_shared_between_instances() -> None:
    one, two = NodeRepairSpec(node_name="a"), NodeRepairSpec(node_name="b")
    one.verify.conditions.append(one.verify.conditions[0].model_copy(update={"type": "X"}))
    assert len(two.verify.conditions) == 1


def test_repair_policy_defaults() -> None:
    spec = RepairPolicySpec.model_validate({"nodeSelector": {}})
    assert spec.wire() == {
        "nodeSelector": {},
        "maintenanceWindows": [],
        "unhealthyConditions": [
            {"type": "Ready", "status": "False", "duration": "5m"},
            {"type": "Ready", "status": "Unknown", "duration": "5m"},
        ],
        "maxUnhealthy": "40%",
        "maxConcurrentRepairs": 1,
        "minAvailable": "80%",
        "paused": False,
        "requireRoom": True,
        "autoscaled": False,
        "repairTemplate": {
            "spec": {
                k: v
                for k, v in DEFAULT_NODE_REPAIR_SPEC.items()
                if k not in ("nodeName", "requireRoom")  # the policy's own requireRoom
            }
        },
    }
    assert spec.alerts is None


def test_enum_values() -> None:
    assert [p.value for p in Phase] == [
        "Pending",
        "Cordoning",
        "Deregistering",
        "WaitingForTasks",
        "Evicting",
        "Repairing",
        "Verifying",
        "Uncordoning",
        "Succeeded",
        "Failed",
        "Aborted",
    ]
    assert [s.value for s in RepairStrategy] == ["Manual", "Job", "Webhook", "Replace", "External"]
    assert [s.value for s in OnTaskTimeout] == ["Evict", "Fail"]
    assert [s.value for s in OnFailure] == ["KeepCordoned", "Uncordon"]
    assert [s.value for s in ConditionStatus] == ["True", "False", "Unknown"]


def test_snake_case_names_and_camel_case_wire() -> None:
    spec = NodeRepairSpec(node_name="n", dry_run=True, drain=DrainSpec(grace_period_seconds=5))
    wire = spec.wire()
    assert wire["nodeName"] == "n" and wire["dryRun"] is True
    assert wire["drain"]["gracePeriodSeconds"] == 5
    assert NodeRepairSpec.model_validate(wire) == spec


def test_template_spec_has_no_node_name() -> None:
    assert "node_name" not in NodeRepairTemplateSpec.model_fields
    assert "node_name" in NodeRepairSpec.model_fields


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({}, "nodeName"),
        ({"nodeName": "Node_7"}, "nodeName"),
        ({"nodeName": ""}, "nodeName"),
        ({"nodeName": "n", "drain": {"taskTimeoutSeconds": 0}}, "taskTimeoutSeconds"),
        ({"nodeName": "n", "drain": {"evictionTimeoutSeconds": -1}}, "evictionTimeoutSeconds"),
        ({"nodeName": "n", "drain": {"gracePeriodSeconds": -1}}, "gracePeriodSeconds"),
        ({"nodeName": "n", "drain": {"onTaskTimeout": "Wait"}}, "onTaskTimeout"),
        ({"nodeName": "n", "repair": {"strategy": "Reboot"}}, "strategy"),
        ({"nodeName": "n", "repair": {"maxAttempts": 0}}, "maxAttempts"),
        ({"nodeName": "n", "repair": {"timeoutSeconds": 0}}, "timeoutSeconds"),
        ({"nodeName": "n", "repair": {"strategy": "Job"}}, "job is required"),
        ({"nodeName": "n", "repair": {"strategy": "Webhook"}}, "webhook is required"),
        (
            {"nodeName": "n", "repair": {"strategy": "Job", "job": {"template": {}}}},
            "template.spec",
        ),
        (
            {"nodeName": "n", "repair": {"strategy": "Webhook", "webhook": {"url": "ftp://x"}}},
            "http",
        ),
        (
            {"nodeName": "n", "repair": {"strategy": "Webhook", "webhook": {"url": "https://"}}},
            "http",
        ),
        (
            {
                "nodeName": "n",
                "repair": {
                    "strategy": "Webhook",
                    "webhook": {"url": "https://r.example", "secretRef": {"name": "s"}},
                },
            },
            "secretRef.key",
        ),
        ({"nodeName": "n", "verify": {"stableSeconds": -1}}, "stableSeconds"),
        ({"nodeName": "n", "verify": {"timeoutSeconds": 0}}, "timeoutSeconds"),
        (
            {"nodeName": "n", "verify": {"conditions": [{"type": "Ready", "status": "Maybe"}]}},
            "status",
        ),
        ({"nodeName": "n", "onFailure": "Explode"}, "onFailure"),
    ],
)
def test_node_repair_spec_rejects(spec: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as caught:
        NodeRepairSpec.model_validate(spec)
    assert error in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({}, "nodeSelector"),
        ({"nodeSelector": {}, "maxUnhealthy": "140%"}, "maxUnhealthy"),
        ({"nodeSelector": {}, "minAvailable": "abc"}, "minAvailable"),
        ({"nodeSelector": {}, "minAvailable": -1}, "minAvailable"),
        ({"nodeSelector": {}, "maxConcurrentRepairs": 0}, "maxConcurrentRepairs"),
        (
            {
                "nodeSelector": {},
                "unhealthyConditions": [{"type": "Ready", "status": "False", "duration": "5 min"}],
            },
            "duration",
        ),
        (
            {"nodeSelector": {}, "unhealthyConditions": [{"type": "Ready", "status": "Maybe"}]},
            "status",
        ),
        ({"nodeSelector": {}, "alerts": {"names": []}}, "names"),
        (
            {"nodeSelector": {"matchExpressions": [{"key": "pool", "operator": "In"}]}},
            "values must be non-empty",
        ),
        (
            {"nodeSelector": {}, "repairTemplate": {"spec": {"repair": {"strategy": "Job"}}}},
            "job is required",
        ),
    ],
)
def test_repair_policy_spec_rejects(spec: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RepairPolicySpec.model_validate(spec)
    assert error in str(caught.value)


@pytest.mark.parametrize("value", [0, 3, "3", "0%", "40%", "100%"])
def test_int_or_percent_accepts(value: int | str) -> None:
    assert (
        RepairPolicySpec.model_validate({"nodeSelector": {}, "minAvailable": value}).min_available
        == value
    )


def test_durations() -> None:
    for duration in ("0s", "5m", "1h30m", "250ms"):
        UnhealthyCondition(type="Ready", status=ConditionStatus.FALSE, duration=duration)


def test_label_selector_requirement() -> None:
    LabelSelectorRequirement.model_validate({"key": "pool", "operator": "In", "values": ["a"]})
    LabelSelectorRequirement.model_validate({"key": "pool", "operator": "Exists"})
    with pytest.raises(ValidationError, match="empty for Exists"):
        LabelSelectorRequirement.model_validate(
            {"key": "pool", "operator": "Exists", "values": ["a"]}
        )


def test_strategies() -> None:
    pod = {"containers": [{"name": "fix", "image": "fix:1"}], "serviceAccountName": "tool"}
    given = {"backoffLimit": 2, "template": {"metadata": {"labels": {"a": "b"}}, "spec": pod}}
    job = RepairSpec.model_validate({"strategy": "Job", "job": {"template": {"spec": given}}})
    assert job.job is not None and job.job.template.spec.wire() == given, "kept as given"
    hook = RepairSpec.model_validate(
        {"strategy": "Webhook", "webhook": {"url": "https://repair.svc:8443/x"}}
    )
    assert hook.webhook == WebhookRepair(url="https://repair.svc:8443/x", timeout_seconds=30)
    VerifySpec(conditions=[])  # no conditions: only stableSeconds and the timeout


def test_instance_counts_async_alias() -> None:
    counts = InstanceCounts.model_validate({"sync": 1, "async": 2})
    assert counts.async_ == 2
    assert InstanceCounts(async_=3).wire()["async"] == 3


def test_node_repair_status_round_trip() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    wire = {
        "phase": "WaitingForTasks",
        "conditions": [
            {
                "type": "Cordoned",
                "status": "True",
                "reason": "Cordoned",
                "message": "node-7 cordoned",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
                "observedGeneration": 1,
            }
        ],
        "instances": {
            "total": 5,
            "sync": 3,
            "async": 2,
            "deregistered": 3,
            "inflightTasks": 4,
            "remaining": 5,
            "noServingGate": 0,
            "invalidTaskCounts": 1,
            "unreachable": 0,
        },
        "plan": {
            "sync": ["ns/a"],
            "async": ["ns/b"],
            "noServingGate": [],
            "inflightTasks": 2,
            "blockingPDBs": ["ns/pdb"],
            "taskDeadlines": [
                {
                    "instance": "ns/b",
                    "seconds": 60.0,
                    "source": "exec_timeout=60s of InstanceProfile of",
                }
            ],
            "autoTaskTimeout": {
                "seconds": 70,
                "source": "Runtime",
                "runtimeSeconds": 60,
                "instance": "ns/b",
                "message": "Auto: 70s",
            },
        },
        "taskTimeout": {"seconds": 1800, "source": "Default", "message": "Auto: 1800s"},
        "repair": {"attempts": 1, "jobName": "repair-node-7-1", "lastError": "boom"},
        "verify": {"healthySince": "2026-01-02T03:04:05Z"},
        "node": {"wasUnschedulable": False},
        "startTime": "2026-01-02T03:04:05Z",
        "phaseStartTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 1,
        "message": "waiting for 4 tasks on 2 instances",
    }
    status = NodeRepairStatus.model_validate(wire)
    assert status.phase is Phase.WAITING_FOR_TASKS
    assert status.start_time == now
    assert status.wire() == wire


def test_repair_policy_status_round_trip() -> None:
    wire = {
        "nodes": 10,
        "availableNodes": 8,
        "unhealthyNodes": 5,
        "activeRepairs": 0,
        "suppressed": {
            "active": True,
            "reason": "MaxUnhealthyExceeded",
            "message": "5 of 10 nodes unhealthy, maxUnhealthy 40% allows 4",
            "nodes": ["n1", "n2"],
        },
        "conditions": [],
        "lastRepairTime": "2026-01-02T03:04:05Z",
        "alerts": [
            {
                "node": "n3",
                "alertname": "NodeDiskFailing",
                "startsAt": "2026-01-02T03:00:00.123Z",
                "lastReceived": "2026-01-02T03:04:00Z",
            }
        ],
        "repairs": [
            {
                "node": "n4",
                "repair": "n4-kerneldeadlock-0123456789",
                "cause": "KernelDeadlock=True for 0s",
                "declinedUntil": "2026-01-03T03:04:05Z",
            }
        ],
        "observedGeneration": 2,
    }
    assert RepairPolicyStatus.model_validate(wire).wire() == wire


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _contains(outer: Any, inner: Any) -> bool:
    """Every key and value of `inner` is in `outer` (defaults may add more)."""
    if isinstance(inner, dict):
        return isinstance(outer, dict) and all(
            k in outer and _contains(outer[k], v) for k, v in inner.items()
        )
    if isinstance(inner, list):  # of objects whose defaults may add more (ladder steps)
        return (
            isinstance(outer, list)
            and len(outer) == len(inner)
            and all(_contains(o, i) for o, i in zip(outer, inner, strict=True))
        )
    return bool(outer == inner)


def test_examples_exist() -> None:
    kinds = sorted(d["kind"] for d in _documents())
    assert kinds == [
        *["InstanceProfile"] * 4,
        *["NodeRepair"] * 4,
        *["RepairPolicy"] * 2,
    ]
    assert {d["apiVersion"] for d in _documents()} == {API_VERSION}


@pytest.mark.parametrize("doc", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_examples_round_trip(doc: dict[str, Any]) -> None:
    model: type[CamelModel] = {
        "NodeRepair": NodeRepairSpec,
        "RepairPolicy": RepairPolicySpec,
        "InstanceProfile": InstanceProfileSpec,
    }[doc["kind"]]
    spec = model.model_validate(doc["spec"])
    assert _contains(spec.wire(), _without_nulls(doc["spec"]))
    assert model.model_validate(spec.wire()) == spec


def test_design_example_spells_out_the_defaults() -> None:
    (doc,) = [d for d in _documents() if d["metadata"]["name"] == "node-7-kernel-deadlock"]
    expected = {**DEFAULT_NODE_REPAIR_SPEC, "reason": "KernelDeadlock"}
    # The example spells out Manual, the strategy of a repair that names none.
    expected["repair"] = {"strategy": "Manual", **expected["repair"]}
    assert _without_nulls(doc["spec"]) == expected


# --- found by tests/e2e/test_bad_input.py: accepted before, refused now ---

WEBHOOK = {"strategy": "Webhook", "webhook": {"url": "https://r.example"}}


@pytest.mark.parametrize(
    ("model", "spec", "field"),
    [
        (
            NodeRepairSpec,
            {
                "nodeName": "n",
                "repair": {
                    **WEBHOOK,
                    "webhook": {
                        "url": "https://r.example",
                        "secretRef": {"name": "Bad_Name", "key": "token"},
                    },
                },
            },
            "secretRef.name",
        ),
        (
            NodeRepairSpec,
            {
                "nodeName": "n",
                "repair": {
                    **WEBHOOK,
                    "webhook": {
                        "url": "https://r.example",
                        "secretRef": {"name": "s", "key": "a b/c"},
                    },
                },
            },
            "secretRef.key",
        ),
        (RepairPolicySpec, {"nodeSelector": {"matchLabels": {"pool": "a b"}}}, "matchLabels"),
        (RepairPolicySpec, {"nodeSelector": {"matchLabels": {"a b": "x"}}}, "matchLabels"),
        (
            RepairPolicySpec,
            {"nodeSelector": {"matchExpressions": [{"key": "a b", "operator": "Exists"}]}},
            "key",
        ),
        (RepairPolicySpec, {"nodeSelector": {}, "alerts": {"names": [""]}}, "names"),
        (
            RepairPolicySpec,
            {"nodeSelector": {}, "alerts": {"names": ["A"], "nodeLabel": "node name!"}},
            "nodeLabel",
        ),
    ],
)
def test_bad_names_and_labels_are_refused(model: Any, spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        model.model_validate(spec)
    assert field.split(".")[-1] in str(e.value), str(e.value)


def test_good_label_keys_and_values_pass() -> None:
    spec = RepairPolicySpec.model_validate(
        {
            "nodeSelector": {
                "matchLabels": {"topology.kubernetes.io/zone": "eu-1a", "pool": "", "a_b.c": "X"},
                "matchExpressions": [{"key": "example.com/x", "operator": "In", "values": ["a"]}],
            },
            "alerts": {"names": ["NodeDown"], "nodeLabel": "instance_name"},
        }
    )
    assert spec.node_selector.match_labels == {
        "topology.kubernetes.io/zone": "eu-1a",
        "pool": "",
        "a_b.c": "X",
    }


def test_the_npd_example_repairs_a_ready_node_in_a_small_pool_and_can_verify() -> None:
    """Run against the real node-problem-detector, the shipped policy never admitted a
    repair of a still-Ready node in a pool under 7 nodes (minAvailable 85%), and
    waited on ReadonlyFilesystem=False, which NPD's kernel monitor no longer reports."""
    from pitstop.pool import arithmetic

    (doc,) = yaml.safe_load_all((EXAMPLES / "repairpolicy-node-problem-detector.yaml").read_text())
    spec = RepairPolicySpec.model_validate(doc["spec"])
    for size in (4, 5, 10, 100):
        assert size - 1 >= arithmetic.min_available(spec, size), size
    verify = doc["spec"]["repairTemplate"]["spec"]["verify"]["conditions"]
    # NPD's default monitors report these (kernel-monitor.json); kubelet reports Ready.
    assert {c["type"] for c in verify} <= {"Ready", "KernelDeadlock"}, verify
