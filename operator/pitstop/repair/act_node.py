"""The node steps: take the lock and cordon (Cordoning), and give the node back
(Uncordoning, onFailure: Uncordon, a deleted repair). The patches themselves
are built by pitstop.cluster.nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import kopf

from pitstop import constants
from pitstop.cluster import nodes
from pitstop.cluster.indexes import slim_node
from pitstop.cluster.kube import ApiError, Kube, NodeChanged
from pitstop.conditions import set_condition
from pitstop.instances import contract
from pitstop.models import (
    FINAL_PHASES,
    OnFailure,
    Phase,
)
from pitstop.repair.report import Report
from pitstop.repair.state import RepairState

C = constants


class NodeSteps:
    """Writes to the repair's node, remembering our own patch until the index shows
    it (RepairState.patched_node)."""

    def __init__(self, state: RepairState, report: Report) -> None:
        self.state, self.report = state, report

    def holder_active(
        self, node: Mapping[str, Any] | None, repairs_by_node: kopf.Index[str, Any]
    ) -> bool:
        st = self.state
        holder = nodes.lock_holder(node or {})
        if holder is None or holder == st.name:
            return False
        for repair in repairs_by_node.get(st.node_name, ()):
            if repair["name"] == holder:
                # One being deleted still holds the node until its handler released it;
                # so does a Failed one with onFailure: Uncordon until its give-back has
                # run: taken over meanwhile, its give-back would take this repair's
                # drain signals off, and the runtime would take tasks again (1).
                gives_back = (
                    repair["phase"] == Phase.FAILED
                    and repair.get("onFailure") == OnFailure.UNCORDON
                )
                return repair["phase"] not in FINAL_PHASES or repair["deleting"] or gives_back
        # The holder is gone, or ended (a Failed repair with onFailure: KeepCordoned keeps
        # its node cordoned and gives nothing back): this repair takes the lock over, and
        # with it the record of the prior schedulability.
        return False

    async def patch_node(
        self, node: Mapping[str, Any], build: Callable[[Mapping[str, Any]], list[nodes.Op]]
    ) -> bool:
        """Writes `build(node)`; False if the node's markers changed since `node` was
        read (the fresh node is remembered, and the next pass decides on it)."""
        st = self.state
        ops = build(node)
        try:
            answer = await st.kube.patch_node(st.node_name, ops)
        except NodeChanged:
            fresh = await st.kube.get_node(st.node_name)
            if fresh is not None and build(slim_node(fresh)) == ops:
                raise  # refused although nothing it tests changed: not a race, an error
            before = node["metadata"]["resourceVersion"]
            st.patched_node = (before, slim_node(fresh)) if fresh else None
            return False
        st.patched_node = (node["metadata"]["resourceVersion"], slim_node(answer))
        return True

    async def finish_failure(self, now: datetime) -> None:
        """A Failed repair with onFailure: Uncordon that still holds its node (the
        operator died between the two writes, or the release failed): release it.
        Safe to repeat: give_back does nothing unless the lock is ours."""
        st = self.state
        spec = st.body.get("spec") or {}
        if st.status.phase == Phase.FAILED and spec.get("onFailure") == OnFailure.UNCORDON:
            await self.give_back_after_failure(now)

    async def give_back_after_failure(self, now: datetime) -> None:
        st = self.state
        if await give_back(st.kube, st.node_name, st.name, st.logger, st.wake.under_repair):
            status = st.status.model_copy(deep=True)
            status.conditions = set_condition(
                status.conditions,
                C.COND_UNCORDONED,
                True,
                "OnFailureUncordon",
                "node returned to service after the failure (onFailure: Uncordon)",
                now,
                status.observed_generation,
            )
            await self.report.write_status(status, now, None)


async def give_back(
    kube: Kube,
    node_name: str,
    repair: str,
    logger: kopf.Logger,
    under_repair: set[str],
    node: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Undo what a repair did to its node, if it holds the node: remove the drain
    signal and reopen the serving gate of the instances still there, then remove the
    taint and the lock and uncordon unless the node was cordoned before. The pods to
    unmark are found by their marks, read from the API server now: the index lags
    behind the repair's own last writes (invariant 9).

    The node leaves `under_repair` (the run's nodes held for a repair, which the
    serving-gate keeper leaves alone) once its pods are given back.

    `node` is the caller's view of the node, if it has one: the release is guarded
    by the markers it shows, so a view that lags only costs a re-read. A view that
    does not show our lock is confirmed from the API first. Returns the released node
    as the API server answered (None if the repair did not hold it)."""
    if node is None or nodes.lock_holder(node) != repair:
        node = await kube.get_node(node_name)
    if node is None or nodes.lock_holder(node) != repair:
        under_repair.discard(node_name)
        return None
    jobs: list[Awaitable[Any]] = []
    for pod in await kube.list_pods_on(node_name):
        if contract.is_terminating(pod) or not contract.is_instance(pod):
            continue
        key = contract.key(pod)
        if C.ANNOTATION_DRAINING in (pod["metadata"].get("annotations") or {}):
            jobs.append(
                kube.patch_pod(key, {"metadata": {"annotations": {C.ANNOTATION_DRAINING: None}}})
            )
        serving = contract.serving_status(pod)
        if serving == "False" or (contract.has_serving_gate(pod) and serving != "True"):
            jobs.append(
                kube.set_pod_condition(
                    key,
                    C.CONDITION_SERVING,
                    "True",
                    "NodeRepairEnded",
                    f"routed again: NodeRepair {repair} gave its node back",
                )
            )
    for result in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(result, ApiError) and result.status != 404:
            raise result
        if isinstance(result, BaseException) and not isinstance(result, ApiError):
            raise result
    under_repair.discard(node_name)
    for _ in range(5):
        ops = nodes.release(node)
        try:
            answer = await kube.patch_node(node_name, ops)
            logger.info(f"Node {node_name} given back.")
            return answer
        except NodeChanged:
            fresh = await kube.get_node(node_name)
            if fresh is not None and nodes.release(fresh) == ops:
                raise  # refused although nothing it tests changed: not a race, an error
            if fresh is None or nodes.lock_holder(fresh) != repair:
                return None
            node = fresh
    raise kopf.TemporaryError(f"node {node_name} kept changing; retrying the release", delay=1)


async def release_orphan(
    kube: Kube, node_name: str, holder: str, logger: kopf.Logger, under_repair: set[str]
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
    return await give_back(kube, node_name, holder, logger, under_repair) is not None
