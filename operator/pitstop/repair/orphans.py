"""Orphaned locks: a node whose lock (`pitstop.dev/repair`) names a NodeRepair that no
longer exists, because it was force-deleted without its finalizer. Nothing else would
give such a node back until the node's next repair inherited the lock (invariant 4).

Swept on the node's own events (so also at start-up, from kopf's initial listing, and
after every re-list) and when a NodeRepair's deletion arrives. Idempotent: the release
is guarded by the node's markers (JSON Patch `test`s of the lock) and only done while
the lock still names the vanished repair, so two sweeps (or the repair's own Gone
path) never release twice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from pitstop import constants, metrics
from pitstop.cluster import nodes
from pitstop.cluster.indexes import one, wakeups
from pitstop.cluster.kube import Kube
from pitstop.repair.act_node import release_orphan

C = constants


async def sweep(
    kube: Kube,
    node: Mapping[str, Any],
    repairs_by_node: kopf.Index[str, Any],
    logger: kopf.Logger,
    under_repair: set[str],
) -> bool:
    name = node.get("metadata", {}).get("name")
    if not name:
        return False
    live = [r["name"] for r in repairs_by_node.get(name, ())]
    holder = nodes.orphaned_lock(node, live)
    if holder is None or not await release_orphan(kube, name, holder, logger, under_repair):
        return False
    report(node, holder, logger)
    return True


def report(node: Mapping[str, Any], holder: str, logger: kopf.Logger) -> None:
    """The Event and the metric of a released orphaned lock (also used by a repair's
    own daemon when it finds its repair gone without the finalizer, and wins the race)."""
    metrics.ORPHANED_LOCKS.inc()
    name = node.get("metadata", {}).get("name")
    message = f"lock of NodeRepair {holder}, which no longer exists, released; node given back"
    logger.warning(f"Node {name}: {message}.")
    reason = C.REASON_ORPHANED_LOCK_RELEASED
    kopf.event(cast(kopf.Body, node), type="Warning", reason=reason, message=message)


# type: ignore: kopf's protocols omit index kwargs
@kopf.on.event("nodes", annotations={C.ANNOTATION_REPAIR: kopf.PRESENT})  # type: ignore[arg-type]
async def sweep_node(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    repairs_by_node: kopf.Index[str, Any],
    **_: Any,
) -> None:
    """A locked node: is its repair still there?"""
    await sweep(memo["kube"], body, repairs_by_node, logger, wakeups(memo).under_repair)


@kopf.on.event(C.GROUP, C.VERSION, C.NODEREPAIR_PLURAL)  # type: ignore[arg-type]  # (index kwargs)
async def sweep_after_deletion(
    type: str | None,
    spec: kopf.Spec,
    memo: kopf.Memo,
    logger: kopf.Logger,
    nodes_by_name: kopf.Index[str, Any],
    repairs_by_node: kopf.Index[str, Any],
    **_: Any,
) -> None:
    """A repair gone: a normal deletion released its node in the finalizer, a forced
    one left the lock; the node may send no event of its own for a while."""
    if type != "DELETED":
        return
    node = one(nodes_by_name.get(spec.get("nodeName") or ""))
    if node is not None:
        await sweep(memo["kube"], node, repairs_by_node, logger, wakeups(memo).under_repair)
