"""Helpers for the external-remediation e2e tests: pitstop's template and
remediation objects, and the steps a health checker takes as its documentation
states them (medik8s node-healthcheck-operator docs/configuration.md "Remediation
Resources"; Cluster API's MachineHealthCheck external remediation)."""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.exceptions import ApiException

from tests.e2e.kube import Cluster, wait_until

GROUP, VERSION = "pitstop.dev", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND, TEMPLATE_KIND = "NodeRepairRemediation", "NodeRepairRemediationTemplate"
PLURAL, TEMPLATE_PLURAL = "noderepairremediations", "noderepairremediationtemplates"
ALLOWED = "pitstop.dev/remediation-allowed"
UID_LABEL = "pitstop.dev/remediation-uid"
NHC_GROUP, NHC_VERSION = "remediation.medik8s.io", "v1alpha1"
NODE_NAME = "remediation.medik8s.io/node-name"
TEMPLATE_NAME = "remediation.medik8s.io/template-name"
TIMED_OUT = "remediation.medik8s.io/nhc-timed-out"

NHC_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"nodehealthchecks.{NHC_GROUP}"},
    "spec": {
        "group": NHC_GROUP,
        "names": {
            "kind": "NodeHealthCheck",
            "plural": "nodehealthchecks",
            "singular": "nodehealthcheck",
        },
        "scope": "Cluster",
        "versions": [
            {
                "name": NHC_VERSION,
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}
"""A stand-in for NodeHealthCheck's CRD (its operator is not served by the module
proxy here): enough for a NodeHealthCheck object to own remediation objects, as NHC's
owner reference does."""


def allow(cluster: Cluster, namespace: str) -> None:
    """What the platform admin does: lets the namespace's remediation objects repair."""
    cluster.core.patch_namespace(namespace, {"metadata": {"labels": {ALLOWED: "true"}}})


def template(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": API_VERSION,
        "kind": TEMPLATE_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": {"spec": spec}},
    }
    made: dict[str, Any] = cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, TEMPLATE_PLURAL, body
    )
    return made


def nodehealthcheck(
    cluster: Cluster, name: str, selector: dict[str, str], tmpl: dict[str, Any]
) -> dict[str, Any]:
    """A NodeHealthCheck as docs/configuration.md shows it, referencing pitstop's template."""
    cluster.kubectl("apply", "--server-side", "-f", "-", input=_json(NHC_CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/nodehealthchecks.{NHC_GROUP}"
    )
    body = {
        "apiVersion": f"{NHC_GROUP}/{NHC_VERSION}",
        "kind": "NodeHealthCheck",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": selector},
            "minHealthy": "51%",
            "remediationTemplate": {
                "apiVersion": API_VERSION,
                "kind": TEMPLATE_KIND,
                "namespace": tmpl["metadata"]["namespace"],
                "name": tmpl["metadata"]["name"],
            },
        },
    }
    made: dict[str, Any] = cluster.custom.create_cluster_custom_object(
        NHC_GROUP, NHC_VERSION, "nodehealthchecks", body
    )
    return made


def _json(body: dict[str, Any]) -> str:
    import json

    return json.dumps(body)


def create_as_nhc(
    cluster: Cluster, nhc: dict[str, Any], tmpl: dict[str, Any], node: str
) -> dict[str, Any]:
    """NHC's steps for an unhealthy node (docs/configuration.md "Remediation
    Resources"): same apiVersion, the kind without "Template", the template's
    namespace, the node's name, spec copied from spec.template.spec, an owner
    reference to the NodeHealthCheck, and its node-name and template-name annotations."""
    body = {
        "apiVersion": tmpl["apiVersion"],
        "kind": tmpl["kind"].removesuffix("Template"),
        "metadata": {
            "name": node,
            "namespace": tmpl["metadata"]["namespace"],
            "annotations": {NODE_NAME: node, TEMPLATE_NAME: tmpl["metadata"]["name"]},
            "ownerReferences": [
                {
                    "apiVersion": nhc["apiVersion"],
                    "kind": nhc["kind"],
                    "name": nhc["metadata"]["name"],
                    "uid": nhc["metadata"]["uid"],
                }
            ],
        },
        "spec": copy.deepcopy(tmpl["spec"]["template"]["spec"]),
    }
    made: dict[str, Any] = cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body
    )
    return made


