"""A closed gate is confirmed out of routing by the EndpointSlices as the API server
holds them after the closing, never by the watch's view alone: that view may still
show the not-ready endpoint published before the pod turned Ready (invariant 2; the
long run's seed 30000, docs/simulation.md). No cluster: the API server is a stub that
answers the one read."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pitstop import constants as C
from pitstop.cluster.kube import ApiError
from pitstop.instances import contract
from pitstop.repair.daemon import Driver

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Slices:
    """The API server's EndpointSlices of namespace fn, now."""

    def __init__(self, ready: dict[str, bool] | None, fail: bool = False) -> None:
        self.ready, self.fail, self.reads = ready or {}, fail, 0

    async def list_endpointslices(self, namespace: str) -> list[dict[str, Any]]:
        self.reads += 1
        if self.fail:
            raise ApiError(503, "the API server is unavailable")
        assert namespace == "fn"
        return [
            {
                "metadata": {"namespace": "fn", "name": "svc-abc"},
                "endpoints": [
                    {"targetRef": {"kind": "Pod", "name": n}, "conditions": {"ready": r}}
                    for n, r in self.ready.items()
                ],
            }
        ]


def pod(
    name: str = "a", serving: str = "False", ready: str = "False", stamp: str = "12:00:00"
) -> dict[str, Any]:
    at = f"2024-05-01T{stamp}Z"
    return {
        "metadata": {"namespace": "fn", "name": name, "uid": f"u-{name}"},
        "spec": {"nodeName": "n1", "readinessGates": [{"conditionType": C.CONDITION_SERVING}]},
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": C.CONDITION_SERVING, "status": serving, "lastTransitionTime": at},
                {"type": "Ready", "status": ready, "lastTransitionTime": at},
            ],
        },
    }


def observe(
    d: Driver, pods: list[dict[str, Any]], view: dict[str, bool], now: datetime = T0
) -> dict[str, contract.Instance]:
    """One pass's instances: the watch's view of the slices is `view` (pod name → ready)."""
    seen = {f"fn/{n}": [r] for n, r in view.items()}
    found = d.observe.instances(now, {"n1": pods}, seen)  # type: ignore[arg-type]
    confirmed = asyncio.run(d.observe.confirm_deregistered(found))
    return {i.key.split("/")[1]: i for i in confirmed}


def driver(api: Slices) -> Driver:
    return Driver("r1", {"spec": {"nodeName": "n1"}}, api, logging.getLogger("t"))  # type: ignore[arg-type]


def test_a_stale_not_ready_endpoint_proves_nothing_while_the_api_server_says_ready() -> None:
    # Seed 30000: the view still shows the endpoint published before the pod turned
    # Ready; the endpoints controller has since published it ready and not yet taken
    # it out. The old code counted it deregistered and evicted it still routed.
    api = Slices({"a": True})
    i = observe(driver(api), [pod()], {"a": False})["a"]
    assert not i.deregistered and i.ready_endpoint
    assert api.reads == 1


def test_the_api_servers_not_ready_endpoint_confirms_it_once() -> None:
    api = Slices({"a": False})
    d = driver(api)
    assert observe(d, [pod()], {"a": False})["a"].deregistered
    assert observe(d, [pod()], {"a": False}, T0 + timedelta(seconds=1))["a"].deregistered
    assert api.reads == 1, "a confirmed closing is not read again"


def test_a_pod_in_no_slice_of_the_api_server_is_out_of_routing() -> None:
    api = Slices({"other": True})
    assert observe(driver(api), [pod()], {})["a"].deregistered


def test_a_pod_the_view_still_shows_ready_is_not_read_for() -> None:
    # Its kubelet has not turned it unready yet: a read now could precede the
    # endpoints controller's change, so it waits for the pod's own Ready=False.
    api = Slices({"a": False})
    i = observe(driver(api), [pod(ready="True")], {"a": False})["a"]
    assert not i.deregistered and api.reads == 0


def test_a_failed_read_proves_nothing() -> None:
    api = Slices(None, fail=True)
    i = observe(driver(api), [pod()], {"a": False})["a"]
    assert not i.deregistered and api.reads == 1


def test_a_gate_closed_again_is_confirmed_anew() -> None:
    api = Slices({"a": False})
    d = driver(api)
    assert observe(d, [pod()], {"a": False})["a"].deregistered
    observe(d, [pod(serving="True", ready="True", stamp="12:00:05")], {"a": True})
    api.ready = {"a": True}  # reopened, Ready again, published ready; closed once more
    later = T0 + timedelta(seconds=20)
    i = observe(d, [pod(stamp="12:00:10")], {"a": False}, later)["a"]
    assert not i.deregistered and api.reads == 2


def test_pods_without_the_gate_or_open_or_async_are_left_as_the_view_shows() -> None:
    api = Slices({"a": True, "b": True})
    ungated = pod("a")
    ungated["spec"]["readinessGates"] = []
    got = observe(driver(api), [ungated, pod("b", serving="True", ready="True")], {"b": True})
    assert api.reads == 0
    assert got["b"].ready_endpoint and not got["a"].ready_endpoint


def recreated(p: dict[str, Any]) -> dict[str, Any]:
    """The same pod, deleted and made again under its name (a StatefulSet's, or one
    pinned with nodeName): a new uid, its gate closed in the same second."""
    p["metadata"]["uid"] = "u-a-2"
    return p


def test_a_pod_made_again_under_its_name_is_confirmed_anew() -> None:
    # The confirmation was kept by name and closing stamp: a new pod of that name
    # whose gate closed in the same second passed as confirmed, though the view that
    # shows it out of routing may be the stale one of seed 30000.
    api = Slices({"a": False})
    d = driver(api)
    assert observe(d, [pod()], {"a": False})["a"].deregistered
    api.ready = {"a": True}
    i = observe(d, [recreated(pod())], {"a": False}, T0 + timedelta(seconds=1))["a"]
    assert not i.deregistered and api.reads == 2


def test_a_pod_made_again_under_its_name_waits_from_its_own_closing() -> None:
    # The deregistration wait counts from when this process first saw the gate
    # closed; the old pod's sighting must not shorten the new pod's wait.
    d = driver(Slices({"a": False}))
    observe(d, [pod()], {"a": False})
    later = T0 + timedelta(seconds=30)
    i = observe(d, [recreated(pod())], {"a": False}, later)["a"]
    assert i.gate_closed_since == later
