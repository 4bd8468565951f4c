"""Two operator replicas on one Lease (issue: HA with one leader): the standby
changes nothing, a SIGKILLed leader is replaced within the lease duration + 5 s
while a burst of policy admissions keeps the pool limits, and a SIGTERMed leader
hands over at once. A deposed leader's late status write is refused by the API
server (the guard of the phase it was decided from).

Who acted when is read from the API server's audit log (each replica names
itself in its User-Agent), not from the operators' own logs.

The session's operator is stopped for these tests (two independent leaders would
break the pool limits by design) and restarted afterwards."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.operator import Operator
from tests.e2e.policies_helpers import (
    LimitsWatch,
    Policies,
    RepairCrew,
    inject_many,
    phase,
    policies_fixture,  # noqa: F401  (the `policies` fixture)
    policy_spec,
    repairs_for,
)
from tests.e2e.repairs import Repairs

pytestmark = pytest.mark.e2e

LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 8.0, 5.0, 1.0
ELECTION = (
    f"--lease-duration={LEASE_DURATION}",
    f"--renew-deadline={RENEW_DEADLINE}",
    f"--retry-period={RETRY_PERIOD}",
)


@pytest.fixture
def replicas(running_operator: Operator, tmp_path: Path) -> Iterator[Callable[..., Operator]]:
    """Makes operator replicas (same ServiceAccount, own identities) on the shared
    Lease, with the session's operator stopped meanwhile."""
    running_operator.stop()
    made: list[Operator] = []
    tag = uuid.uuid4().hex[:4]

    def make(name: str, env: dict[str, str] | None = None) -> Operator:
        op = Operator(
            running_operator.kubeconfig,
            tmp_path / f"{name}.log",
            *ELECTION,
            identity=f"ha-{tag}-{name}",
            env=env,
        )
        made.append(op)
        return op

    yield make
    for op in made:
        op.stop()
    running_operator.start()


@dataclass(frozen=True)
class Write:
    agent: str
    verb: str
    resource: str
    name: str
    received: datetime
    done: datetime


def audit_writes(cluster: Cluster, identities: list[str]) -> list[Write]:
    """Writes by the given replicas, from the API server's audit log (leases excluded:
    taking the Lease is the handover itself)."""
    log = Path(cluster.kubeconfig).parent / "logs" / "audit.log"
    if not log.exists():
        pytest.skip(f"no audit log at {log} (a cluster not started by hack/cluster.sh)")
    writes: list[Write] = []
    for line in log.read_text().splitlines():
        event = json.loads(line)
        agent = event.get("userAgent", "")
        who = next((i for i in identities if f"({i})" in agent), None)
        ref = event.get("objectRef") or {}
        if who is None or ref.get("resource") == "leases":
            continue
        writes.append(
            Write(
                who,
                event["verb"],
                ref.get("resource", ""),
                ref.get("name", ""),
                _time(event["requestReceivedTimestamp"]),
                _time(event["stageTimestamp"]),
            )
        )
    return sorted(writes, key=lambda w: w.received)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_one_actor_at_a_time(writes: list[Write], first: str, second: str) -> None:
    """All of `first`'s writes ended before `second` sent its first one."""
    mine = [w for w in writes if w.agent == first]
    theirs = [w for w in writes if w.agent == second]
    assert mine, f"{first} made no write at all: the audit proves nothing"
    assert theirs, f"{second} made no write after taking over"
    last_first = max(w.done for w in mine)
    first_second = min(w.received for w in theirs)
    assert last_first <= first_second, (
        f"{second} wrote at {first_second} before {first}'s last write ended at {last_first}: "
        f"{[w for w in theirs if w.received < last_first][:5]}"
    )


def lease_holder(cluster: Cluster) -> str | None:
    from kubernetes import client

    lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease("pitstop", "pitstop-system")
    return lease.spec.holder_identity


