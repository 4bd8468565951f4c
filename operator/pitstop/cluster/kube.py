"""The Kubernetes calls pitstop makes, in one place: a thin asyncio JSON client on
aiohttp (kopf's own HTTP stack) with the operator's credentials.

Raw JSON instead of the generated client models: a drain evicts a hundred pods at
once, and (de)serialising model objects would cost more than the requests."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from pitstop import constants

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True, kw_only=True)
class NamedConnection(kopf.ConnectionInfo):
    """kopf's credentials plus a User-Agent naming the replica, so that the API
    server's audit log tells which replica made each request (both share one
    ServiceAccount)."""

    user_agent: str = "pitstop"

    def as_http_headers(self) -> dict[str, str]:
        return {**super().as_http_headers(), "User-Agent": self.user_agent}


class ApiError(Exception):
    """A non-2xx answer; `status` is the HTTP code, `message` the server's words."""

    def __init__(self, status: int, message: str, body: Mapping[str, Any] | None = None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = dict(body or {})


class NodeChanged(ApiError):
    """A guarded node patch was refused: a marker it tests changed since the read."""


class StatusChanged(ApiError):
    """A guarded status patch was refused: the status it tests changed since it was
    read or last written (another writer came first: a leader before us, `abort`)."""


class Gone(Exception):
    """The object a daemon drives was deleted (seen as a 404 or gone from the index)."""


def namespace() -> str:
    """Where repair Jobs run and webhook Secrets live: the operator's own namespace."""
    return os.environ.get("POD_NAMESPACE") or constants.OPERATOR_NAMESPACE


@dataclass(frozen=True)
class Eviction:
    """The outcome of one eviction request."""

    pod: str
    """namespace/name"""
    result: str
    """evicted | gone | blocked | error"""
    message: str = ""
    blocking_pdbs: tuple[str, ...] = ()


class Kube:
    """An API client for one set of credentials; re-logs in (via `login`) on 401."""

    def __init__(self, login: Callable[[], kopf.ConnectionInfo], request_timeout: float = 30.0):
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, connect=10.0)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._proxy: str | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None or self._session.closed:
                info = self._login()
                self._server = info.server.rstrip("/")
                self._proxy = info.proxy_url  # the kubeconfig's proxy-url, as kopf's watches use
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=_ssl_context(info), limit=64),
                    headers=_auth_headers(info),
                    timeout=self._timeout,
                    json_serialize=json.dumps,
                )
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        for attempt in (1, 2):
            session = await self._connect()
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": content_type} if body is not None else {}
            async with session.request(
                method,
                self._server + path,
                data=data,
                headers=headers,
                params=params,
                proxy=self._proxy,
            ) as response:
                text = await response.text()
                if response.status == 401 and attempt == 1:
                    await session.close()  # credentials expired: log in again once
                    continue
                payload: dict[str, Any] = json.loads(text) if text.startswith("{") else {}
                if response.status >= 400:
                    raise ApiError(response.status, payload.get("message") or text[:200], payload)
                return payload
        raise AssertionError("unreachable")

    # --- nodes ---

    async def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", f"/api/v1/nodes/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def patch_node(self, name: str, ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """JSON Patch; a failed `test` operation refuses it whole (NodeChanged)."""
        try:
            return await self.request("PATCH", f"/api/v1/nodes/{name}", list(ops), JSON_PATCH)
        except ApiError as e:
            if e.status == 422 and any(op["op"] == "test" for op in ops):
                raise NodeChanged(e.status, e.message, e.body) from e
            raise

    # --- EndpointSlices ---

    async def list_endpointslices(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's EndpointSlices as the API server holds them now: a read
        without resourceVersion is consistent, never older than a watch's view."""
        path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        return list((await self.request("GET", path)).get("items") or [])

    # --- pods ---

    async def list_pods_on(self, node_name: str) -> list[dict[str, Any]]:
        """The pods bound to the node as the API server holds them now: a read without
        resourceVersion is consistent, never older than a watch's view."""
        found = await self.request(
            "GET", "/api/v1/pods", params={"fieldSelector": f"spec.nodeName={node_name}"}
        )
        return list(found.get("items") or [])

    async def patch_pod(self, key: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A merge patch; the answer is the pod as the patch left it."""
        ns, name = key.split("/", 1)
        return await self.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}", patch, MERGE)

    async def set_pod_condition(
        self, key: str, type_: str, status: str, reason: str, message: str = ""
    ) -> None:
        """A pod condition via pods/status; strategic merge keys conditions by type.
        Written only when its status changes, so now is its lastTransitionTime."""
        ns, name = key.split("/", 1)
        condition = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        patch = {"status": {"conditions": [condition]}}
        await self.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", patch, STRATEGIC)

    async def evict(self, key: str, grace_period_seconds: int | None) -> Eviction:
        ns, name = key.split("/", 1)
        body: dict[str, Any] = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
        }
        if grace_period_seconds is not None:
            body["deleteOptions"] = {"gracePeriodSeconds": grace_period_seconds}
        try:
            await self.request("POST", f"/api/v1/namespaces/{ns}/pods/{name}/eviction", body)
        except ApiError as e:
            if e.status == 404:
                return Eviction(key, "gone")
            if e.status == 429:
                return Eviction(key, "blocked", e.message, blocking_pdbs(e.body, ns))
            return Eviction(key, "error", f"{e.status} {e.message}")
        except (aiohttp.ClientError, TimeoutError) as e:
            return Eviction(key, "error", f"{type(e).__name__}: {e}")
        return Eviction(key, "evicted")

    # --- pitstop resources ---

    async def patch_status(self, plural: str, name: str, status: Mapping[str, Any]) -> None:
        path = f"/apis/{constants.GROUP}/{constants.VERSION}/{plural}/{name}/status"
        await self.request("PATCH", path, {"status": status}, MERGE)

    async def patch_status_ops(
        self, plural: str, name: str, ops: Sequence[Mapping[str, Any]]
    ) -> None:
        """JSON Patch of the status subresource; a failed `test` refuses it whole
        (StatusChanged), as `patch_node` does for nodes."""
        path = f"/apis/{constants.GROUP}/{constants.VERSION}/{plural}/{name}/status"
        try:
            await self.request("PATCH", path, list(ops), JSON_PATCH)
        except ApiError as e:
            if e.status == 422 and any(op["op"] == "test" for op in ops):
                raise StatusChanged(e.status, e.message, e.body) from e
            raise


def merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new`: fields that went away become null
    (a merge patch that merely omits them would leave them in place)."""
    patch: dict[str, Any] = dict(new)
    for key, value in (old or {}).items():
        if key not in new:
            patch[key] = None
        elif isinstance(value, Mapping) and isinstance(new[key], Mapping):
            patch[key] = merge_patch(value, new[key])
    return patch


GUARDED_FIELDS = ("phase", "phaseStartTime")
"""What a guarded status write tests: the phase it was decided from, and when that
phase began (a phase entered again, Verifying → Repairing → Verifying, is another)."""


def guarded_status(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JSON Patch from status `old` (as read or last written; None: no status yet)
    to `new`, refused unless the server's status still has old's phase and phase
    start: a write decided from a status another writer has moved on from (a deposed
    leader's late write, a pass's write over `abort`'s Aborted) never lands (invariant
    6). Only the fields that change are sent; a `test` of null passes for an absent one."""
    if old is None:
        return [
            {"op": "test", "path": "/status", "value": None},
            {"op": "add", "path": "/status", "value": dict(new)},
        ]
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": f"/status/{key}", "value": old.get(key)} for key in GUARDED_FIELDS
    ]
    for key, value in new.items():
        if old.get(key) != value:
            ops.append({"op": "add", "path": f"/status/{key}", "value": value})
    ops.extend({"op": "remove", "path": f"/status/{key}"} for key in old if key not in new)
    return ops


def guard_holds(old: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> bool:
    """Whether `guarded_status(old, ...)`'s tests hold on status `current`: if they do,
    a 422 refused the patch for another reason (an invalid status, not a race)."""
    if old is None or current is None:
        return old is None and current is None
    return all(old.get(key) == current.get(key) for key in GUARDED_FIELDS)


def blocking_pdbs(status: Mapping[str, Any], namespace: str) -> tuple[str, ...]:
    """PDB names from a 429 eviction answer: the API server names each budget in a
    `DisruptionBudget` cause ("The disruption budget <name> needs ...")."""
    names: list[str] = []
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") != "DisruptionBudget":
            continue
        words = str(cause.get("message", "")).split()
        if len(words) > 3 and words[:3] == ["The", "disruption", "budget"]:
            names.append(f"{namespace}/{words[3]}")
    return tuple(names)


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data,
    )
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(str(info.certificate_path), str(info.private_key_path))
    return context


def _auth_headers(info: kopf.ConnectionInfo) -> dict[str, str]:
    if isinstance(info, NamedConnection):
        return info.as_http_headers()
    if info.token:
        return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
    if info.username and info.password:
        basic = aiohttp.BasicAuth(info.username, info.password)
        return {"Authorization": basic.encode()}
    return {}


async def read_secret(kube: Kube, name: str, key: str) -> str:
    try:
        secret = await kube.request("GET", f"/api/v1/namespaces/{namespace()}/secrets/{name}")
    except ApiError as e:
        if e.status == 404:
            raise LookupError(f"secret {namespace()}/{name} not found") from e
        raise LookupError(f"secret {namespace()}/{name}: {e.status} {e.message}") from e
    data = (secret.get("data") or {}).get(key)
    if data is None:
        raise LookupError(f"secret {namespace()}/{name} has no key {key!r}")
    return base64.b64decode(data).decode().strip()
