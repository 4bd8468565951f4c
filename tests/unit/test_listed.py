"""The drain ends only on the API server's word: when the indexes show no instance on
the node, a consistent list of its pods must agree (Observe.listed). The watch may lag
behind a pod bound just before the cordon (the simulation's seed 27). No cluster: the
API server is a stub that answers the one read."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pitstop.cluster.kube import ApiError
from pitstop.instances import contract
from pitstop.repair.daemon import Driver


class Pods:
    """The API server's pods on node n1, now."""

    def __init__(self, pods: list[dict[str, Any]], fail: bool = False) -> None:
        self.pods, self.fail, self.reads = pods, fail, 0

    async def list_pods_on(self, node_name: str) -> list[dict[str, Any]]:
        self.reads += 1
        if self.fail:
            raise ApiError(503, "the API server is unavailable")
        assert node_name == "n1"
        return self.pods


def pod(name: str, *, owner: str = "ReplicaSet", phase: str = "Running", **notes: str) -> Any:
    return {
        "metadata": {
            "namespace": "fn",
            "name": name,
            "uid": f"u-{name}",
            "ownerReferences": [{"kind": owner, "name": "x"}],
            "annotations": notes,
        },
        "spec": {"nodeName": "n1"},
        "status": {"phase": phase},
    }


def listed(api: Pods, found: list[contract.Instance] | None = None) -> int | None:
    d = Driver("r1", {"spec": {"nodeName": "n1"}}, api, logging.getLogger("t"))  # type: ignore[arg-type]
    return asyncio.run(d.observe.listed(found or []))


def test_the_instances_the_api_server_lists_are_counted_as_drain_would_evict_them() -> None:
    api = Pods(
        [
            pod("a"),
            pod("b", phase="Pending"),
            pod("ds", owner="DaemonSet"),
            pod("static", **{"kubernetes.io/config.mirror": "x"}),
            pod("done", phase="Succeeded"),
        ]
    )
    assert listed(api) == 2 and api.reads == 1


def test_an_empty_node_is_confirmed_empty() -> None:
    assert listed(Pods([pod("ds", owner="DaemonSet")])) == 0


def test_a_failed_read_proves_nothing() -> None:
    api = Pods([], fail=True)
    assert listed(api) is None and api.reads == 1


def test_no_read_while_the_watch_still_shows_instances() -> None:
    api = Pods([pod("a")])
    shown = contract.observe(pod("a"), None, None, None, None, [])
    assert listed(api, [shown]) is None and api.reads == 0