def test_standby_changes_nothing_and_takes_over_a_killed_leader_within_the_limits(
    cluster: Cluster, pool: Any, policies: Policies, replicas: Callable[[str], Operator]
) -> None:
    a, b = replicas("a"), replicas("b")
    a.start()  # waits until it leads
    b.start(wait=False)
    wait_until("b standing by", lambda: b.role() == "standby", timeout=60)
    assert lease_holder(cluster) == a.identity

    # A burst of policy admissions: 10 of 40 nodes fail at once, 2 repairs at a time.
    p = pool(40)
    sick = p.names[:10]
    rp = policies.create(
        p, policy_spec(p, maxUnhealthy="40%", maxConcurrentRepairs=2, minAvailable="90%")
    )
    policies.wait_observed(rp)
    with (
        LimitsWatch(cluster, p, max_active=2, min_available=36) as watch,
        RepairCrew(cluster, p.names) as crew,
    ):
        inject_many(cluster, p, sick, wait=False)
        wait_until("3 repairs under way", lambda: len(watch.left_pending) >= 3, timeout=60)
        assert b.role() == "standby"
        a.kill()
        killed = time.monotonic()
        wait_until("b leading", lambda: b.role() == "leader", timeout=LEASE_DURATION + 15)
        took_over = time.monotonic() - killed
        wait_until(
            "10 repairs Succeeded",
            lambda: sum(phase(r) == "Succeeded" for r in repairs_for(cluster, p.names)) >= 10,
            timeout=180,
            interval=0.5,
        )
    print(f"\nSIGKILLed leader replaced after {took_over:.1f} s (lease {LEASE_DURATION:g} s)")
    assert took_over <= LEASE_DURATION + 5
    assert lease_holder(cluster) == b.identity
    assert not watch.violations, watch.violations[:5]
    assert watch.peak_locked <= 2
    made = repairs_for(cluster, p.names)
    by_node: dict[str, list[str]] = {}
    for r in made:
        by_node.setdefault(r["spec"]["nodeName"], []).append(r["metadata"]["name"])
    assert sorted(by_node) == sorted(sick)
    assert all(len(v) == 1 for v in by_node.values()), f"duplicates: {by_node}"
    assert len(crew.done) == 10
    writes = audit_writes(cluster, [a.identity, b.identity])
    assert_one_actor_at_a_time(writes, a.identity, b.identity)


def test_sigterm_releases_the_lease_and_the_standby_leads_at_once(
    cluster: Cluster, replicas: Callable[[str], Operator]
) -> None:
    a, b = replicas("a"), replicas("b")
    a.start()
    b.start(wait=False)
    wait_until("b standing by", lambda: b.role() == "standby", timeout=60)
    assert a.proc is not None
    a.proc.terminate()  # SIGTERM: kopf stops, then the Lease is released
    signalled = time.monotonic()
    wait_until("b leading", lambda: b.role() == "leader", timeout=10, interval=0.05)
    took_over = time.monotonic() - signalled
    assert a.proc.wait(timeout=30) == 0
    print(f"\nstandby leading {took_over:.2f} s after SIGTERM to the leader")
    # Sooner than the Lease could have expired: it was released (as the log says
    # below). How much sooner is a figure of the machine's load, not a property.
    assert took_over < LEASE_DURATION
    assert lease_holder(cluster) == b.identity
    assert "Released the Lease" in a.log_text()


LEADER_LABEL = "pitstop.dev/leader"
NAMESPACE = "pitstop-system"


@pytest.fixture
def stand_in_pods(cluster: Cluster) -> Iterator[Callable[[str], str]]:
    """Pods in the operator's namespace standing for the replicas' own: the processes
    run here, each told its Pod's name as the downward API tells it. A node selector
    that matches no node keeps them Pending (no kubelet, fake or real, runs them)."""
    from kubernetes import client

    made: list[str] = []

    def make(name: str) -> str:
        pod = f"ha-pod-{uuid.uuid4().hex[:6]}-{name}"
        body = client.V1Pod(
            metadata=client.V1ObjectMeta(name=pod, labels={"app": "pitstop-e2e-ha"}),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="c", image="pause")],
                node_selector={"e2e.pitstop.dev/no-such-node": "true"},
            ),
        )
        cluster.core.create_namespaced_pod(NAMESPACE, body)
        made.append(pod)
        return pod

    yield make
    for pod in made:
        cluster.core.delete_namespaced_pod(pod, NAMESPACE, grace_period_seconds=0)


