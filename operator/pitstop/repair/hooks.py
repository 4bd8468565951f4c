"""The repair hooks that touch the outside: the Job (strategy Job) and the HTTP
call (strategy Webhook). Every failure becomes a WebhookAnswer / JobState with a
clear message, never an exception that would crash-loop the repair."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from pitstop import constants
from pitstop.cluster.kube import ApiError, Kube, namespace
from pitstop.models import (
    CanarySpec,
    JobRepair,
    NodeRepairSpec,
    RepairStatus,
    RepairStrategy,
    WebhookRepair,
)
from pitstop.repair import ladder, permits
from pitstop.repair.flow import CanaryState, JobState, WebhookAnswer

C = constants
MAX_ANSWER = 64 * 1024
MAX_MESSAGE = 1024
"""The webhook's message is cut to this many characters (it lands in status and Events)."""
TOLERATIONS = [
    {"key": C.TAINT_MAINTENANCE, "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]
ON_NODE_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule"},
]
"""A runOnNode Job also schedules onto a node whose kubelet reports it not ready
(what a repair on the node is for); it is never kept on one whose kubelet is gone
(no NoExecute toleration)."""


def step_job(spec: NodeRepairSpec, status: RepairStatus | None = None) -> JobRepair:
    """The Job of the running ladder step (the strategy's, for a one-step ladder)."""
    job = ladder.current(spec, status).job or spec.repair.job
    assert job is not None
    return job


def job_body(
    repair: kopf.Body, spec: NodeRepairSpec, name: str, job: JobRepair | None = None
) -> dict[str, Any]:
    """The Job of one attempt: the user's template, plus what pitstop guarantees:
    NODE_NAME, PITSTOP_NODE_NAME and NODEREPAIR_NAME in every container, tolerations
    for the cordon, one try per attempt (pitstop retries), the ServiceAccount
    pitstop-repair unless the template names one, owned by the NodeRepair, so the
    garbage collector removes it with the repair; and with runOnNode, a required
    affinity to the node. (Whether the template is allowed is job_refusal's.)"""
    job = job or step_job(spec)
    template = job.template
    meta = copy.deepcopy(template.metadata or {})
    job_spec = template.spec.wire()
    job_spec.setdefault("backoffLimit", 0)
    pod = job_spec.setdefault("template", {}).setdefault("spec", {})
    pod.setdefault("restartPolicy", "Never")
    pod["serviceAccountName"] = permits.service_account_of(pod)
    pod["tolerations"] = [*(pod.get("tolerations") or []), *TOLERATIONS]
    if job.run_on_node:
        pod["tolerations"].extend(ON_NODE_TOLERATIONS)
        pin_to_node(pod, spec.node_name)
    env = [
        {"name": "NODE_NAME", "value": spec.node_name},
        {"name": C.ENV_NODE_NAME, "value": spec.node_name},
        {"name": "NODEREPAIR_NAME", "value": repair["metadata"]["name"]},
    ]
    for container in pod.get("containers") or []:
        given = {e.get("name") for e in container.get("env") or []}
        container["env"] = [
            *(container.get("env") or []),
            *(e for e in env if e["name"] not in given),
        ]
    labels = {
        **(meta.get("labels") or {}),
        C.ANNOTATION_REPAIR: label_value(repair["metadata"]["name"]),
    }
    annotations = {
        **(meta.get("annotations") or {}),
        C.ANNOTATION_REPAIR: repair["metadata"]["name"],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **meta,
            "name": name,
            "namespace": namespace(),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": C.API_VERSION,
                    "kind": "NodeRepair",
                    "name": repair["metadata"]["name"],
                    "uid": repair["metadata"]["uid"],
                }
            ],
        },
        "spec": job_spec,
    }


