"""The Replace and External steps' pure rules (pitstop.repair.remediators), their
grants (pitstop.repair.permits) and the runOnNode Job (pitstop.repair.hooks.job_body)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from pitstop import constants as C
from pitstop.cluster.kube import ApiError
from pitstop.models import NodeRepairSpec, RemediationTemplateRef, ReplaceStatus
from pitstop.repair import hooks, permits, remediator_calls, remediators

T0 = datetime(2026, 12, 7, 1, 0, 0, 500000, tzinfo=UTC)
REF = RemediationTemplateRef(
    api_version="self-node-remediation.medik8s.io/v1alpha1",
    kind="SelfNodeRemediationTemplate",
    namespace="snr",
    name="auto",
)
REPAIR = {"metadata": {"name": "r1", "uid": "u-r1"}}


def machine(
    name: str, uid: str, created: str, node: str | None = None, **labels: str
) -> dict[str, Any]:
    m: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "labels": labels,
            "creationTimestamp": created,
        }
    }
    if node:
        m["status"] = {"nodeRef": {"kind": "Node", "name": node}}
    return m


def test_a_node_names_its_machine_by_cluster_api_annotations() -> None:
    node = {
        "metadata": {
            "annotations": {C.ANNOTATION_CAPI_MACHINE: "m1", C.ANNOTATION_CAPI_NAMESPACE: "capi"}
        }
    }
    assert remediators.machine_of(node) == ("capi", "m1")
    assert remediators.machine_of({"metadata": {"annotations": {}}}) is None
    assert remediators.machine_of({"metadata": {}}) is None


def test_the_pool_is_the_machineset_else_the_cluster() -> None:
    both = machine("m", "u", "", **{C.LABEL_CAPI_SET: "set-a", C.LABEL_CAPI_CLUSTER: "c"})
    assert remediators.pool_of(both) == f"{C.LABEL_CAPI_SET}=set-a"
    assert remediators.pool_of(machine("m", "u", "", **{C.LABEL_CAPI_CLUSTER: "c"})) == (
        f"{C.LABEL_CAPI_CLUSTER}=c"
    )
    assert remediators.pool_of(machine("m", "u", "")) is None


def test_the_replacement_is_a_new_machine_of_the_pool_with_a_ready_node() -> None:
    old = machine("old", "u-old", "2026-12-07T00:00:00Z", "n-old")
    before = machine("peer", "u-peer", "2026-12-07T00:30:00Z", "n-peer")
    unready = machine("new1", "u-1", "2026-12-07T01:00:00Z", "n-new1")
    fresh = machine("new2", "u-2", "2026-12-07T01:00:00Z", "n-new2")  # same second as T0
    no_node = machine("new3", "u-3", "2026-12-07T01:00:05Z")
    ready = {"n-old", "n-peer", "n-new2"}
    assert remediators.replacement([old, before, unready, no_node], "u-old", T0, ready) is None
    assert remediators.replacement([old, before, unready, fresh], "u-old", T0, ready) == "n-new2"


def test_the_remediation_cr_follows_the_template_and_names_the_node() -> None:
    template = {"spec": {"template": {"spec": {"remediationStrategy": "Automatic"}}}}
    body = remediators.remediation_body(template, REF, "node-7", REPAIR, "2/1", "r1")
    assert body["kind"] == "SelfNodeRemediation" and body["apiVersion"] == REF.api_version
    meta = body["metadata"]
    assert (meta["name"], meta["namespace"]) == ("node-7", "snr")
    assert meta["annotations"][C.ANNOTATION_NHC_NODE_NAME] == "node-7"
    assert remediators.made_by(body) == ("r1", "2/1")
    assert meta["ownerReferences"][0]["uid"] == "u-r1"
    assert body["spec"] == {"remediationStrategy": "Automatic"}


def cr(*conds: tuple[str, str]) -> dict[str, Any]:
    return {
        "kind": "SelfNodeRemediation",
        "metadata": {"name": "node-7"},
        "status": {"conditions": [{"type": t, "status": s} for t, s in conds]},
    }


def test_the_outcome_is_read_as_node_healthcheck_reads_it() -> None:
    assert remediators.outcome(cr())[0] == "Running"
    assert remediators.outcome(cr(("Processing", "True"), ("Succeeded", "Unknown")))[0] == "Running"
    assert remediators.outcome(cr(("Processing", "False"), ("Succeeded", "True")))[0] == "Succeeded"
    assert remediators.outcome(cr(("Processing", "True"), ("Succeeded", "False")))[0] == "Running"
    assert remediators.outcome(cr(("Processing", "False"), ("Succeeded", "False")))[0] == "Failed"


def test_discovery_names_the_resource_of_a_kind() -> None:
    discovery = {
        "resources": [
            {"name": "selfnoderemediations", "kind": "SelfNodeRemediation"},
            {"name": "selfnoderemediations/status", "kind": "SelfNodeRemediation"},
        ]
    }
    assert remediators.resource_for(discovery, "SelfNodeRemediation") == "selfnoderemediations"
    assert remediators.resource_for(discovery, "Other") is None


def test_machines_and_templates_need_the_admins_label() -> None:
    m = machine("m", "u", "")
    assert "pitstop.dev/replace-allowed=true" in (permits.machine_refusal(m) or "")
    m["metadata"]["labels"][C.LABEL_REPLACE_ALLOWED] = "true"
    assert permits.machine_refusal(m) is None
    t: dict[str, Any] = {
        "kind": "SelfNodeRemediationTemplate",
        "metadata": {"name": "t", "labels": {}},
    }
    assert "pitstop.dev/remediator-allowed=true" in (permits.template_refusal(t) or "")
    t["metadata"]["labels"][C.LABEL_REMEDIATOR_ALLOWED] = "true"
    assert permits.template_refusal(t) is None


def test_a_run_on_node_job_is_pinned_to_the_node_and_told_its_name() -> None:
    pod = {
        "containers": [{"name": "c", "image": "x"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
                        {"matchExpressions": [{"key": "b", "operator": "Exists"}]},
                    ]
                }
            }
        },
    }
    job = {"runOnNode": True, "template": {"spec": {"template": {"spec": pod}}}}
    spec = NodeRepairSpec.model_validate(
        {"nodeName": "node-7", "repair": {"steps": [{"strategy": "Job", "job": job}]}}
    )
    body = hooks.job_body({"metadata": {"name": "r1", "uid": "u"}}, spec, "pitstop-r1-1")  # type: ignore[arg-type]
    got = body["spec"]["template"]["spec"]
    terms = got["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    pin = {"key": "metadata.name", "operator": "In", "values": ["node-7"]}
    # Terms are ORed: every one of them must name the node.
    assert [t["matchFields"] for t in terms["nodeSelectorTerms"]] == [[pin], [pin]]
    keys = {t["key"] for t in got["tolerations"]}
    assert {C.TAINT_MAINTENANCE, "node.kubernetes.io/unschedulable"} <= keys
    assert "node.kubernetes.io/not-ready" in keys
    env = {e["name"]: e["value"] for e in got["containers"][0]["env"]}
    assert env[C.ENV_NODE_NAME] == "node-7"
    plain = NodeRepairSpec.model_validate(
        {"nodeName": "node-7", "repair": {"strategy": "Job", "job": {**job, "runOnNode": False}}}
    )
    body = hooks.job_body({"metadata": {"name": "r1", "uid": "u"}}, plain, "pitstop-r1-1")  # type: ignore[arg-type]
    assert "matchFields" not in str(body), "only runOnNode pins the Job"


# --- the calls, against a fake API that answers GETs by path ---


class FakeKube:
    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.sent: list[tuple[str, str, Any]] = []

    async def request(
        self, method: str, path: str, body: Any = None, params: Any = None
    ) -> dict[str, Any]:
        self.sent.append((method, path, body))
        if method == "GET":
            if path not in self.objects:
                raise ApiError(404, "not found")
            return self.objects[path]
        return {}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


NODE_PATH = "/api/v1/nodes/n1"
CAPI_NODE = {
    "metadata": {
        "name": "n1",
        "annotations": {C.ANNOTATION_CAPI_MACHINE: "m1", C.ANNOTATION_CAPI_NAMESPACE: "ns"},
    }
}


def test_find_machine_says_why_a_node_cannot_be_replaced() -> None:
    plain = FakeKube({NODE_PATH: {"metadata": {"name": "n1"}}})
    state, why, _ = run(remediator_calls.find_machine(plain, "n1"))  # type: ignore[arg-type]
    assert state == "Skipped" and "no cluster.x-k8s.io/machine annotation" in why
    no_crd = FakeKube({NODE_PATH: CAPI_NODE})
    state, why, _ = run(remediator_calls.find_machine(no_crd, "n1"))  # type: ignore[arg-type]
    assert state == "Skipped" and "not installed" in why
    m = machine("m1", "u1", "")
    objects = {NODE_PATH: CAPI_NODE, remediator_calls.MACHINES: {}}
    objects[remediator_calls.machine_path("ns", "m1")] = m
    state, why, _ = run(remediator_calls.find_machine(FakeKube(objects), "n1"))  # type: ignore[arg-type]
    assert state == "Skipped" and why.startswith(f"{C.REASON_REPLACE_NOT_ALLOWED}: ")
    m["metadata"]["labels"][C.LABEL_REPLACE_ALLOWED] = "true"
    state, why, found = run(remediator_calls.find_machine(FakeKube(objects), "n1"))  # type: ignore[arg-type]
    assert (state, found) == ("Running", m)


def test_a_machine_is_deleted_only_while_it_is_the_recorded_one() -> None:
    record = ReplaceStatus(machine="ns/m1", machine_uid="u1", pool="set=a")
    path = remediator_calls.machine_path("ns", "m1")
    kube = FakeKube({path: machine("m1", "u1", "")})
    run(remediator_calls.delete_machine(kube, record))  # type: ignore[arg-type]
    deletes = [(p, b) for m, p, b in kube.sent if m == "DELETE"]
    assert deletes == [(path, {"preconditions": {"uid": "u1"}, "propagationPolicy": "Background"})]
    other = FakeKube({path: machine("m1", "u-new", "")})  # a new Machine of the same name
    run(remediator_calls.delete_machine(other, record))  # type: ignore[arg-type]
    assert [m for m, _, _ in other.sent if m == "DELETE"] == []


def test_every_step_of_a_ladder_is_checked_before_the_node_is_touched() -> None:
    template = {"spec": {"template": {"spec": {"containers": [{"name": "c"}], "hostPID": True}}}}
    spec = NodeRepairSpec.model_validate(
        {
            "nodeName": "n1",
            "repair": {
                "steps": [
                    {"strategy": "Manual"},
                    {"strategy": "Job", "job": {"template": template}},
                ]
            },
        }
    )
    sa = f"/api/v1/namespaces/{C.OPERATOR_NAMESPACE}/serviceaccounts/{C.REPAIR_SERVICE_ACCOUNT}"
    kube = FakeKube({sa: {"metadata": {"name": C.REPAIR_SERVICE_ACCOUNT}}})
    found = run(hooks.refusal(kube, spec))  # type: ignore[arg-type]
    assert found is not None and found[0] == C.REASON_REPAIR_JOB_NOT_ALLOWED
    assert found[1].startswith("step 2 of 2: Job: ") and "hostPID" in found[1]