def test_the_leaders_pod_alone_carries_the_alerts_label(
    cluster: Cluster,
    replicas: Callable[..., Operator],
    stand_in_pods: Callable[[str], str],
) -> None:
    """The alerts Service selects pitstop.dev/leader=true: the leader labels its own
    Pod, a replica clears the label from its own at start (here: b's Pod kept it, as
    a fenced leader's does), and a new leader clears it from the old one's Pod."""

    def labelled() -> set[str]:
        pods = cluster.core.list_namespaced_pod(NAMESPACE, label_selector=LEADER_LABEL).items
        return {p.metadata.name for p in pods if p.metadata.labels.get(LEADER_LABEL) == "true"}

    pod_a, pod_b = stand_in_pods("a"), stand_in_pods("b")
    a = replicas("a", env={"POD_NAME": pod_a, "POD_NAMESPACE": NAMESPACE})
    b = replicas("b", env={"POD_NAME": pod_b, "POD_NAMESPACE": NAMESPACE})
    a.start()
    wait_until("a's Pod labelled", lambda: labelled() == {pod_a}, timeout=30)
    # b's Pod carries the label from an earlier life (a leader fenced, then restarted).
    cluster.core.patch_namespaced_pod(
        pod_b, NAMESPACE, {"metadata": {"labels": {LEADER_LABEL: "true"}}}
    )
    b.start(wait=False)
    wait_until("b standing by", lambda: b.role() == "standby", timeout=60)
    assert labelled() == {pod_a}  # b cleared its own before it answered /healthz

    a.kill()  # its Pod keeps the label, as a fenced leader's does
    wait_until("b leading", lambda: b.role() == "leader", timeout=LEASE_DURATION + 15)
    wait_until("b's Pod alone labelled", lambda: labelled() == {pod_b}, timeout=30)
    assert "Forbidden" not in a.log_text() + b.log_text()


def test_a_deposed_leaders_late_status_write_is_refused_by_the_api_server(
    cluster: Cluster,
    repairs: Repairs,
    running_operator: Operator,
    replicas: Callable[..., Operator],
    pool: Callable[[int], Pool],
) -> None:
    """Long-run seed 60076 against the real API server, with the operator's
    ServiceAccount (its RBAC allows the JSON Patch of noderepairs/status): a write
    decided from Repairing, sent by a leader deposed meanwhile, lands after the new
    leader wrote Succeeded. Its `test` of the phase fails: refused (422), the status
    stays Succeeded, and the writer reads it back instead (invariant 6)."""
    import asyncio
    import logging

    import kopf

    from pitstop.cluster.kube import Kube, StatusChanged
    from pitstop.cluster.kubeconfig import connection_info, resolve_source
    from pitstop.models import NodeRepairStatus
    from pitstop.models import Phase as P
    from pitstop.repair.report import Report
    from pitstop.repair.state import RepairState

    node = pool(1).names[0]  # no operator runs (replicas stopped it): nothing drives it
    name = repairs.create(node)
    source = resolve_source(running_operator.kubeconfig, {})
    began = datetime.now(UTC)

    async def deposed_leader() -> RepairState:
        kube = Kube(lambda: connection_info(source, "deposed"))
        state = RepairState(name, kopf.Body(repairs.get(name)), kube, logging.getLogger())
        report = Report(state)
        try:
            for p in (P.PENDING, P.REPAIRING):  # the first write: there is no status yet
                await report.write_status(
                    NodeRepairStatus(phase=p, phase_start_time=began), began, None
                )
            assert phase(repairs.get(name)) == "Repairing", "its own writes land"
            cluster.custom.patch_cluster_custom_object_status(  # the new leader finished it
                "pitstop.dev", "v1alpha1", "noderepairs", name, {"status": {"phase": "Succeeded"}}
            )
            late = NodeRepairStatus(phase=P.UNCORDONING, phase_start_time=began)
            with pytest.raises(StatusChanged):
                await report.write_status(late, began + timedelta(seconds=2), None)
        finally:
            await kube.close()
        return state

    state = asyncio.run(deposed_leader())
    assert phase(repairs.get(name)) == "Succeeded", "a final phase stays final"
    assert state.status.phase == P.SUCCEEDED, "read back: the next decision starts there"