def create_as_mhc(
    cluster: Cluster, machine: dict[str, Any], tmpl: dict[str, Any]
) -> dict[str, Any]:
    """MachineHealthCheck's steps for an unhealthy Machine (Cluster API
    machinehealthcheck_controller.go, external remediation): the template's
    spec.template cloned into the kind without "Template", in the Machine's
    namespace, named after the Machine, owned by it, labelled with its cluster."""
    meta = machine["metadata"]
    body = {
        "apiVersion": tmpl["apiVersion"],
        "kind": tmpl["kind"].removesuffix("Template"),
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {"cluster.x-k8s.io/cluster-name": machine["spec"]["clusterName"]},
            "annotations": {
                "cluster.x-k8s.io/cloned-from-name": tmpl["metadata"]["name"],
                "cluster.x-k8s.io/cloned-from-groupkind": f"{TEMPLATE_KIND}.{GROUP}",
            },
            "ownerReferences": [
                {
                    "apiVersion": machine["apiVersion"],
                    "kind": "Machine",
                    "name": meta["name"],
                    "uid": meta["uid"],
                }
            ],
        },
        "spec": copy.deepcopy(tmpl["spec"]["template"]["spec"]),
    }
    made: dict[str, Any] = cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, meta["namespace"], PLURAL, body
    )
    return made


def get(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return found


def conditions(obj: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    """type → (status, reason) of a remediation object's conditions."""
    found = ((obj or {}).get("status") or {}).get("conditions") or []
    return {c["type"]: (c["status"], c.get("reason") or "") for c in found}


def wait_conditions(
    cluster: Cluster, namespace: str, name: str, timeout: float = 60, **want: str
) -> dict[str, Any]:
    """Waits until the object's conditions have the given statuses (e.g.
    Succeeded="True"); returns the object."""

    def probe() -> dict[str, Any] | None:
        obj = get(cluster, namespace, name)
        seen = conditions(obj)
        ok = all(seen.get(t, ("", ""))[0] == s for t, s in want.items())
        return obj if ok else None

    found: dict[str, Any] = wait_until(f"{namespace}/{name} with {want}", probe, timeout=timeout)
    return found


def delete(cluster: Cluster, namespace: str, name: str) -> None:
    try:
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status != 404:
            raise


def node_repairs_of(cluster: Cluster, uid: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cluster.custom.list_cluster_custom_object(
        GROUP, VERSION, "noderepairs", label_selector=f"{UID_LABEL}={uid}"
    )["items"]
    return found


MACHINE_VERSIONS = ("v1beta1", "v1beta2")
"""What the tests use of Cluster API's Machine: pitstop's Replace step reads v1beta1,
Machine-owned remediation objects (MachineHealthCheck) name v1beta2."""


def _machine_crd() -> dict[str, Any]:
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "machines.cluster.x-k8s.io"},
        "spec": {
            "group": "cluster.x-k8s.io",
            "names": {"kind": "Machine", "plural": "machines", "singular": "machine"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": version == "v1beta2",
                    "subresources": {"status": {}},
                    "schema": schema,
                }
                for version in MACHINE_VERSIONS
            ],
        },
    }


def ensure_machine_crd(cluster: Cluster) -> None:
    """A stand-in for Cluster API's Machine CRD where no CRD serves both versions the
    tests use (Cluster API's own serves both, and is kept). One for every module: a
    module that installed a narrower one left the next without its version."""
    found = cluster.kubectl(
        "get", "crd", "machines.cluster.x-k8s.io", "-o", "jsonpath={.spec.versions[*].name}",
        check=False,
    )  # fmt: skip
    if found.returncode == 0 and set(MACHINE_VERSIONS) <= set(found.stdout.split()):
        return
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=_json(_machine_crd())
    )
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/machines.cluster.x-k8s.io"
    )
