"""The serving gate outside repairs: every pod that declares the readiness gate
pitstop.dev/serving gets the condition True, unless its node is under repair
(locked). Declaring the gate is all a FaaS platform does; without this, gated
pods would never turn Ready."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Mapping
from typing import Any, cast

import aiohttp
import kopf

from pitstop import constants
from pitstop.cluster import nodes
from pitstop.cluster.indexes import one, wakeups
from pitstop.cluster.kube import ApiError, Kube
from pitstop.instances import contract

C = constants
REASON_IN_SERVICE = "NodeInService"


def wants_serving(
    pod: dict[str, Any] | kopf.Body, node: dict[str, Any] | None, under_repair: set[str]
) -> bool:
    """The pod should be routed but its gate is not True (`under_repair`: the nodes
    this run holds, whose lock its watch may not show yet)."""
    if not contract.has_serving_gate(pod) or contract.serving_status(pod) == "True":
        return False
    if contract.is_terminating(pod) or not contract.is_instance(pod):
        return False
    if node is None or node["metadata"].get("name") in under_repair:
        return False
    return nodes.lock_holder(node) is None


def gate_state(
    pod: dict[str, Any] | kopf.Body, node: dict[str, Any] | None, under_repair: set[str]
) -> str | None:
    """For pitstop_gated_pods: "open" (True), "held" (closed by a repair of its node),
    "waiting" (pitstop should open it: the pod cannot turn Ready until it does); None
    for a pod without the gate, or one not (or no longer) scheduled to run."""
    if not contract.has_serving_gate(pod) or contract.is_terminating(pod):
        return None
    if not contract.is_instance(pod) or node is None:
        return None
    if contract.serving_status(pod) == "True":
        return "open"
    return "waiting" if wants_serving(pod, node, under_repair) else "held"


class GateStates:
    """The gate state of every gated pod seen (namespace/name → state), kept from the
    pod events and counted when scraped (pitstop_gated_pods): one dict entry per pod,
    not a recount per event. One per operator run, in kopf's memo (`gate_states(memo)`;
    pitstop.registry makes it and points GATED_PODS at it)."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.retrying: dict[str, asyncio.Task[None]] = {}
        """The gate writes that failed and are being tried again, by pod (one each)."""

    def record(self, key: str, state: str | None) -> None:
        if state is None:
            self.states.pop(key, None)
        else:
            self.states[key] = state

    async def stop_retries(self) -> None:
        """Ends the run's gate write retries: none may write after its run stopped."""
        tasks = list(self.retrying.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def counts(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {("open",): 0, ("held",): 0, ("waiting",): 0}
        for state in list(self.states.values()):
            counts[(state,)] += 1
        return counts


MEMO_GATE_STATES = "gate_states"
"""Key of the run's GateStates in kopf's operator memo (and so in every object's)."""


def gate_states(memo: Mapping[str, Any]) -> GateStates:
    """This operator run's GateStates, from any handler's memo."""
    return cast(GateStates, memo[MEMO_GATE_STATES])


RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Seconds before each new try of a gate write that failed, then every 10 s: a pod's
gate is written on its watch events, and the pod may have none left to come (kopf
logs an event handler's error and drops it), so a failed write is pitstop's to redo."""
WRITE_ERRORS = (ApiError, aiohttp.ClientError, TimeoutError)
"""What a gate write that may succeed later raises: an answer other than 2xx (a 404
is none: the pod is gone), the connection, a timeout."""


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


async def open_or_retry(
    memo: Mapping[str, Any],
    key: str,
    node_name: str,
    nodes_by_name: kopf.Index[str, Any],
    pods_by_node: kopf.Index[str, Any],
    logger: kopf.Logger,
) -> None:
    """Opens the gate; if the write fails, tries again in the background (one task per
    pod) until it succeeds or the pod no longer wants it, judged before every try
    from the indexes as they are then (its node may be under repair by now)."""
    try:
        await open_gate(memo["kube"], key, logger)
        return
    except WRITE_ERRORS as e:
        logger.warning(f"Serving gate of {key} not written ({e}); trying again.")
    states = gate_states(memo)
    if key not in states.retrying:
        states.retrying[key] = asyncio.create_task(
            _retry(memo, key, node_name, nodes_by_name, pods_by_node, logger)
        )


async def _retry(
    memo: Mapping[str, Any],
    key: str,
    node_name: str,
    nodes_by_name: kopf.Index[str, Any],
    pods_by_node: kopf.Index[str, Any],
    logger: kopf.Logger,
) -> None:
    under_repair = wakeups(memo).under_repair
    try:
        for attempt in itertools.count():
            await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
            pod = next((p for p in pods_by_node.get(node_name, ()) if contract.key(p) == key), None)
            if pod is None or not wants_serving(
                pod, one(nodes_by_name.get(node_name)), under_repair
            ):
                return
            with contextlib.suppress(*WRITE_ERRORS):
                await open_gate(memo["kube"], key, logger)
                return
    finally:
        gate_states(memo).retrying.pop(key, None)


@kopf.on.cleanup()
async def stop_retries(memo: kopf.Memo, **_: Any) -> None:
    await gate_states(memo).stop_retries()


async def on_pod(
    body: kopf.Body,
    type: str | None,
    memo: kopf.Memo,
    nodes_by_name: kopf.Index[str, Any],
    pods_by_node: kopf.Index[str, Any],
    logger: kopf.Logger,
    **_: Any,
) -> None:
    node_name = body.get("spec", {}).get("nodeName")
    w = wakeups(memo)
    w.nodes.wake(node_name)  # a repair of this node re-evaluates it
    node = one(nodes_by_name.get(node_name)) if node_name else None
    state = None if type == "DELETED" else gate_state(body, node, w.under_repair)
    gate_states(memo).record(contract.key(body), state)
    if node_name and wants_serving(body, node, w.under_repair):
        key = contract.key(body)
        await open_or_retry(memo, key, node_name, nodes_by_name, pods_by_node, logger)


@kopf.on.event("nodes")  # type: ignore[arg-type]  # (index kwargs)
async def on_node(
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    nodes_by_name: kopf.Index[str, Any],
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
    under_repair = wakeups(memo).under_repair
    for pod in list(pods_by_node.get(name, ())):
        if wants_serving(pod, node, under_repair):
            key = contract.key(pod)
            await open_or_retry(memo, key, name, nodes_by_name, pods_by_node, logger)
