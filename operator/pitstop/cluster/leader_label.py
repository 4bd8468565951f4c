"""The acting replica's mark on its own Pod: the label pitstop.dev/leader=true, which
the alert receiver's Service (manifests/operator/service.yaml) selects, so that
Alertmanager's webhooks reach the leader and not the standby's 503.

- a replica clears the label from its own Pod when it starts, before it serves
  /healthz (so before it can be Ready): a container restarted after its fence fired,
  or after a crash, keeps its Pod and so the label;
- the leader labels its own Pod once it holds the Lease, then clears the label from
  any other Pod of its namespace that still has it (a deposed leader that has not
  restarted yet). Those clears are conditional on the resourceVersion listed: a Pod
  that changed since (restarted, or labelled itself as a newer leader) is left alone.

A deposed leader's Pod is NotReady from the moment its process exits, and a Service
routes to Ready Pods only, so the label it keeps until its restart sends it nothing.
Best effort: while no Pod carries the label, alerts find no endpoint and Alertmanager
retries; a label write never delays or blocks leading.
Imports: the API client (pitstop.cluster.kube) only; no kopf."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from pitstop.cluster.kube import MERGE, ApiError, Kube, namespace

logger = logging.getLogger(__name__)

FAILED = (ApiError, aiohttp.ClientError, OSError, TimeoutError)
"""What a label write may fail with; none of it stops the replica."""

LEADER_LABEL = "pitstop.dev/leader"
PODS = "/api/v1/namespaces/{namespace}/pods"


@dataclass(frozen=True)
class OwnPod:
    """The Pod this replica runs in, from the downward API."""

    namespace: str
    name: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OwnPod | None:
        """$POD_NAME (and $POD_NAMESPACE, else the operator's namespace); None outside
        a Pod, where there is no label to keep."""
        name = env.get("POD_NAME")
        if not name:
            return None
        return cls(env.get("POD_NAMESPACE") or namespace(), name)

    @property
    def path(self) -> str:
        return PODS.format(namespace=self.namespace) + f"/{self.name}"


def label_patch(leading: bool, resource_version: str | None = None) -> dict[str, Any]:
    """A merge patch setting (or removing) the label; with a resourceVersion it is
    conditional (409 if the Pod changed since it was read)."""
    metadata: dict[str, Any] = {"labels": {LEADER_LABEL: "true" if leading else None}}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {"metadata": metadata}


def stale_marks(pods: list[Mapping[str, Any]], own: str) -> list[tuple[str, str]]:
    """(name, resourceVersion) of the Pods other than `own` that carry the label."""
    found = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        if metadata.get("name") != own and labels.get(LEADER_LABEL) == "true":
            found.append((str(metadata["name"]), str(metadata.get("resourceVersion") or "")))
    return found


async def unmark(kube: Kube, pod: OwnPod) -> None:
    """At start: this replica does not lead (yet); its Pod may still carry the label."""
    try:
        await kube.request("PATCH", pod.path, label_patch(False), MERGE)
    except FAILED as e:
        # The new leader clears it too; meanwhile a standby answers alerts with 503.
        logger.warning(f"Could not clear the {LEADER_LABEL} label of Pod {pod.name}: {e}")


async def mark(kube: Kube, pod: OwnPod) -> None:
    """Labels our Pod, then clears every other Pod's label."""
    await kube.request("PATCH", pod.path, label_patch(True), MERGE)
    listed = await kube.request(
        "GET", PODS.format(namespace=pod.namespace), params={"labelSelector": LEADER_LABEL}
    )
    for name, version in stale_marks(listed.get("items") or [], pod.name):
        path = PODS.format(namespace=pod.namespace) + f"/{name}"
        try:
            await kube.request("PATCH", path, label_patch(False, version), MERGE)
            logger.info(f"Cleared the {LEADER_LABEL} label of Pod {name}.")
        except ApiError as e:
            if e.status not in (404, 409):  # gone, or changed (restarted) since the list
                raise


async def keep_marked(kube: Kube, pod: OwnPod, retry_period: float) -> None:
    """The leader's task: `mark` until it succeeds once."""
    while True:
        try:
            await mark(kube, pod)
            logger.info(f"Labelled Pod {pod.name} {LEADER_LABEL}=true: alerts come here.")
            return
        except FAILED as e:
            logger.warning(f"Could not label Pod {pod.name} as the leader (retrying): {e}")
        await asyncio.sleep(retry_period)


__all__ = ["LEADER_LABEL", "OwnPod", "keep_marked", "label_patch", "mark", "stale_marks", "unmark"]
