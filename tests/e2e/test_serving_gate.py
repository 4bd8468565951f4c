"""The serving gate keeper on a real API server: a gated pod turns Ready because
pitstop writes its `pitstop.dev/serving` condition, and that condition carries what
`kubectl describe pod` and kstatus read: a reason, a message, a lastTransitionTime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.helpers import make_pool
from tests.e2e.kube import Cluster
from tests.e2e.workloads import deployment, ready_pods

pytestmark = pytest.mark.e2e

GATE = "pitstop.dev/serving"


def test_an_opened_gate_says_why_and_since_when(
    cluster: Cluster, namespace: str, pool: Any, running_operator: Any
) -> None:
    p = make_pool(cluster, pool)
    start = datetime.now(UTC) - timedelta(seconds=1)  # the condition's time has seconds only
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("fn", 2, p.selector, gated=True)
    )
    pods = ready_pods(cluster, namespace, "fn", 2)
    for pod in pods:
        cond = next(c for c in pod.status.conditions if c.type == GATE)
        assert (cond.status, cond.reason) == ("True", "NodeInService"), cond
        assert cond.message == "routed: its node is not under repair", cond
        assert cond.last_transition_time is not None, cond
        assert start <= cond.last_transition_time <= datetime.now(UTC), cond
