"""Pods on their way out are no longer polled (issue 22): an evicted or terminating
instance may close its metrics port at any moment, and that is no TaskSourceUnreachable
(no cluster, no network: the driver's observation with a stub poller)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pitstop import constants as C
from pitstop.instances.sources.daemon import Indexed
from pitstop.instances.sources.errors import UNREACHABLE, SourceError
from pitstop.instances.sources.profiles import Profile, parse_profile
from pitstop.instances.sources.trust import Reading, SignalState
from pitstop.repair.daemon import Driver

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MARK = "2024-05-01T11:59:59Z"


def watchdog() -> Profile:
    body = {
        "metadata": {"name": "of", "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "fn"}},
            "kind": "sync",
            "tasks": {"prometheus": {"port": 8081, "metric": "http_requests_in_flight"}},
            "drainSignal": {"none": {}},
        },
    }
    p = parse_profile(body)
    assert isinstance(p, Profile)
    return p


class ClosedPort:
    """The poller's view: every poll since T0 + 1 s found the port closed."""

    def signal_state(self, key: str, profile: Profile) -> SignalState | None:
        return None

    def reading(self, key: str, profile: Profile) -> Reading | None:
        refused = SourceError(UNREACHABLE, "GET http://10.0.0.7:8081/metrics: connection refused")
        return Reading(T0 + timedelta(seconds=1), error=refused)


def pod(terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "namespace": "fn",
        "name": "a",
        "uid": "u1",
        "labels": {"app": "fn"},
        "annotations": {C.ANNOTATION_DRAINING: MARK},
    }
    if terminating:
        meta["deletionTimestamp"] = "2024-05-01T12:00:02Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": "n1", "containers": [{}]},
        "status": {"phase": "Running", "podIP": "10.0.0.7"},
    }


def driver() -> Driver:
    d = Driver("r1", {"spec": {"nodeName": "n1"}}, None, logging.getLogger("t"), ClosedPort())  # type: ignore[arg-type]
    profiles = {"of": [Indexed(watchdog())]}
    d.observe.instances(T0, {"n1": [pod()]}, {}, profiles)  # type: ignore[arg-type]
    return d


def observe(d: Driver, p: dict[str, Any]) -> Any:
    profiles = {"of": [Indexed(watchdog())]}
    (found,) = d.observe.instances(T0 + timedelta(seconds=5), {"n1": [p]}, {}, profiles)  # type: ignore[arg-type]
    return found


def test_a_live_instance_whose_port_is_closed_is_unreachable() -> None:
    # The rule the two below depart from: a running pod that gives no count is busy.
    d = driver()
    found = observe(d, pod())
    assert found.tasks.error is not None and found.tasks.busy
    assert len(d.state.targets) == 1


def test_a_terminating_instance_is_not_polled() -> None:
    d = driver()
    found = observe(d, pod(terminating=True))
    assert d.state.targets == [], "the poller is told to leave it alone"
    assert found.tasks.error is None and found.terminating


def test_an_evicted_instance_is_not_polled_before_its_deletion_shows() -> None:
    d = driver()
    d.state.sent.add(("evict", "fn/a"))  # accepted; the index does not show it terminating yet
    found = observe(d, pod())
    assert d.state.targets == []
    assert found.tasks.error is None