def pin_to_node(pod: dict[str, Any], node: str) -> None:
    """A required node affinity on the node's name (metadata.name, which the scheduler
    matches by field), added to every term the template has (terms are ORed: each
    must name the node), or as the only term."""
    match = {"key": "metadata.name", "operator": "In", "values": [node]}
    affinity = pod.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    for term in terms:
        term["matchFields"] = [*(term.get("matchFields") or []), match]
    required["nodeSelectorTerms"] = terms


def label_value(repair: str) -> str:
    """A NodeRepair name as a label value (at most 63 characters); the full name is
    in the annotation of the same key."""
    if len(repair) <= 63:
        return repair
    return f"{repair[:52].rstrip('-.')}-{hashlib.sha256(repair.encode()).hexdigest()[:10]}"


async def read_optional(kube: Kube, path: str) -> dict[str, Any] | None:
    """The object at `path`, or None where there is none."""
    try:
        found: dict[str, Any] = await kube.request("GET", path)
    except ApiError as e:
        if e.status == 404:
            return None
        raise
    return found


async def job_refusal(kube: Kube, spec: NodeRepairSpec, job: JobRepair | None = None) -> str | None:
    """Why the repair's Job may not run (permits.job_refusal), reading the
    ServiceAccount it would run as; None when it may."""
    template = (job or step_job(spec)).template
    wire = {"metadata": template.metadata or {}, "spec": template.spec.wire()}
    pod = wire["spec"].get("template", {}).get("spec", {})
    sa = permits.service_account_of(pod)
    account = None
    if sa != C.SERVICE_ACCOUNT:  # never read: refused whatever it says
        account = await read_optional(
            kube, f"/api/v1/namespaces/{namespace()}/serviceaccounts/{sa}"
        )
    return permits.job_refusal(wire, account, namespace())


async def refusal(kube: Kube, spec: NodeRepairSpec) -> tuple[str, str] | None:
    """(reason, message) when the repair asks for what the platform admin has not
    allowed: a Job or a canary pod it may not run, or a webhook token it may not
    send. A Secret that does not exist yet is no refusal: the call reports it when it
    is due."""
    if spec.verify.canary is not None:
        try:
            why = await canary_refusal(kube, spec.verify.canary)
        except ApiError as e:
            if e.status != 403:
                raise
            why = f"cannot check what the canary may use: {e.message}"
        if why is not None:
            return C.REASON_CANARY_NOT_ALLOWED, f"verify.canary: {why}"
    steps = ladder.steps(spec)
    for i, step in enumerate(steps):
        where = f"{ladder.describe(steps, i)}: " if len(steps) > 1 else ""
        reason = (
            C.REASON_REPAIR_JOB_NOT_ALLOWED
            if step.strategy == RepairStrategy.JOB
            else C.REASON_WEBHOOK_NOT_ALLOWED
        )
        try:
            why = None
            if step.strategy == RepairStrategy.JOB and step.job is not None:
                why = await job_refusal(kube, spec, step.job)
            hook = step.webhook
            if step.strategy == RepairStrategy.WEBHOOK and hook and hook.secret_ref:
                path = f"/api/v1/namespaces/{namespace()}/secrets/{hook.secret_ref.name}"
                secret = await read_optional(kube, path)
                if secret is not None:
                    why = permits.webhook_refusal(secret, hook.url, namespace())
        except ApiError as e:
            if e.status == 403:  # the operator may not read it: nothing is allowed
                return reason, f"{where}cannot check what the repair may use: {e.message}"
            raise
        if why is not None:
            return reason, where + why
    return None


async def create_job(
    kube: Kube, repair: kopf.Body, spec: NodeRepairSpec, name: str, job: JobRepair | None = None
) -> JobState | None:
    """Idempotent: the name is per attempt, so an existing Job is this attempt's.
    A Job the platform admin has not allowed is never created, and one the API
    server refuses (a bad template) is a failed attempt, not a retry."""
    try:
        why = await job_refusal(kube, spec, job)
    except ApiError as e:
        if e.status != 403:
            raise
        why = f"cannot read the Job's ServiceAccount: {e.message}"
    if why is not None:
        return JobState(
            name, "Failed", f"cannot create Job {name}: {C.REASON_REPAIR_JOB_NOT_ALLOWED}: {why}"
        )
    try:
        await kube.request(
            "POST",
            f"/apis/batch/v1/namespaces/{namespace()}/jobs",
            job_body(repair, spec, name, job),
        )
    except ApiError as e:
        if e.status == 409:
            return None
        if e.status in (400, 403, 404, 422):
            return JobState(name, "Failed", f"cannot create Job {name}: {e.message}")
        raise
    return None


