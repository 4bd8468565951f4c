"""The Replace and External steps' rules, pure: which Machine backs a node, which
Machine replaced it, the remediation CR an External step creates from a
remediator's template (NodeHealthCheck's contract), and what its conditions say.
pitstop.repair.remediator_calls makes the calls."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pitstop import constants
from pitstop.models import RemediationTemplateRef

C = constants
TEMPLATE_SUFFIX = "Template"


def machine_of(node: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the Cluster API Machine behind `node`, from the
    annotations Cluster API sets on it; None for a node of no Machine."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    name = annotations.get(C.ANNOTATION_CAPI_MACHINE)
    if not name:
        return None
    return annotations.get(C.ANNOTATION_CAPI_NAMESPACE) or "default", name


def pool_of(machine: Mapping[str, Any]) -> str | None:
    """The label (key=value) the Machine's replacement carries: its MachineSet's,
    else its Cluster's."""
    labels = (machine.get("metadata") or {}).get("labels") or {}
    for key in (C.LABEL_CAPI_SET, C.LABEL_CAPI_CLUSTER):
        if labels.get(key):
            return f"{key}={labels[key]}"
    return None


def _created(obj: Mapping[str, Any]) -> datetime | None:
    raw = (obj.get("metadata") or {}).get("creationTimestamp")
    if not raw:
        return None
    return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def replacement(
    machines: Iterable[Mapping[str, Any]],
    old_uid: str,
    since: datetime,
    ready: set[str],
) -> str | None:
    """The node of a Machine of the pool created since the old one was deleted
    (`since`, to the second: creation times have no more) whose node is Ready."""
    floor = since.replace(microsecond=0)
    for m in machines:
        meta = m.get("metadata") or {}
        created = _created(m)
        if meta.get("uid") == old_uid or created is None or created < floor:
            continue
        node = ((m.get("status") or {}).get("nodeRef") or {}).get("name")
        if node and node in ready:
            return str(node)
    return None


def remediation_kind(ref: RemediationTemplateRef) -> str:
    """The kind a template yields: SelfNodeRemediationTemplate → SelfNodeRemediation."""
    return ref.kind.removesuffix(TEMPLATE_SUFFIX)


def resource_for(discovery: Mapping[str, Any], kind: str) -> str | None:
    """The resource (plural) of `kind` in an API group version's discovery document."""
    for r in discovery.get("resources") or []:
        if r.get("kind") == kind and "/" not in str(r.get("name", "")):
            return str(r["name"])
    return None


def remediation_body(
    template: Mapping[str, Any],
    ref: RemediationTemplateRef,
    node: str,
    repair: Mapping[str, Any],
    key: str,
    repair_label: str,
) -> dict[str, Any]:
    """The remediation CR: named after the node (the name remediators read the node
    from, and the annotation remediation.medik8s.io/node-name), in the template's
    namespace, its spec the template's spec.template.spec, owned by the NodeRepair
    (the garbage collector removes it with the repair), marked with the repair and
    the step/attempt `key` that made it."""
    inner = ((template.get("spec") or {}).get("template") or {}).get("spec") or {}
    meta = repair.get("metadata") or {}
    return {
        "apiVersion": ref.api_version,
        "kind": remediation_kind(ref),
        "metadata": {
            "name": node,
            "namespace": ref.namespace,
            "labels": {C.ANNOTATION_REPAIR: repair_label},
            "annotations": {
                C.ANNOTATION_NHC_NODE_NAME: node,
                C.ANNOTATION_REPAIR: meta.get("name"),
                C.ANNOTATION_ATTEMPT: key,
            },
            "ownerReferences": [
                {
                    "apiVersion": C.API_VERSION,
                    "kind": "NodeRepair",
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                }
            ],
        },
        "spec": dict(inner),
    }


def made_by(cr: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(repair, step/attempt key) that made a remediation CR (None: not pitstop)."""
    annotations = (cr.get("metadata") or {}).get("annotations") or {}
    return annotations.get(C.ANNOTATION_REPAIR), annotations.get(C.ANNOTATION_ATTEMPT)


def outcome(cr: Mapping[str, Any]) -> tuple[str, str]:
    """(Running | Succeeded | Failed, message) from the CR's conditions as
    NodeHealthCheck reads them: Succeeded=True is done; Succeeded=False once the
    remediator stopped Processing is a failure; anything else still runs."""
    conds = {
        c.get("type"): c for c in (cr.get("status") or {}).get("conditions") or [] if c.get("type")
    }
    kind, name = cr.get("kind"), (cr.get("metadata") or {}).get("name")
    succeeded = conds.get("Succeeded") or {}
    processing = conds.get("Processing") or {}
    detail = succeeded.get("message") or succeeded.get("reason") or ""
    if succeeded.get("status") == "True":
        return "Succeeded", f"{kind} {name} succeeded" + (f": {detail}" if detail else "")
    if succeeded.get("status") == "False" and processing.get("status") != "True":
        return "Failed", f"{kind} {name} failed" + (f": {detail}" if detail else "")
    doing = processing.get("message") or processing.get("reason") or "running"
    return "Running", f"{kind} {name}: {doing}"
