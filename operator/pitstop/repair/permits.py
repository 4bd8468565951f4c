"""What the platform admin allows a repair to make pitstop run or send (docs/security.md).

A repair Job runs in the operator's namespace, where pitstop could start a pod as
any ServiceAccount and mount any Secret: so the Job's pod gets only what the admin
granted on the ServiceAccount it runs as. A webhook's token leaves the cluster: so
only Secrets the admin marked for webhooks are sent, and only to the URLs their
marks name. Pure: the caller reads the ServiceAccount and the Secret."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pitstop import constants

C = constants

POD_HOST_FIELDS = ("hostNetwork", "hostPID", "hostIPC")
"""Pod fields that share a namespace of the node with the repair's pod."""
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
PLAIN_VOLUMES = frozenset(
    {"emptyDir", "configMap", "downwardAPI", "projected", "secret", "persistentVolumeClaim"}
)
"""Volume types a Job may use without host access (projected and secret are checked
for the Secrets they name); every other type is refused: hostPath needs host access,
and the rest (csi, nfs, iscsi, ...) may carry credentials of their own."""


def _marked(obj: Mapping[str, Any], label: str) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(label) == "true"


def _listed(obj: Mapping[str, Any], annotation: str) -> list[str]:
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(annotation) or ""
    return [item.strip() for item in raw.split(",") if item.strip()]


def service_account_of(pod: Mapping[str, Any]) -> str:
    """The ServiceAccount the Job's pod runs as: its own, else pitstop-repair."""
    return str(
        pod.get("serviceAccountName") or pod.get("serviceAccount") or C.REPAIR_SERVICE_ACCOUNT
    )