async def read_job(kube: Kube, name: str) -> JobState:
    try:
        job = await kube.request("GET", f"/apis/batch/v1/namespaces/{namespace()}/jobs/{name}")
    except ApiError as e:
        if e.status == 404:
            return JobState(name, "Missing")
        raise
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return JobState(name, "Complete")
        if cond.get("type") == "Failed":
            why = cond.get("message") or cond.get("reason") or "failed"
            return JobState(name, "Failed", str(why))
    return JobState(name, "Running")


async def delete_job(kube: Kube, name: str) -> None:
    path = f"/apis/batch/v1/namespaces/{namespace()}/jobs/{name}"
    try:
        await kube.request("DELETE", path, {"propagationPolicy": "Background"})
    except ApiError as e:
        if e.status != 404:
            raise


async def call_webhook(
    kube: Kube,
    repair: kopf.Body,
    spec: NodeRepairSpec,
    attempt: int,
    poll: bool,
    hook: WebhookRepair | None = None,
    step: int = 1,
) -> WebhookAnswer:
    """POSTs {node, repair, reason, attempt, poll, step}; the answer must be 2xx JSON
    with status Succeeded | Failed | Running. `poll` marks a call about an attempt
    that was already started (after a Running answer, or after an operator restart);
    `step` is the ladder step (1-based) whose webhook `hook` is."""
    hook = hook or spec.repair.webhook
    assert hook is not None
    headers = {"Content-Type": "application/json"}
    token = None
    try:
        if hook.secret_ref is not None:
            token = await webhook_token(kube, hook)
            headers["Authorization"] = f"Bearer {token}"
        tls = tls_context(hook)
    except LookupError as e:
        return WebhookAnswer(attempt, "Error", str(e))
    payload = {
        "node": spec.node_name,
        "repair": repair["metadata"]["name"],
        "reason": spec.reason or "",
        "attempt": attempt,
        "poll": poll,
        "step": step,
    }
    timeout = aiohttp.ClientTimeout(total=hook.timeout_seconds)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(hook.url, data=json.dumps(payload), headers=headers, ssl=tls) as response,
        ):
            raw = await read_limited(response.content, MAX_ANSWER + 1)
            status = response.status
    except TimeoutError:
        return WebhookAnswer(
            attempt, "Error", f"webhook timed out after {hook.timeout_seconds}s", step=step
        )
    except (aiohttp.ClientSSLError, ssl.SSLError) as e:
        return WebhookAnswer(attempt, "Error", f"webhook TLS error: {e}")
    except aiohttp.ClientError as e:
        return WebhookAnswer(attempt, "Error", f"webhook unreachable: {type(e).__name__}: {e}")
    answer = parse_answer(attempt, status, raw)
    return dataclasses.replace(answer, message=permits.redact(answer.message, token), step=step)


async def webhook_token(kube: Kube, hook: WebhookRepair) -> str:
    """The Bearer token of `hook.secretRef`, once its Secret allows this URL
    (permits.webhook_refusal); LookupError says why not. The token itself is never
    in a message."""
    assert hook.secret_ref is not None
    name, key = hook.secret_ref.name, hook.secret_ref.key
    try:
        secret = await read_optional(kube, f"/api/v1/namespaces/{namespace()}/secrets/{name}")
    except ApiError as e:
        raise LookupError(f"secret {namespace()}/{name}: {e.status} {e.message}") from e
    if secret is None:
        raise LookupError(f"secret {namespace()}/{name} not found")
    why = permits.webhook_refusal(secret, hook.url, namespace())
    if why is not None:
        raise LookupError(f"{C.REASON_WEBHOOK_NOT_ALLOWED}: {why}")
    data = (secret.get("data") or {}).get(key)
    if data is None:
        raise LookupError(f"secret {namespace()}/{name} has no key {key!r}")
    return base64.b64decode(data).decode().strip()


