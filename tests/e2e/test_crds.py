"""The generated CRDs on a real API server: the examples are accepted, the server
fills in the models' defaults, status is kept whole, and bad objects are refused
with a message that names the field."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from pitstop.constants import API_VERSION
from pitstop.models import NodeRepairSpec, RepairPolicySpec
from tests.e2e.kube import REPO, Cluster

pytestmark = pytest.mark.e2e

EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def node_repair(spec: dict[str, Any] | None, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "NodeRepair",
        "metadata": {"name": name or unique("crd-nr")},
    }
    if spec is not None:
        body["spec"] = spec
    return body


def repair_policy(spec: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "RepairPolicy",
        "metadata": {"name": unique("crd-rp")},
    }
    if spec is not None:
        body["spec"] = spec
    return body


def dry_run(
    cluster: Cluster, body: dict[str, Any], *flags: str
) -> subprocess.CompletedProcess[str]:
    """`kubectl create --dry-run=server`: what the server would store, or the error."""
    args = ("create", "--dry-run=server", "-o", "json", *flags, "-f", "-")
    return cluster.kubectl(*args, input=json.dumps(body), check=False)


# --- accepted ---


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted(cluster: Cluster, path: Path) -> None:
    applied = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(path))
    assert "(server dry run)" in applied.stdout


def test_server_applies_the_models_defaults(cluster: Cluster) -> None:
    stored = dry_run(cluster, node_repair({"nodeName": "node-1"}))
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["spec"] == NodeRepairSpec(node_name="node-1").wire()

    stored = dry_run(cluster, repair_policy({"nodeSelector": {"matchLabels": {"pool": "a"}}}))
    assert stored.returncode == 0, stored.stderr
    expected = RepairPolicySpec.model_validate({"nodeSelector": {"matchLabels": {"pool": "a"}}})
    assert json.loads(stored.stdout)["spec"] == expected.wire()


@pytest.mark.parametrize(
    "spec",
    [
        {"nodeSelector": {}, "maxUnhealthy": 3, "minAvailable": "3"},
        {"nodeSelector": {}, "maxUnhealthy": "0%", "minAvailable": "100%"},
        {
            "nodeSelector": {"matchExpressions": [{"key": "pool", "operator": "Exists"}]},
            "unhealthyConditions": [{"type": "Ready", "status": "False", "duration": "1h30m"}],
            "alerts": {"names": ["NodeDown"]},
        },
    ],
)
def test_valid_policies_are_accepted(cluster: Cluster, spec: dict[str, Any]) -> None:
    stored = dry_run(cluster, repair_policy(spec))
    assert stored.returncode == 0, stored.stderr


def test_status_is_kept_whole_and_shown_in_columns(cluster: Cluster) -> None:
    name = unique("crd-status")
    status = {
        "phase": "WaitingForTasks",
        "conditions": [
            {
                "type": "Cordoned",
                "status": "True",
                "reason": "Cordoned",
                "message": "node cordoned",
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
            "noServingGate": 1,
            "invalidTaskCounts": 0,
            "unreachable": 2,
        },
        "plan": {
            "sync": ["ns/a"],
            "async": ["ns/b"],
            "noServingGate": ["ns/a"],
            "inflightTasks": 4,
            "blockingPDBs": ["ns/pdb"],
        },
        "repair": {
            "attempts": 1,
            "jobName": "repair-1",
            "lastError": "x",
            "attemptStartTime": "2026-01-02T03:04:05Z",
        },
        "verify": {"healthySince": "2026-01-02T03:04:05Z"},
        "node": {"wasUnschedulable": True},
        "startTime": "2026-01-02T03:04:05Z",
        "phaseStartTime": "2026-01-02T03:04:05Z",
        "completionTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 1,
        "message": "waiting for 4 tasks",
    }
    cluster.kubectl(
        "create", "-f", "-", input=json.dumps(node_repair({"nodeName": "n1", "reason": "R"}, name))
    )
    try:
        patch = json.dumps({"status": status})
        cluster.kubectl("patch", "nr", name, "--subresource=status", "--type=merge", "-p", patch)
        stored = json.loads(cluster.kubectl("get", "noderepair", name, "-o", "json").stdout)
        assert stored["status"] == status
        table = cluster.kubectl("get", "nr", name).stdout.split("\n")
        assert table[0].split() == ["NAME", "NODE", "PHASE", "INSTANCES", "TASKS", "REASON", "AGE"]
        assert table[1].split()[:6] == [name, "n1", "WaitingForTasks", "5", "4", "R"]
    finally:
        cluster.kubectl("delete", "noderepair", name, "--wait=false")


# --- refused ---

JOB: dict[str, Any] = {"template": {"spec": {"template": {"spec": {"containers": []}}}}}

INVALID: list[tuple[str, dict[str, Any], list[str], tuple[str, ...]]] = [
    # NodeRepair
    ("missing spec", node_repair(None), ["spec: Required value"], ()),
    ("missing nodeName", node_repair({"reason": "x"}), ["spec.nodeName: Required value"], ()),
    (
        "bad nodeName",
        node_repair({"nodeName": "Node_7"}),
        ['spec.nodeName: Invalid value: "Node_7"'],
        (),
    ),
    (
        "negative task timeout",
        node_repair({"nodeName": "n", "drain": {"taskTimeoutSeconds": -5}}),
        ["spec.drain.taskTimeoutSeconds", "whole number of seconds (at least 1) or Auto"],
        (),
    ),
    (
        "zero eviction timeout",
        node_repair({"nodeName": "n", "drain": {"evictionTimeoutSeconds": 0}}),
        ["spec.drain.evictionTimeoutSeconds"],
        (),
    ),
    (
        "negative grace period",
        node_repair({"nodeName": "n", "drain": {"gracePeriodSeconds": -1}}),
        ["spec.drain.gracePeriodSeconds", "greater than or equal to 0"],
        (),
    ),
    (
        "unknown onTaskTimeout",
        node_repair({"nodeName": "n", "drain": {"onTaskTimeout": "Wait"}}),
        ["spec.drain.onTaskTimeout", "Unsupported value"],
        (),
    ),
    (
        "unknown strategy",
        node_repair({"nodeName": "n", "repair": {"strategy": "Reboot"}}),
        ["spec.repair.strategy", "Unsupported value"],
        (),
    ),
    (
        "Job without job",
        node_repair({"nodeName": "n", "repair": {"strategy": "Job"}}),
        ["spec.repair.job", "job is required when strategy is Job"],
        (),
    ),
    (
        "Job template without spec",
        node_repair({"nodeName": "n", "repair": {"strategy": "Job", "job": {"template": {}}}}),
        ["spec.repair.job.template.spec: Required value"],
        (),
    ),
    (
        "Webhook without webhook",
        node_repair({"nodeName": "n", "repair": {"strategy": "Webhook", "job": JOB}}),
        ["spec.repair.webhook", "webhook is required when strategy is Webhook"],
        (),
    ),
    (
        "strategy and steps together",
        node_repair(
            {"nodeName": "n", "repair": {"strategy": "Manual", "steps": [{"strategy": "Manual"}]}}
        ),
        ["spec.repair.steps", "steps and strategy (with job, webhook, external) are exclusive"],
        (),
    ),
    (
        "External step without external",
        node_repair({"nodeName": "n", "repair": {"steps": [{"strategy": "External"}]}}),
        ["spec.repair.steps[0].external", "external is required when strategy is External"],
        (),
    ),
    (
        "External template of no custom kind",
        node_repair(
            {
                "nodeName": "n",
                "repair": {
                    "steps": [
                        {
                            "strategy": "External",
                            "external": {
                                "templateRef": {
                                    "apiVersion": "v1",
                                    "kind": "PodTemplate",
                                    "namespace": "x",
                                    "name": "y",
                                }
                            },
                        }
                    ]
                },
            }
        ),
        ["spec.repair.steps[0].external.templateRef.apiVersion"],
        (),
    ),
    (
        "webhook URL not http(s)",
        node_repair(
            {"nodeName": "n", "repair": {"strategy": "Webhook", "webhook": {"url": "ftp://r"}}}
        ),
        ["spec.repair.webhook.url", "must be an http:// or https:// URL"],
        (),
    ),
    (
        "webhook secretRef without key",
        node_repair(
            {
                "nodeName": "n",
                "repair": {
                    "strategy": "Webhook",
                    "webhook": {"url": "https://r.example", "secretRef": {"name": "s"}},
                },
            }
        ),
        ["spec.repair.webhook.secretRef.key: Required value"],
        (),
    ),
    (
        "zero repair timeout",
        node_repair({"nodeName": "n", "repair": {"timeoutSeconds": 0}}),
        ["spec.repair.timeoutSeconds"],
        (),
    ),
    (
        "maxAttempts 0",
        node_repair({"nodeName": "n", "repair": {"maxAttempts": 0}}),
        ["spec.repair.maxAttempts", "greater than or equal to 1"],
        (),
    ),
    (
        "verify condition status Maybe",
        node_repair(
            {"nodeName": "n", "verify": {"conditions": [{"type": "Ready", "status": "Maybe"}]}}
        ),
        ["spec.verify.conditions[0].status", "Unsupported value"],
        (),
    ),
    (
        "negative stableSeconds",
        node_repair({"nodeName": "n", "verify": {"stableSeconds": -1}}),
        ["spec.verify.stableSeconds"],
        (),
    ),
    (
        "unknown onFailure",
        node_repair({"nodeName": "n", "onFailure": "Explode"}),
        ["spec.onFailure", "Unsupported value"],
        (),
    ),
    (
        "unknown spec field (strict)",
        node_repair({"nodeName": "n", "colour": "red"}),
        ['unknown field "spec.colour"'],
        ("--validate=strict",),
    ),
    # RepairPolicy
    ("missing nodeSelector", repair_policy({}), ["spec.nodeSelector: Required value"], ()),
    (
        "percentage above 100",
        repair_policy({"nodeSelector": {}, "maxUnhealthy": "140%"}),
        ['spec.maxUnhealthy: Invalid value: "140%"'],
        (),
    ),
    (
        "percentage not a number",
        repair_policy({"nodeSelector": {}, "minAvailable": "abc"}),
        ['spec.minAvailable: Invalid value: "abc"'],
        (),
    ),
    (
        "negative count",
        repair_policy({"nodeSelector": {}, "minAvailable": -1}),
        ["spec.minAvailable", "greater than or equal to 0"],
        (),
    ),
    (
        "maxConcurrentRepairs 0",
        repair_policy({"nodeSelector": {}, "maxConcurrentRepairs": 0}),
        ["spec.maxConcurrentRepairs", "greater than or equal to 1"],
        (),
    ),
    (
        "bad duration",
        repair_policy(
            {
                "nodeSelector": {},
                "unhealthyConditions": [
                    {"type": "Ready", "status": "False", "duration": "5 minutes"}
                ],
            }
        ),
        ['spec.unhealthyConditions[0].duration: Invalid value: "5 minutes"'],
        (),
    ),
    (
        "condition status Maybe",
        repair_policy(
            {
                "nodeSelector": {},
                "unhealthyConditions": [{"type": "Ready", "status": "Maybe", "duration": "5m"}],
            }
        ),
        ["spec.unhealthyConditions[0].status", "Unsupported value"],
        (),
    ),
    (
        "duplicate condition",
        repair_policy(
            {
                "nodeSelector": {},
                "unhealthyConditions": [
                    {"type": "Ready", "status": "False", "duration": "5m"},
                    {"type": "Ready", "status": "False", "duration": "1m"},
                ],
            }
        ),
        ["spec.unhealthyConditions[1]: Duplicate value"],
        (),
    ),
    (
        "In without values",
        repair_policy({"nodeSelector": {"matchExpressions": [{"key": "pool", "operator": "In"}]}}),
        ["spec.nodeSelector.matchExpressions[0].values", "must be non-empty for In"],
        (),
    ),
    (
        "alerts without names",
        repair_policy({"nodeSelector": {}, "alerts": {"names": []}}),
        ["spec.alerts.names"],
        (),
    ),
    (
        "template Job without job",
        repair_policy(
            {"nodeSelector": {}, "repairTemplate": {"spec": {"repair": {"strategy": "Job"}}}}
        ),
        ["spec.repairTemplate.spec.repair.job", "job is required when strategy is Job"],
        (),
    ),
    (
        "template with nodeName (strict)",
        repair_policy({"nodeSelector": {}, "repairTemplate": {"spec": {"nodeName": "n"}}}),
        ['unknown field "spec.repairTemplate.spec.nodeName"'],
        ("--validate=strict",),
    ),
]


@pytest.mark.parametrize(
    ("body", "messages", "flags"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_objects_are_refused(
    cluster: Cluster, body: dict[str, Any], messages: list[str], flags: tuple[str, ...]
) -> None:
    refused = dry_run(cluster, body, *flags)
    assert refused.returncode != 0, f"accepted: {refused.stdout}"
    for message in messages:
        assert message in refused.stderr


def test_node_name_is_immutable(cluster: Cluster) -> None:
    name = unique("crd-immutable")
    cluster.kubectl("create", "-f", "-", input=json.dumps(node_repair({"nodeName": "n1"}, name)))
    try:
        patch = '{"spec":{"nodeName":"n2"}}'
        patched = cluster.kubectl("patch", "nr", name, "--type=merge", "-p", patch, check=False)
        assert patched.returncode != 0
        assert "spec.nodeName" in patched.stderr and "nodeName is immutable" in patched.stderr
        # dryRun is immutable too: a plan never turns into a repair under way, nor back.
        patch = '{"spec":{"dryRun":true}}'
        patched = cluster.kubectl("patch", "nr", name, "--type=merge", "-p", patch, check=False)
        assert patched.returncode != 0 and "dryRun is immutable" in patched.stderr
        # Other fields stay mutable, e.g. the reason.
        cluster.kubectl(
            "patch", "noderepair", name, "--type=merge", "-p", '{"spec":{"reason":"Other"}}'
        )
    finally:
        cluster.kubectl("delete", "noderepair", name, "--wait=false")