def _containers(pod: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for field in CONTAINER_LISTS:
        for container in pod.get(field) or []:
            if isinstance(container, Mapping):
                yield container


def host_access(pod: Mapping[str, Any]) -> list[str]:
    """What in the pod reaches the node beneath it: each as `field` (`name` where
    several are possible)."""
    found = [field for field in POD_HOST_FIELDS if pod.get(field) is True]
    for volume in pod.get("volumes") or []:
        if isinstance(volume, Mapping) and "hostPath" in volume:
            found.append(f"hostPath volume {volume.get('name')}")
    for c in _containers(pod):
        name = c.get("name")
        security = c.get("securityContext") or {}
        if security.get("privileged") is True:
            found.append(f"privileged container {name}")
        if (security.get("capabilities") or {}).get("add"):
            found.append(f"capabilities.add in container {name}")
        if security.get("procMount") == "Unmasked":
            found.append(f"procMount Unmasked in container {name}")
        if (security.get("windowsOptions") or {}).get("hostProcess") is True:
            found.append(f"hostProcess container {name}")
        if any(isinstance(p, Mapping) and p.get("hostPort") for p in c.get("ports") or []):
            found.append(f"hostPort in container {name}")
    if ((pod.get("securityContext") or {}).get("windowsOptions") or {}).get("hostProcess"):
        found.append("hostProcess pod")
    return found


def secrets_named(pod: Mapping[str, Any]) -> set[str]:
    """The Secrets whose values the pod would see: secret and projected volumes,
    env valueFrom.secretKeyRef and envFrom.secretRef. (imagePullSecrets are
    the kubelet's, never the pod's.)"""
    names: set[str] = set()
    for volume in pod.get("volumes") or []:
        if not isinstance(volume, Mapping):
            continue
        names.add((volume.get("secret") or {}).get("secretName") or "")
        for source in (volume.get("projected") or {}).get("sources") or []:
            names.add(((source or {}).get("secret") or {}).get("name") or "")
    for c in _containers(pod):
        for env in c.get("env") or []:
            ref = ((env or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
            names.add(ref.get("name") or "")
        for source in c.get("envFrom") or []:
            names.add(((source or {}).get("secretRef") or {}).get("name") or "")
    names.discard("")
    return names


def other_volumes(pod: Mapping[str, Any]) -> list[str]:
    """Volumes of a type outside PLAIN_VOLUMES and hostPath, as `name (type)`."""
    found: list[str] = []
    for volume in pod.get("volumes") or []:
        if not isinstance(volume, Mapping):
            continue
        kinds = [k for k in volume if k != "name" and k not in PLAIN_VOLUMES and k != "hostPath"]
        found.extend(f"{volume.get('name')} ({kind})" for kind in kinds)
    return found


def job_refusal(
    template: Mapping[str, Any],
    account: Mapping[str, Any] | None,
    namespace: str,
    operator_account: str = C.SERVICE_ACCOUNT,
) -> str | None:
    """Why the Job of `template` (a JobTemplateSpec) may not run, or None.

    `account` is the ServiceAccount the pod would run as, read from `namespace`
    (None: there is none). The admin's grants live on that ServiceAccount:
    the label pitstop.dev/repair-allowed (any but pitstop-repair needs it),
    the label pitstop.dev/repair-host-access and the annotation
    pitstop.dev/repair-secrets (the Secrets it may see)."""
    asked = (template.get("metadata") or {}).get("namespace")
    if asked and asked != namespace:
        return (
            f"repair Jobs run in {namespace} only, not in {asked}: leave metadata.namespace unset"
        )
    pod = ((template.get("spec") or {}).get("template") or {}).get("spec") or {}
    named = {pod.get("serviceAccountName"), pod.get("serviceAccount")} - {None, ""}
    if len(named) > 1:
        return f"serviceAccountName and serviceAccount differ: {sorted(map(str, named))}"
    sa = service_account_of(pod)
    if sa == operator_account:
        return f"a repair Job never runs as the operator's own ServiceAccount ({sa})"
    if account is None:
        return f"ServiceAccount {namespace}/{sa} not found"
    if sa != C.REPAIR_SERVICE_ACCOUNT and not _marked(account, C.LABEL_REPAIR_ALLOWED):
        return (
            f"ServiceAccount {namespace}/{sa} is not allowed for repair Jobs"
            f" (the platform admin labels it {C.LABEL_REPAIR_ALLOWED}=true)"
        )
    host = host_access(pod)
    if host and not _marked(account, C.LABEL_REPAIR_HOST_ACCESS):
        return (
            f"{', '.join(host)}: host access is not allowed for ServiceAccount {namespace}/{sa}"
            f" (the platform admin labels it {C.LABEL_REPAIR_HOST_ACCESS}=true)"
        )
    other = other_volumes(pod)
    if other:
        return f"volume type not allowed in repair Jobs: {', '.join(other)}"
    secrets = secrets_named(pod) - set(_listed(account, C.ANNOTATION_REPAIR_SECRETS))
    if secrets:
        return (
            f"Secrets {', '.join(sorted(secrets))} are not allowed for ServiceAccount"
            f" {namespace}/{sa} (the platform admin lists them in its annotation"
            f" {C.ANNOTATION_REPAIR_SECRETS})"
        )
    return None


def webhook_refusal(secret: Mapping[str, Any], url: str, namespace: str) -> str | None:
    """Why the token of `secret` may not be sent to `url`, or None: the Secret must
    be labelled pitstop.dev/webhook-secret=true, and, where its annotation
    pitstop.dev/webhook-url-prefixes names URL prefixes, the URL must start with one."""
    name = f"{namespace}/{(secret.get('metadata') or {}).get('name')}"
    if not _marked(secret, C.LABEL_WEBHOOK_SECRET):
        return (
            f"Secret {name} is not marked for webhooks"
            f" (the platform admin labels it {C.LABEL_WEBHOOK_SECRET}=true)"
        )
    prefixes = _listed(secret, C.ANNOTATION_WEBHOOK_URLS)
    if prefixes and not any(url.startswith(p) for p in prefixes):
        return (
            f"Secret {name} may be sent only to URLs starting with {', '.join(prefixes)}"
            f" (its annotation {C.ANNOTATION_WEBHOOK_URLS})"
        )
    return None


def redact(text: str, secret: str | None) -> str:
    """`text` without the token: a service that echoes its request back must not put
    the token into status or Events."""
    if not secret:
        return text
    return text.replace(secret, "[redacted]")


def machine_refusal(machine: Mapping[str, Any]) -> str | None:
    """Why a Replace step may not delete `machine` (a Cluster API Machine), or None:
    the platform admin opts a pool in with the label pitstop.dev/replace-allowed=true
    on its Machines (in the MachineDeployment's template)."""
    meta = machine.get("metadata") or {}
    if not _marked(machine, C.LABEL_REPLACE_ALLOWED):
        return (
            f"Machine {meta.get('namespace')}/{meta.get('name')} is not allowed to be replaced"
            f" (the platform admin labels its pool's Machines {C.LABEL_REPLACE_ALLOWED}=true)"
        )
    return None


def template_refusal(template: Mapping[str, Any]) -> str | None:
    """Why an External step may not create a remediation from `template`, or None:
    the platform admin labels the templates repairs may use
    pitstop.dev/remediator-allowed=true."""
    meta = template.get("metadata") or {}
    if not _marked(template, C.LABEL_REMEDIATOR_ALLOWED):
        return (
            f"{template.get('kind')} {meta.get('namespace')}/{meta.get('name')} is not allowed"
            f" for repairs (the platform admin labels it {C.LABEL_REMEDIATOR_ALLOWED}=true)"
        )
    return None
