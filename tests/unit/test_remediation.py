"""pitstop as an external remediator (pitstop.remediation.contract, the models and
CRDs of NodeRepairRemediation and its template): the node a checker's object names,
the NodeRepair it becomes, the conditions NodeHealthCheck reads, and the pool
guards applied to the NodeRepairs that remediation objects make."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pitstop import constants as C
from pitstop import crdgen
from pitstop.cluster.indexes import Wakeups
from pitstop.models import (
    NodeRepairRemediationSpec,
    NodeRepairRemediationStatus,
    NodeRepairRemediationTemplateSpec,
    NodeRepairSpec,
    Phase,
)
from pitstop.models.common import DNS_SUBDOMAIN_PATTERN
from pitstop.pool.daemon import Admission, Pools
from pitstop.remediation import contract

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fresh_admission() -> Admission:
    """A new operator run's admission (nothing admitted yet)."""
    return Pools.waking(Wakeups()).admission


EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "remediation"
UID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"


def remediation(
    name: str = "node-7",
    owners: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "checks",
            "uid": UID,
            "ownerReferences": owners or [],
            "annotations": annotations or {},
        },
        "spec": spec or {},
    }


NHC_OWNER = {
    "apiVersion": "remediation.medik8s.io/v1alpha1",
    "kind": "NodeHealthCheck",
    "name": "w",
}
MACHINE = {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": "md-0-abc"}


# --- which node ---


def test_nodehealthcheck_names_the_object_after_the_node() -> None:
    assert contract.target(remediation("node-7", [NHC_OWNER])) == contract.Target(node="node-7")


def test_nodehealthcheck_annotates_the_node_when_the_name_is_generated() -> None:
    body = remediation("node-7-x2k9q", [NHC_OWNER], {C.ANNOTATION_NHC_NODE_NAME: "node-7"})
    assert contract.target(body).node == "node-7"


def test_machinehealthcheck_names_it_after_the_machine_it_owns() -> None:
    body = remediation("md-0-abc", [MACHINE])
    assert contract.target(body) == contract.Target(
        machine=("cluster.x-k8s.io/v1beta2", "checks", "md-0-abc")
    )
    machine = {"status": {"nodeRef": {"name": "node-3"}}}
    assert contract.machine_node(machine) == "node-3"
    assert contract.machine_node({"status": {}}) is None
    assert contract.machine_node(None) is None


def test_an_openshift_machine_owner_is_not_cluster_apis() -> None:
    """NHC on OpenShift adds the node's machine.openshift.io Machine as an owner:
    the object is still named after the node."""
    openshift = {**MACHINE, "apiVersion": "machine.openshift.io/v1beta1"}
    assert contract.target(remediation("node-7", [NHC_OWNER, openshift])).node == "node-7"


# --- the NodeRepair it becomes ---


def test_repair_names_are_valid_unique_per_object_and_fit() -> None:
    long_ns, long_name = "n" * 63, "m" * 253
    name = contract.repair_name(long_ns, long_name, UID)
    assert len(name) <= 253 and re.match(DNS_SUBDOMAIN_PATTERN, name)
    assert contract.repair_name("a", "b", UID) == contract.repair_name("a", "b", UID)
    assert contract.repair_name("a", "b", UID) != contract.repair_name("a", "b", UID[::-1])
    # a name cut at a dot or dash still ends alphanumeric
    cut = contract.repair_name("ns", "x" * 239 + ".-y", UID)
    assert re.match(DNS_SUBDOMAIN_PATTERN, cut), cut


def test_node_repair_carries_the_spec_the_node_and_the_link() -> None:
    spec = {"repair": {"strategy": "Manual", "timeoutSeconds": 60}, "onFailure": "Uncordon"}
    body = contract.node_repair(remediation("node-7", [NHC_OWNER], spec=spec), "node-7")
    meta = body["metadata"]
    assert meta["name"] == contract.repair_name("checks", "node-7", UID)
    assert meta["labels"] == {C.LABEL_REMEDIATION_UID: UID}
    assert meta["annotations"] == {C.ANNOTATION_REMEDIATION: "checks/node-7"}
    assert "ownerReferences" not in meta  # cluster-scoped: a namespaced owner is refused
    parsed = NodeRepairSpec.model_validate(body["spec"])
    assert parsed.node_name == "node-7" and parsed.on_failure == "Uncordon"
    assert parsed.reason == "Remediation checks/node-7 (NodeHealthCheck w)"
    kept = contract.node_repair(remediation(spec={"reason": "disk"}), "n")["spec"]["reason"]
    assert kept == "disk"


def test_only_namespaces_the_admin_labelled_may_repair() -> None:
    assert contract.namespace_allowed({C.LABEL_REMEDIATION_ALLOWED: "true"})
    assert not contract.namespace_allowed({C.LABEL_REMEDIATION_ALLOWED: "yes"})
    assert not contract.namespace_allowed({})
    assert not contract.namespace_allowed(None)


# --- the conditions NodeHealthCheck reads ---


def view(phase: Phase | None, message: str = "m") -> contract.RepairView:
    return contract.RepairView("r", phase, message)


def conditions(status: NodeRepairRemediationStatus) -> dict[str, tuple[str, str | None]]:
    return {c.type: (c.status.value, c.reason) for c in status.conditions}


@pytest.mark.parametrize(
    ("phase", "processing", "succeeded"),
    [
        (None, ("True", "Pending"), ("Unknown", "Pending")),
        (Phase.PENDING, ("True", "Pending"), ("Unknown", "Pending")),
        (Phase.EVICTING, ("True", "Evicting"), ("Unknown", "Evicting")),
        (Phase.VERIFYING, ("True", "Verifying"), ("Unknown", "Verifying")),
        (Phase.SUCCEEDED, ("False", "RepairSucceeded"), ("True", "RepairSucceeded")),
        (Phase.FAILED, ("False", "RepairFailed"), ("False", "RepairFailed")),
        (Phase.ABORTED, ("False", "Aborted"), ("False", "Aborted")),
    ],
)
def test_conditions_follow_the_repair(
    phase: Phase | None, processing: tuple[str, str], succeeded: tuple[str, str]
) -> None:
    old = NodeRepairRemediationStatus()
    new = contract.status(contract.mirrored(view(phase)), old, T0, 1, "node-7", "r")
    assert conditions(new) == {
        "Processing": processing,
        "Succeeded": succeeded,
        "PermanentNodeDeletionExpected": ("False", "NodeKept"),
    }
    assert new.node_name == "node-7" and new.node_repair == "r" and new.phase == phase
    assert new.start_time == T0 and new.observed_generation == 1


def test_refusals_finish_without_success_so_nhc_escalates() -> None:
    outcome = contract.refused(C.REASON_NAMESPACE_NOT_ALLOWED, "not allowed")
    new = contract.status(outcome, NodeRepairRemediationStatus(), T0, 1, None, None)
    assert conditions(new)["Succeeded"] == ("False", "NamespaceNotAllowed")
    assert conditions(new)["Processing"] == ("False", "NamespaceNotAllowed")
    assert new.start_time is None and new.node_repair is None


def test_transition_times_move_only_when_a_status_changes() -> None:
    first = contract.status(
        contract.mirrored(view(Phase.CORDONING)), NodeRepairRemediationStatus(), T0, 1, "n", "r"
    )
    later = T0 + timedelta(minutes=3)
    second = contract.status(contract.mirrored(view(Phase.EVICTING)), first, later, 1, None, None)
    times = {c.type: c.last_transition_time for c in second.conditions}
    assert times == {
        "Processing": T0,
        "Succeeded": T0,
        "PermanentNodeDeletionExpected": T0,
    }
    assert second.node_repair == "r" and second.start_time == T0  # kept from before
    done = contract.status(contract.mirrored(view(Phase.SUCCEEDED)), second, later, 1, None, None)
    times = {c.type: c.last_transition_time for c in done.conditions}
    assert times["Processing"] == later and times["Succeeded"] == later
    assert times["PermanentNodeDeletionExpected"] == T0


def test_the_status_round_trips_the_wire() -> None:
    new = contract.status(
        contract.mirrored(view(Phase.EVICTING)), NodeRepairRemediationStatus(), T0, 2, "n", "r"
    )
    assert NodeRepairRemediationStatus.model_validate(new.wire()) == new


def test_repair_view_reads_phase_message_and_deletion() -> None:
    body = {
        "metadata": {"name": "r", "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Evicting", "message": "2 instances left"},
    }
    assert contract.repair_view(body) == contract.RepairView(
        "r", Phase.EVICTING, "2 instances left", True
    )
    assert (
        contract.repair_view({"metadata": {"name": "r"}, "status": {"phase": "Bogus"}}).phase
        is None
    )


# --- the CRDs ---


def test_remediation_kinds_are_namespaced_and_shaped_as_the_checkers_expect() -> None:
    crds = crdgen.crds()
    kind = crds["pitstop.dev_noderepairremediations.yaml"]["spec"]
    template = crds["pitstop.dev_noderepairremediationtemplates.yaml"]["spec"]
    assert kind["scope"] == template["scope"] == "Namespaced"
    # NHC strips the "Template" suffix to find the kind it creates.
    assert template["names"]["kind"] == kind["names"]["kind"] + "Template"
    (version,) = kind["versions"]
    assert version["subresources"] == {"status": {}}
    (tversion,) = template["versions"]
    assert "subresources" not in tversion
    troot = tversion["schema"]["openAPIV3Schema"]
    assert set(troot["properties"]) == {"apiVersion", "kind", "metadata", "spec"}
    inner = troot["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    root = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    # the template's spec.template.spec is the kind's spec, less its immutability rule
    assert {
        k: v for k, v in root.items() if k not in ("x-kubernetes-validations", "description")
    } == {
        k: v
        for k, v in inner.items()
        if k not in ("x-kubernetes-validations", "description", "default")
    }
    assert any(r["rule"] == "self == oldSelf" for r in root["x-kubernetes-validations"])
    assert "x-kubernetes-validations" not in inner


def test_the_operator_service_account_is_refused_in_templates_too() -> None:
    """What a remediation may ask for is what a NodeRepair may: the operator's own
    ServiceAccount is refused at admission in the template and in the object."""
    job = {"template": {"spec": {"template": {"spec": {"serviceAccountName": "pitstop"}}}}}
    spec = {"repair": {"strategy": "Job", "job": job}}
    with pytest.raises(ValueError, match="operator's own ServiceAccount"):
        NodeRepairRemediationSpec.model_validate(spec)
    with pytest.raises(ValueError, match="operator's own ServiceAccount"):
        NodeRepairRemediationTemplateSpec.model_validate({"template": {"spec": spec}})


def _examples() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_the_shipped_examples_parse() -> None:
    kinds = sorted(d["kind"] for d in _examples())
    assert kinds == [
        "MachineHealthCheck",
        "Namespace",
        "NodeHealthCheck",
        "NodeRepairRemediationTemplate",
    ]
    for doc in _examples():
        if doc["kind"] == "NodeRepairRemediationTemplate":
            NodeRepairRemediationTemplateSpec.model_validate(doc["spec"])
        elif doc["kind"] == "Namespace":
            assert contract.namespace_allowed(doc["metadata"]["labels"])
        elif doc["kind"] == "NodeHealthCheck":
            ref = doc["spec"]["remediationTemplate"]
            assert ref["kind"] == "NodeRepairRemediationTemplate" and ref["namespace"]
        else:
            ref = doc["spec"]["remediation"]["templateRef"]
            assert ref["kind"] == "NodeRepairRemediationTemplate"


# --- the pool guards hold remediation repairs like any other ---


def _node(name: str, lock: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"pool": "a"},
            "annotations": {C.ANNOTATION_REPAIR: lock} if lock else {},
        },
        "spec": {"unschedulable": bool(lock)},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def _repair(name: str, phase: str | None, policy: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "phase": phase,
        "deleting": False,
        "created": "2026-01-01T00:00:00Z",
        "policy": policy,
        "dryRun": False,
    }


@pytest.mark.parametrize("first_by_policy", [True, False])
def test_admission_counts_repairs_whoever_made_them(first_by_policy: bool) -> None:
    """pool/daemon.py Admission asks every NodeRepair whose node is in a pool,
    made by a policy or not: a remediation's repair waits for a policy's, and the
    other way round, under maxConcurrentRepairs."""
    policy = {
        "nodeSelector": {"matchLabels": {"pool": "a"}},
        "maxConcurrentRepairs": 1,
        "minAvailable": 0,
        "paused": True,
    }
    nodes = {n: [_node(n, "first" if n == "n1" else None)] for n in ("n1", "n2", "n3")}
    repairs = {
        "n1": [_repair("first", "Evicting", "p" if first_by_policy else None)],
        "n2": [_repair("second", None, None if first_by_policy else "p")],
    }
    refusal = asyncio.run(
        fresh_admission().check(
            "second", "n2", "2026-01-01T00:00:01Z", nodes, repairs, {"p": [policy]}
        )
    )
    assert refusal is not None and refusal.startswith("MaxConcurrentRepairs"), refusal
    repairs["n1"] = [_repair("first", "Succeeded")]
    nodes["n1"] = [_node("n1")]
    admitted = asyncio.run(
        fresh_admission().check(
            "second", "n2", "2026-01-01T00:00:01Z", nodes, repairs, {"p": [policy]}
        )
    )
    assert admitted is None


def test_a_replace_step_makes_nhc_expect_the_node_to_go() -> None:
    # A NodeRepair whose ladder reached Replace records the Machine before deleting it:
    # NHC must then expect the node to be deleted, not to come back healthy.
    body = {
        "metadata": {"name": "r"},
        "status": {
            "phase": "Repairing",
            "repair": {"replace": {"machine": "capi/m-7", "machineUid": "u", "pool": "ms"}},
        },
    }
    replacing = contract.repair_view(body)
    assert replacing.replacing == "capi/m-7"
    new = contract.status(
        contract.mirrored(replacing), NodeRepairRemediationStatus(), T0, 1, "n", "r"
    )
    assert conditions(new)["PermanentNodeDeletionExpected"] == ("True", "NodeReplaced")
    deletion = next(c for c in new.conditions if c.type == "PermanentNodeDeletionExpected")
    assert "capi/m-7" in (deletion.message or "")
    kept = contract.repair_view({"metadata": {"name": "r"}, "status": {"phase": "Repairing"}})
    again = contract.status(contract.mirrored(kept), NodeRepairRemediationStatus(), T0, 1, "n", "r")
    assert conditions(again)["PermanentNodeDeletionExpected"] == ("False", "NodeKept")