def tls_context(hook: WebhookRepair) -> ssl.SSLContext | bool:
    """TLS verified against `caBundle` when given (in place of the system roots);
    True: aiohttp's default, which verifies against the system roots."""
    if hook.ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cadata=base64.b64decode(hook.ca_bundle).decode())
    except (ssl.SSLError, ValueError) as e:
        raise LookupError(f"webhook caBundle is not usable: {e}") from e


async def read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to its end or `limit` bytes, whichever comes first. (One
    `stream.read(limit)` returns what has arrived so far: an answer split over
    several TCP segments would be cut short.)"""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def parse_answer(attempt: int, status: int, raw: bytes) -> WebhookAnswer:
    """The webhook's HTTP status and body (at most MAX_ANSWER + 1 bytes) as an answer:
    2xx with {"status": Succeeded|Failed|Running, "message": ...}, else Error with
    a message that says what was wrong. Never raises."""
    if not 200 <= status < 300:
        return WebhookAnswer(attempt, "Error", f"webhook answered HTTP {status}")
    if len(raw) > MAX_ANSWER:
        return WebhookAnswer(attempt, "Error", "webhook answer larger than 64 KiB")
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deeply
        answer = None
    state = answer.get("status") if isinstance(answer, dict) else None
    if not isinstance(state, str) or state not in ("Succeeded", "Failed", "Running"):
        text = raw[:120].decode(errors="replace")
        return WebhookAnswer(
            attempt,
            "Error",
            f'webhook answer is not {{"status": Succeeded|Failed|Running}}: {text!r}',
        )
    assert isinstance(answer, dict)
    message = answer.get("message")
    text = message if isinstance(message, str) else json.dumps(message) if message else ""
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    return WebhookAnswer(attempt, state, text)


# --- verify.canary: a pod that must succeed on the repaired node ---


def _canary_template(canary: CanarySpec) -> dict[str, Any]:
    """The canary pod as the JobTemplateSpec shape permits.job_refusal reads: the same
    grants as a repair Job's pod."""
    pod = canary.pod
    return {"metadata": pod.metadata or {}, "spec": {"template": {"spec": pod.spec.wire()}}}


async def canary_refusal(kube: Kube, canary: CanarySpec) -> str | None:
    """Why the canary pod may not run (permits.job_refusal, as a repair Job's pod),
    reading the ServiceAccount it would run as; None when it may."""
    wire = _canary_template(canary)
    sa = permits.service_account_of(wire["spec"]["template"]["spec"])
    account = None
    if sa != C.SERVICE_ACCOUNT:  # never read: refused whatever it says
        account = await read_optional(
            kube, f"/api/v1/namespaces/{namespace()}/serviceaccounts/{sa}"
        )
    return permits.job_refusal(wire, account, namespace())


