"""The repair hooks that touch the outside: the Job (strategy Job) and the HTTP
call (strategy Webhook). Every failure becomes a WebhookAnswer / JobState with a
clear message, never an exception that would crash-loop the repair."""

from __future__ import annotations

import copy
import hashlib
import json
import ssl
from typing import Any

import aiohttp
import kopf

from pitstop import constants
from pitstop.cluster.kube import ApiError, Kube, namespace, read_secret
from pitstop.models import NodeRepairSpec
from pitstop.repair.flow import JobState, WebhookAnswer

C = constants
MAX_ANSWER = 64 * 1024
MAX_MESSAGE = 1024
"""The webhook's message is cut to this many characters (it lands in status and Events)."""
TOLERATIONS = [
    {"key": C.TAINT_MAINTENANCE, "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]


def job_body(repair: kopf.Body, spec: NodeRepairSpec, name: str) -> dict[str, Any]:
    """The Job of one attempt: the user's template, plus what pitstop guarantees:
    NODE_NAME and NODEREPAIR_NAME in every container, tolerations for the cordon,
    one try per attempt (pitstop retries), and owned by the NodeRepair, so the
    garbage collector removes it with the repair."""
    assert spec.repair.job is not None
    template = spec.repair.job.template
    meta = copy.deepcopy(template.metadata or {})
    job_spec = copy.deepcopy(template.spec)
    job_spec.setdefault("backoffLimit", 0)
    pod = job_spec.setdefault("template", {}).setdefault("spec", {})
    pod.setdefault("restartPolicy", "Never")
    pod["tolerations"] = [*(pod.get("tolerations") or []), *TOLERATIONS]
    env = [
        {"name": "NODE_NAME", "value": spec.node_name},
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


def label_value(repair: str) -> str:
    """A NodeRepair name as a label value (at most 63 characters); the full name is
    in the annotation of the same key."""
    if len(repair) <= 63:
        return repair
    return f"{repair[:52].rstrip('-.')}-{hashlib.sha256(repair.encode()).hexdigest()[:10]}"


async def create_job(
    kube: Kube, repair: kopf.Body, spec: NodeRepairSpec, name: str
) -> JobState | None:
    """Idempotent: the name is per attempt, so an existing Job is this attempt's.
    A Job the API server refuses (a bad template) is a failed attempt, not a retry."""
    try:
        await kube.request(
            "POST", f"/apis/batch/v1/namespaces/{namespace()}/jobs", job_body(repair, spec, name)
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
    kube: Kube, repair: kopf.Body, spec: NodeRepairSpec, attempt: int, poll: bool
) -> WebhookAnswer:
    """POSTs {node, repair, reason, attempt, poll}; the answer must be 2xx JSON with
    status Succeeded | Failed | Running. `poll` marks a call about an attempt that
    was already started (after a Running answer, or after an operator restart)."""
    hook = spec.repair.webhook
    assert hook is not None
    headers = {"Content-Type": "application/json"}
    try:
        if hook.secret_ref is not None:
            token = await read_secret(kube, hook.secret_ref.name, hook.secret_ref.key)
            headers["Authorization"] = f"Bearer {token}"
    except LookupError as e:
        return WebhookAnswer(attempt, "Error", str(e))
    payload = {
        "node": spec.node_name,
        "repair": repair["metadata"]["name"],
        "reason": spec.reason or "",
        "attempt": attempt,
        "poll": poll,
    }
    timeout = aiohttp.ClientTimeout(total=hook.timeout_seconds)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(hook.url, data=json.dumps(payload), headers=headers) as response,
        ):
            raw = await read_limited(response.content, MAX_ANSWER + 1)
            status = response.status
    except TimeoutError:
        return WebhookAnswer(attempt, "Error", f"webhook timed out after {hook.timeout_seconds}s")
    except (aiohttp.ClientSSLError, ssl.SSLError) as e:
        return WebhookAnswer(attempt, "Error", f"webhook TLS error: {e}")
    except aiohttp.ClientError as e:
        return WebhookAnswer(attempt, "Error", f"webhook unreachable: {type(e).__name__}: {e}")
    return parse_answer(attempt, status, raw)


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
