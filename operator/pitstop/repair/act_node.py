"""The node steps: take the lock and cordon (Cordoning), and give the node back
(Uncordoning, onFailure: Uncordon, a deleted repair). The patches themselves
are built by pitstop.cluster.nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from pitstop import constants
from pitstop.cluster import nodes
from pitstop.cluster.indexes import UNDER_REPAIR, slim_node
from pitstop.cluster.kube import ApiError, Kube
from pitstop.conditions import set_condition
from pitstop.instances import contract
from pitstop.models import (
    FINAL_PHASES,
    OnFailure,
    Phase,
)
from pitstop.repair.report import Report

C = constants


class NodeSteps(Report):
    """Writes to the repair's node, remembering our own patch until the index shows it."""

    def holder_active(
        self, node: Mapping[str, Any] | None, repairs_by_node: kopf.Index[str, Any]
    ) -> bool:
        holder = nodes.lock_holder(node or {})
        if holder is None or holder == self.name:
            return False
        for repair in repairs_by_node.get(self.node_name, ()):
            if repair["name"] == holder:
                # One being deleted still holds the node until its handler released it.
                return repair["phase"] not in FINAL_PHASES or repair["deleting"]
        # The holder is gone, or ended (a Failed repair keeps its node cordoned): this
        # repair takes the lock over, and with it the record of the prior schedulability.
        return False

    async def patch_node(self, node: Mapping[str, Any], patch: dict[str, Any]) -> bool:
        try:
            answer = await self.kube.patch_node(self.node_name, patch)
        except ApiError as e:
            if e.status == 409:
                fresh = await self.kube.get_node(self.node_name)
                self.patched_node = (node["metadata"]["resourceVersion"], fresh) if fresh else None
                return False
            raise
        self.patched_node = (node["metadata"]["resourceVersion"], slim_node(answer))
        return True

    async def finish_failure(self, now: datetime, pods_by_node: kopf.Index[str, Any]) -> None:
        """A Failed repair with onFailure: Uncordon that still holds its node (the
        operator died between the two writes, or the release failed): release it.
        Safe to repeat: give_back does nothing unless the lock is ours."""
        spec = self.body.get("spec") or {}
        if self.status.phase == Phase.FAILED and spec.get("onFailure") == OnFailure.UNCORDON:
            await self.give_back_after_failure(now, pods_by_node)

    async def give_back_after_failure(
        self, now: datetime, pods_by_node: kopf.Index[str, Any]
    ) -> None:
        if await give_back(self.kube, self.node_name, self.name, pods_by_node, self.logger):
            status = self.status.model_copy(deep=True)
            status.conditions = set_condition(
                status.conditions,
                C.COND_UNCORDONED,
                True,
                "OnFailureUncordon",
                "node returned to service after the failure (onFailure: Uncordon)",
                now,
                status.observed_generation,
            )
            await self.write_status(status, now, None)


async def give_back(
    kube: Kube,
    node_name: str,
    repair: str,
    pods_by_node: kopf.Index[str, Any],
    logger: kopf.Logger,
) -> bool:
    """Undo what a repair did to its node, if it holds the node: remove the drain
    signal and reopen the serving gate of the instances still there, then remove the
    taint and the lock and uncordon unless the node was cordoned before."""
    node = await kube.get_node(node_name)
    if node is None or nodes.lock_holder(node) != repair:
        UNDER_REPAIR.discard(node_name)
        return False
    jobs = []
    for pod in list(pods_by_node.get(node_name, ())):
        if contract.is_terminating(pod) or not contract.is_instance(pod):
            continue
        key = contract.key(pod)
        if C.ANNOTATION_DRAINING in pod["metadata"]["annotations"]:
            jobs.append(
                kube.patch_pod(key, {"metadata": {"annotations": {C.ANNOTATION_DRAINING: None}}})
            )
        if contract.has_serving_gate(pod) and contract.serving_status(pod) != "True":
            jobs.append(kube.set_pod_condition(key, C.CONDITION_SERVING, "True", "NodeRepairEnded"))
    for result in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(result, ApiError) and result.status != 404:
            raise result
        if isinstance(result, BaseException) and not isinstance(result, ApiError):
            raise result
    UNDER_REPAIR.discard(node_name)
    for _ in range(5):
        try:
            await kube.patch_node(node_name, nodes.release(node))
            logger.info(f"Node {node_name} given back.")
            return True
        except ApiError as e:
            if e.status != 409:
                raise
            node = await kube.get_node(node_name)
            if node is None or nodes.lock_holder(node) != repair:
                return False
    raise kopf.TemporaryError(f"node {node_name} kept changing; retrying the release", delay=1)


async def release_orphan(
    kube: Kube,
    node_name: str,
    holder: str,
    pods_by_node: kopf.Index[str, Any],
    logger: kopf.Logger,
) -> bool:
    """Gives back a node whose lock names a NodeRepair that is gone, exactly as that
    repair's deletion would have (give_back: drain signals, gates, taint, lock, and the
    cordon only if the node was schedulable before). The index may lag behind a repair
    just created, so the repair's absence is confirmed first. True if it released."""
    try:
        await kube.request("GET", f"/apis/{C.API_VERSION}/{C.NODEREPAIR_PLURAL}/{holder}")
    except ApiError as e:
        if e.status != 404:
            raise
    else:
        return False
    return await give_back(kube, node_name, holder, pods_by_node, logger)