def canary_body(repair: kopf.Body, spec: NodeRepairSpec, name: str) -> dict[str, Any]:
    """The canary pod of one attempt: the template, plus what pitstop guarantees: bound
    to the node under repair by nodeName (no scheduler, so the cordon does not keep it
    off; the tolerations keep the taint from mattering to anything that checks it),
    NODE_NAME, PITSTOP_NODE_NAME and NODEREPAIR_NAME in every container, the
    ServiceAccount pitstop-repair unless the template names one, the label
    pitstop.dev/canary, owned by the NodeRepair (the
    garbage collector removes it with the repair). (Whether the template is allowed
    is canary_refusal's.)"""
    canary = spec.verify.canary
    assert canary is not None
    meta = copy.deepcopy(canary.pod.metadata or {})
    pod = canary.pod.spec.wire()
    pod["nodeName"] = spec.node_name
    pod["serviceAccountName"] = permits.service_account_of(pod)
    pod["tolerations"] = [*(pod.get("tolerations") or []), *TOLERATIONS]
    repair_name = repair["metadata"]["name"]
    env = [
        {"name": "NODE_NAME", "value": spec.node_name},
        {"name": C.ENV_NODE_NAME, "value": spec.node_name},
        {"name": "NODEREPAIR_NAME", "value": repair_name},
    ]
    for container in pod.get("containers") or []:
        given = {e.get("name") for e in container.get("env") or []}
        container["env"] = [
            *(container.get("env") or []),
            *(e for e in env if e["name"] not in given),
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **{k: v for k, v in meta.items() if k in ("labels", "annotations")},
            "name": name,
            "namespace": namespace(),
            "labels": {
                **(meta.get("labels") or {}),
                C.ANNOTATION_REPAIR: label_value(repair_name),
                C.LABEL_CANARY: "true",
            },
            "annotations": {**(meta.get("annotations") or {}), C.ANNOTATION_REPAIR: repair_name},
            "ownerReferences": [
                {
                    "apiVersion": C.API_VERSION,
                    "kind": "NodeRepair",
                    "name": repair_name,
                    "uid": repair["metadata"]["uid"],
                }
            ],
        },
        "spec": pod,
    }


async def create_canary(
    kube: Kube, repair: kopf.Body, spec: NodeRepairSpec, name: str
) -> CanaryState | None:
    """Idempotent: the name is per attempt, so an existing pod is this attempt's (a
    restarted operator finds it). A pod the admin has not allowed is never created,
    and one the API server refuses is a failed canary, not a retry."""
    assert spec.verify.canary is not None
    try:
        why = await canary_refusal(kube, spec.verify.canary)
    except ApiError as e:
        if e.status != 403:
            raise
        why = f"cannot read the canary's ServiceAccount: {e.message}"
    if why is not None:
        return CanaryState(
            name, "Failed", f"cannot create canary pod {name}: {C.REASON_CANARY_NOT_ALLOWED}: {why}"
        )
    try:
        await kube.request(
            "POST", f"/api/v1/namespaces/{namespace()}/pods", canary_body(repair, spec, name)
        )
    except ApiError as e:
        if e.status == 409:
            return None
        if e.status in (400, 403, 404, 422):
            return CanaryState(name, "Failed", f"cannot create canary pod {name}: {e.message}")
        raise
    return None


def canary_state(name: str, pod: Mapping[str, Any] | None) -> CanaryState:
    """What a canary pod (None: there is none) says: its phase, and for a failed one
    the containers' exit codes and reasons."""
    if pod is None:
        return CanaryState(name, "Missing")
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Succeeded":
        return CanaryState(name, "Succeeded")
    if phase == "Failed":
        ended = []
        for c in status.get("containerStatuses") or []:
            done = (c.get("state") or {}).get("terminated") or {}
            if done:
                code, why = done.get("exitCode"), done.get("reason")
                ended.append(f"{c.get('name')} exited {code} ({why})")
        why = "; ".join(ended) or status.get("reason") or status.get("message") or "failed"
        return CanaryState(name, "Failed", f"canary pod {name} failed: {why}"[:MAX_MESSAGE])
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return CanaryState(name, "Running", "being deleted")
    return CanaryState(name, "Running", f"phase {phase}")


async def read_canary(kube: Kube, name: str) -> CanaryState:
    pod = await read_optional(kube, f"/api/v1/namespaces/{namespace()}/pods/{name}")
    return canary_state(name, pod)


async def delete_canary(kube: Kube, name: str) -> None:
    try:
        await kube.request("DELETE", f"/api/v1/namespaces/{namespace()}/pods/{name}")
    except ApiError as e:
        if e.status != 404:
            raise
