"""What a repair may make pitstop run or send (pitstop.repair.permits) and the schema
rules that refuse the rest at admission (docs/security.md)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pitstop import constants as C
from pitstop.models import NodeRepairSpec, RepairPolicySpec, WebhookRepair
from pitstop.repair import permits

NS = "pitstop-system"


def account(
    name: str = C.REPAIR_SERVICE_ACCOUNT,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}}}


def template(pod: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"metadata": meta, "spec": {"template": {"spec": pod}}}


PLAIN = {"containers": [{"name": "fix", "image": "fix:1"}]}
ALLOWED = account("tool", labels={C.LABEL_REPAIR_ALLOWED: "true"})
HOST = account("tool", labels={C.LABEL_REPAIR_ALLOWED: "true", C.LABEL_REPAIR_HOST_ACCESS: "true"})


def test_a_plain_job_runs_as_pitstop_repair() -> None:
    assert permits.service_account_of(PLAIN) == C.REPAIR_SERVICE_ACCOUNT
    assert permits.job_refusal(template(PLAIN), account(), NS) is None


def test_the_operators_own_account_is_never_granted() -> None:
    labelled = account(C.SERVICE_ACCOUNT, labels={C.LABEL_REPAIR_ALLOWED: "true"})
    for field in ("serviceAccountName", "serviceAccount"):
        why = permits.job_refusal(template({**PLAIN, field: C.SERVICE_ACCOUNT}), labelled, NS)
        assert why is not None and "operator's own ServiceAccount" in why, field


@pytest.mark.parametrize(
    ("sa", "found", "refused"),
    [
        ("tool", account("tool"), "is not allowed for repair Jobs"),
        ("tool", account("tool", labels={C.LABEL_REPAIR_ALLOWED: "yes"}), "not allowed"),
        ("tool", None, "pitstop-system/tool not found"),
        (C.REPAIR_SERVICE_ACCOUNT, None, "pitstop-system/pitstop-repair not found"),
        ("tool", ALLOWED, None),
    ],
)
def test_other_accounts_need_the_admins_label(
    sa: str, found: dict[str, Any] | None, refused: str | None
) -> None:
    why = permits.job_refusal(template({**PLAIN, "serviceAccountName": sa}), found, NS)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why


def test_two_different_account_fields_are_refused() -> None:
    pod = {**PLAIN, "serviceAccountName": "tool", "serviceAccount": "other"}
    why = permits.job_refusal(template(pod), ALLOWED, NS)
    assert why is not None and "differ" in why


def test_another_namespace_is_refused() -> None:
    why = permits.job_refusal(template(PLAIN, namespace="kube-system"), account(), NS)
    assert why is not None and "not in kube-system" in why
    assert permits.job_refusal(template(PLAIN, namespace=NS), account(), NS) is None


HOSTLY = [
    ({"hostNetwork": True}, "hostNetwork"),
    ({"hostPID": True}, "hostPID"),
    ({"hostIPC": True}, "hostIPC"),
    ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "hostPath volume root"),
    (
        {"containers": [{"name": "c", "securityContext": {"privileged": True}}]},
        "privileged container c",
    ),
    (
        {"initContainers": [{"name": "i", "securityContext": {"capabilities": {"add": ["ALL"]}}}]},
        "capabilities.add in container i",
    ),
    (
        {"containers": [{"name": "c", "securityContext": {"procMount": "Unmasked"}}]},
        "procMount Unmasked",
    ),
    ({"containers": [{"name": "c", "ports": [{"hostPort": 22}]}]}, "hostPort"),
]


@pytest.mark.parametrize(("pod", "named"), HOSTLY)
def test_host_access_needs_the_admins_label(pod: dict[str, Any], named: str) -> None:
    for sa in (account(), ALLOWED):
        why = permits.job_refusal(template({**PLAIN, **pod}), sa, NS)
        assert why is not None and named in why and C.LABEL_REPAIR_HOST_ACCESS in why
    granted = {**PLAIN, **pod, "serviceAccountName": "tool"}
    assert permits.job_refusal(template(granted), HOST, NS) is None


def test_the_same_without_host_access_is_plain() -> None:
    pod = {
        "hostNetwork": False,
        "containers": [{"name": "c", "securityContext": {"privileged": False}, "ports": [{}]}],
    }
    assert permits.host_access(pod) == []


SECRETS = [
    {"volumes": [{"name": "v", "secret": {"secretName": "bmc"}}]},
    {"volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "bmc"}}]}}]},
    {
        "containers": [
            {"name": "c", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "bmc"}}}]}
        ]
    },
    {"ephemeralContainers": [{"name": "c", "envFrom": [{"secretRef": {"name": "bmc"}}]}]},
]


@pytest.mark.parametrize("pod", SECRETS)
def test_secrets_need_the_admins_list(pod: dict[str, Any]) -> None:
    assert permits.secrets_named(pod) == {"bmc"}
    why = permits.job_refusal(template({**PLAIN, **pod}), account(), NS)
    assert why is not None and "Secrets bmc are not allowed" in why
    listed = account(annotations={C.ANNOTATION_REPAIR_SECRETS: "other, bmc"})
    assert permits.job_refusal(template({**PLAIN, **pod}), listed, NS) is None


def test_a_projected_token_of_the_pods_own_account_is_plain() -> None:
    token = {"serviceAccountToken": {"path": "t", "audience": "bmc"}}
    pod = {**PLAIN, "volumes": [{"name": "t", "projected": {"sources": [token]}}]}
    assert permits.job_refusal(template(pod), account(), NS) is None


def test_volume_types_that_carry_their_own_credentials_are_refused() -> None:
    pod = {**PLAIN, "volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]}
    why = permits.job_refusal(template(pod), HOST, NS)
    assert why is not None and "n (nfs)" in why


def secret(labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "svc", "labels": labels, "annotations": annotations or {}}}


def test_only_marked_secrets_go_to_webhooks() -> None:
    url = "https://repair.example/v1"
    why = permits.webhook_refusal(secret({}), url, NS)
    assert why is not None and "pitstop-system/svc is not marked" in why
    assert permits.webhook_refusal(secret({C.LABEL_WEBHOOK_SECRET: "true"}), url, NS) is None


def test_a_secrets_url_prefixes_bind_it() -> None:
    bound = secret(
        {C.LABEL_WEBHOOK_SECRET: "true"},
        {C.ANNOTATION_WEBHOOK_URLS: "https://a.example/, https://b.example/v1/"},
    )
    assert permits.webhook_refusal(bound, "https://b.example/v1/nodes", NS) is None
    why = permits.webhook_refusal(bound, "https://a.example.evil/", NS)
    assert why is not None and "only to URLs starting with" in why


def test_the_token_is_redacted() -> None:
    assert permits.redact("echo: Bearer s3cr3t!", "s3cr3t") == "echo: Bearer [redacted]!"
    assert permits.redact("nothing", None) == "nothing"


# --- the schema (the same rules are CEL in crds/, checked by tests/e2e/test_security.py) ---


def job_spec(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodeName": "n",
        "repair": {"strategy": "Job", "job": {"template": {"spec": {"template": {"spec": pod}}}}},
    }


@pytest.mark.parametrize("field", ["serviceAccountName", "serviceAccount"])
def test_the_schema_refuses_the_operators_account(field: str) -> None:
    with pytest.raises(ValidationError, match="operator's own ServiceAccount"):
        NodeRepairSpec.model_validate(job_spec({field: C.SERVICE_ACCOUNT}))
    with pytest.raises(ValidationError, match="operator's own ServiceAccount"):
        RepairPolicySpec.model_validate(
            {"nodeSelector": {}, "repairTemplate": {"spec": job_spec({field: "pitstop"})}}
        )
    NodeRepairSpec.model_validate(job_spec({field: "tool"}))


def test_http_needs_the_opt_in() -> None:
    with pytest.raises(ValidationError, match="allowInsecureHTTP"):
        WebhookRepair.model_validate({"url": "http://repair.svc/x"})
    hook = WebhookRepair.model_validate({"url": "http://repair.svc/x", "allowInsecureHTTP": True})
    assert hook.wire()["allowInsecureHTTP"] is True
    WebhookRepair.model_validate({"url": "HTTPS://repair.svc/x"})


PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_ca_bundle_is_base64_pem() -> None:
    url = "https://repair.svc/x"
    WebhookRepair.model_validate({"url": url, "caBundle": base64.b64encode(PEM).decode()})
    with pytest.raises(ValidationError, match="base64"):
        WebhookRepair.model_validate({"url": url, "caBundle": "not base64!"})
    with pytest.raises(ValidationError, match="PEM"):
        WebhookRepair.model_validate({"url": url, "caBundle": base64.b64encode(b"x").decode()})


# --- the examples in manifests/ work under these rules ---

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


GRANTS = {
    (d["kind"], d["metadata"]["name"]): d for d in _docs(EXAMPLES / "admin/repair-grants.yaml")
}
SHIPPED = {
    (d["kind"], d["metadata"]["name"]): d
    for d in _docs(
        Path(__file__).resolve().parents[2] / "manifests/rbac/repair-serviceaccount.yaml"
    )
}


def _repairs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in _docs(path):
            if doc["kind"] == "NodeRepair":
                found.append((path.name, doc["spec"]["repair"]))
            if doc["kind"] == "RepairPolicy":
                repair = doc["spec"].get("repairTemplate", {}).get("spec", {}).get("repair")
                if repair:
                    found.append((path.name, repair))
    return found


def test_example_jobs_and_webhooks_are_allowed_by_the_example_grants() -> None:
    checked = set()
    for name, repair in _repairs():
        if repair.get("strategy") == "Job":
            pod = repair["job"]["template"]["spec"]["template"]["spec"]
            sa = permits.service_account_of(pod)
            found = SHIPPED.get(("ServiceAccount", sa)) or GRANTS.get(("ServiceAccount", sa))
            assert permits.job_refusal(repair["job"]["template"], found, NS) is None, name
            checked.add((name, sa))
        if repair.get("strategy") == "Webhook" and repair["webhook"].get("secretRef"):
            found = GRANTS[("Secret", repair["webhook"]["secretRef"]["name"])]
            assert permits.webhook_refusal(found, repair["webhook"]["url"], NS) is None, name
            checked.add((name, "webhook"))
    assert checked == {
        ("noderepair-job.yaml", C.REPAIR_SERVICE_ACCOUNT),
        ("repairpolicy-node-problem-detector.yaml", "pitstop-node-reboot"),
        ("noderepair-webhook.yaml", "webhook"),
    }


def test_the_reboot_example_needs_its_grants() -> None:
    (repair,) = [r for n, r in _repairs() if n == "repairpolicy-node-problem-detector.yaml"]
    granted = GRANTS[("ServiceAccount", "pitstop-node-reboot")]
    for label in (C.LABEL_REPAIR_ALLOWED, C.LABEL_REPAIR_HOST_ACCESS):
        labels = {k: v for k, v in granted["metadata"]["labels"].items() if k != label}
        without = {**granted, "metadata": {**granted["metadata"], "labels": labels}}
        assert permits.job_refusal(repair["job"]["template"], without, NS) is not None, label
