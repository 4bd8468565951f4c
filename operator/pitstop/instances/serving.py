"""The serving gate outside repairs: every pod that declares the readiness gate
pitstop.dev/serving gets the condition True, unless its node is under repair
(locked). Declaring the gate is all a FaaS platform does; without this, gated
pods would never turn Ready."""

from __future__ import annotations

from typing import Any

import kopf

from pitstop import constants
from pitstop.cluster import nodes
from pitstop.cluster.indexes import UNDER_REPAIR, WAKERS, one
from pitstop.cluster.kube import ApiError, Kube
from pitstop.instances import contract

C = constants
REASON_IN_SERVICE = "NodeInService"


def wants_serving(pod: dict[str, Any] | kopf.Body, node: dict[str, Any] | None) -> bool:
    """The pod should be routed but its gate is not True."""
    if not contract.has_serving_gate(pod) or contract.serving_status(pod) == "True":
        return False
    if contract.is_terminating(pod) or not contract.is_instance(pod):
        return False
    if node is None or node["metadata"].get("name") in UNDER_REPAIR:
        return False
    return nodes.lock_holder(node) is None


async def open_gate(kube: Kube, key: str, logger: kopf.Logger) -> None:
    try:
        await kube.set_pod_condition(
            key,
            C.CONDITION_SERVING,
            "True",
            REASON_IN_SERVICE,
            "routed: its node is not under repair",
        )
    except ApiError as e:
        if e.status != 404:  # a pod that is gone needs nothing
            raise
    logger.debug(f"Serving gate opened for {key}.")


@kopf.on.event("pods")  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
async def on_pod(
    body: kopf.Body,
    memo: kopf.Memo,
    nodes_by_name: kopf.Index[str, Any],
    logger: kopf.Logger,
    **_: Any,
) -> None:
    node_name = body.get("spec", {}).get("nodeName")
    WAKERS.wake(node_name)  # a repair of this node re-evaluates it
    if node_name and wants_serving(body, one(nodes_by_name.get(node_name))):
        await open_gate(memo["kube"], contract.key(body), logger)


@kopf.on.event("nodes")  # type: ignore[arg-type]  # (index kwargs)
async def on_node(
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    pods_by_node: kopf.Index[str, Any],
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """A node released from repair: open the gates of the pods still on it."""
    node = {
        "metadata": {
            "name": name,
            "annotations": dict(body.get("metadata", {}).get("annotations") or {}),
        }
    }
    for pod in list(pods_by_node.get(name, ())):
        if wants_serving(pod, node):
            await open_gate(memo["kube"], contract.key(pod), logger)
