"""The Replace and External steps' calls (their rules are pitstop.repair.remediators'
and pitstop.repair.permits'). Every answer that is not a transient error becomes a
StepState with a clear message, never an exception that would crash-loop the repair."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pitstop import constants
from pitstop.cluster.kube import ApiError, Kube
from pitstop.models import RemediationRef, RemediationTemplateRef, ReplaceStatus
from pitstop.repair import permits, remediators
from pitstop.repair.flow import StepState
from pitstop.repair.hooks import read_optional

C = constants
MACHINES = f"/apis/{C.CAPI_GROUP}/{C.CAPI_VERSION}"


def machine_path(namespace: str, name: str = "") -> str:
    tail = f"/{name}" if name else ""
    return f"{MACHINES}/namespaces/{namespace}/machines{tail}"


async def find_machine(kube: Kube, node: str) -> tuple[str, str, dict[str, Any] | None]:
    """(state, message, machine): the Machine a Replace step may delete ("Running"),
    or why there is none ("Skipped": not a Cluster API node, no Machine CRD, no
    grant; the message says which)."""
    body = await read_optional(kube, f"/api/v1/nodes/{node}")
    found = remediators.machine_of(body or {})
    if found is None:
        return (
            "Skipped",
            f"node {node} has no {C.ANNOTATION_CAPI_MACHINE} annotation: it is no Cluster API node",
            None,
        )
    namespace, name = found
    if await read_optional(kube, MACHINES) is None:
        return (
            "Skipped",
            f"Cluster API Machines ({C.CAPI_GROUP}/{C.CAPI_VERSION}) not installed",
            None,
        )
    machine = await read_optional(kube, machine_path(namespace, name))
    if machine is None:
        return "Skipped", f"Machine {namespace}/{name} of node {node} not found", None
    why = permits.machine_refusal(machine)
    if why is not None:
        return "Skipped", f"{C.REASON_REPLACE_NOT_ALLOWED}: {why}", None
    return "Running", "", machine


async def delete_machine(kube: Kube, record: ReplaceStatus) -> None:
    """Deletes the recorded Machine, and only it (a uid precondition): repeated after
    a restart, it deletes nothing more."""
    namespace, name = record.machine.split("/", 1)
    try:
        machine = await read_optional(kube, machine_path(namespace, name))
        meta = (machine or {}).get("metadata") or {}
        if (
            machine is None
            or meta.get("uid") != record.machine_uid
            or meta.get("deletionTimestamp")
        ):
            return
        await kube.request(
            "DELETE",
            machine_path(namespace, name),
            {"preconditions": {"uid": record.machine_uid}, "propagationPolicy": "Background"},
        )
    except ApiError as e:
        if e.status not in (404, 409):
            raise


async def find_replacement(
    kube: Kube, record: ReplaceStatus, since: datetime, ready: set[str]
) -> str | None:
    """The new Ready node of the deleted Machine's pool, if there is one yet."""
    namespace = record.machine.split("/", 1)[0]
    listed = await kube.request(
        "GET", machine_path(namespace), params={"labelSelector": record.pool}
    )
    return remediators.replacement(listed.get("items") or [], record.machine_uid, since, ready)


async def resource(kube: Kube, ref: RemediationTemplateRef) -> str | None:
    """The resource of the template's remediation kind; None where it is not installed."""
    discovery = await read_optional(kube, f"/apis/{ref.api_version}")
    if discovery is None:
        return None
    return remediators.resource_for(discovery, remediators.remediation_kind(ref))


def cr_path(ref: RemediationRef) -> str:
    return f"/apis/{ref.api_version}/namespaces/{ref.namespace}/{ref.resource}/{ref.name}"


async def template_resource(kube: Kube, ref: RemediationTemplateRef) -> str | None:
    discovery = await read_optional(kube, f"/apis/{ref.api_version}")
    return None if discovery is None else remediators.resource_for(discovery, ref.kind)


async def create_remediation(
    kube: Kube,
    ref: RemediationTemplateRef,
    target: RemediationRef,
    node: str,
    repair: Mapping[str, Any],
    key: str,
    repair_label: str,
) -> str | None:
    """Creates the remediation CR from its template; None once created, "" when one
    of its name exists already (whose it is, the next read tells), else the reason
    it may not be ("Skipped" material)."""
    plural = await template_resource(kube, ref)
    if plural is None:
        return f"{ref.kind} is not installed ({ref.api_version})"
    path = f"/apis/{ref.api_version}/namespaces/{ref.namespace}/{plural}/{ref.name}"
    template = await read_optional(kube, path)
    if template is None:
        return f"{ref.kind} {ref.namespace}/{ref.name} not found"
    why = permits.template_refusal(template)
    if why is not None:
        return f"{C.REASON_EXTERNAL_NOT_ALLOWED}: {why}"
    body = remediators.remediation_body(template, ref, node, repair, key, repair_label)
    try:
        await kube.request(
            "POST",
            f"/apis/{target.api_version}/namespaces/{target.namespace}/{target.resource}",
            body,
        )
    except ApiError as e:
        if e.status == 409:
            return ""
        if e.status in (400, 422):
            return f"cannot create {target.kind} {target.namespace}/{target.name}: {e.message}"
        raise
    return None


async def observe_remediation(
    kube: Kube, target: RemediationRef, name: str, key: str, created: bool
) -> tuple[StepState | None, dict[str, Any] | None]:
    """(what the CR says, the CR): None as state when it must be created.
    `created`: this attempt's CR was seen before, so its absence means the
    remediator (or someone) deleted it: the attempt is over."""
    cr = await read_optional(kube, cr_path(target))
    if cr is None:
        if created:
            return StepState(0, 0, "Succeeded", f"{target.kind} {target.name} was deleted"), None
        return None, None
    repair, made = remediators.made_by(cr)
    if repair == name and made == key:
        state, message = remediators.outcome(cr)
        return StepState(0, 0, state, message), cr
    if repair == name:  # a previous attempt's: it goes before this one's is created
        if not (cr.get("metadata") or {}).get("deletionTimestamp"):
            await delete_remediation(kube, target)
        return StepState(0, 0, "Running", f"waiting for the previous {target.kind} to go"), cr
    return (
        StepState(
            0,
            0,
            "Running",
            f"{target.kind} {target.namespace}/{target.name} exists and is not this repair's:"
            " waiting for it to go",
        ),
        cr,
    )


async def delete_remediation(kube: Kube, target: RemediationRef) -> None:
    try:
        await kube.request("DELETE", cr_path(target), {"propagationPolicy": "Background"})
    except ApiError as e:
        if e.status != 404:
            raise
