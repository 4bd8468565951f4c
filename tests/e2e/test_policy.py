"""RepairPolicies on the real control plane: node conditions held for their duration
become NodeRepairs (and flapping ones do not), deterministic names across operator
restarts, the storm guard, the pool limits under a burst of failures (checked
continuously from outside, also across a SIGKILLed operator), pausing, manual
repairs counting against the limits, overlapping pools and the printer columns;
and, found while writing these, a repair that held its node when the operator
crashed, policies and repairs deleted right after their creation, and the storm
message of a paused policy.

Each test has its own pool (`pool=<id>`) and policies selecting only it. Repairs
use the Manual strategy: the test, or a RepairCrew thread, heals the node and
annotates the repair `pitstop.dev/repaired=true` once it is Repairing."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.barriers import decided_again
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.operator import Operator
from tests.e2e.policies_helpers import (
    DEADLOCK,
    LOCK,
    POLICY_LABEL,
    RP_PLURAL,
    LimitsWatch,
    Policies,
    RepairCrew,
    heal,
    inject,
    inject_many,
    is_active,
    mark_repaired,
    no_repair_for,
    parse_time,
    phase,
    policies_fixture,  # noqa: F401  (the `policies` fixture)
    policy_spec,
    repairs_for,
    wait_repair_phase,
)
from tests.e2e.repairs import GROUP, VERSION, Repairs

pytestmark = pytest.mark.e2e

MANUAL = {"strategy": "Manual", "timeoutSeconds": 600}
VERIFY = {"stableSeconds": 1, "timeoutSeconds": 30}


def deadlock_after(duration: str) -> list[dict[str, str]]:
    return [{"type": DEADLOCK, "status": "True", "duration": duration}]


def one_repair(cluster: Cluster, node: str, timeout: float = 20) -> dict[str, Any]:
    found: list[dict[str, Any]] = wait_until(
        f"a NodeRepair for {node}", lambda: repairs_for(cluster, [node]), timeout=timeout
    )
    assert len(found) == 1, [r["metadata"]["name"] for r in found]
    return found[0]


def names(repairs: list[dict[str, Any]]) -> list[str]:
    return sorted(r["metadata"]["name"] for r in repairs)


# --- conditions become repairs ---


def test_condition_becomes_a_repair_after_its_duration_and_not_before(
    cluster: Cluster, pool: Any, policies: Policies
) -> None:
    p = pool(2)
    node = p.names[0]
    rp = policies.create(p, policy_spec(p, unhealthyConditions=deadlock_after("3s")))
    policies.wait_observed(rp)

    cond = inject(cluster, node)
    since = cond.last_transition_time  # whole seconds, at or before the real transition
    # Not before its duration: nothing until 2.7 s after the transition.
    while datetime.now(UTC) < since + timedelta(seconds=2.7):
        found = repairs_for(cluster, [node])
        assert not found, f"repair before the 3s duration: {names(found)}"
        time.sleep(0.05)
    # Then at once (3 s, and a margin for a loaded machine).
    deadline = since + timedelta(seconds=4.5)
    found = wait_until(
        f"a NodeRepair for {node}",
        lambda: repairs_for(cluster, [node]),
        timeout=max(0.1, (deadline - datetime.now(UTC)).total_seconds()),
        interval=0.05,
    )
    assert len(found) == 1, names(found)
    repair = found[0]
    meta, spec = repair["metadata"], repair["spec"]
    created = parse_time(meta["creationTimestamp"])
    assert created >= since + timedelta(seconds=3), (created, since)

    assert meta["labels"][POLICY_LABEL] == rp
    assert not meta.get("ownerReferences"), "policy repairs are owner-free"
    assert spec["nodeName"] == node
    assert DEADLOCK in spec["reason"], spec["reason"]
    assert spec["repair"]["strategy"] == "Manual"
    assert spec["repair"]["timeoutSeconds"] == 600
    assert spec["verify"]["stableSeconds"] == 1
    assert spec["verify"]["timeoutSeconds"] == 30
    assert not repairs_for(cluster, [p.names[1]]), "the healthy node has no repair"

    made = policies.wait_event(rp, "NodeRepairCreated", "Normal")
    assert any(
        meta["name"] in e.message and node in e.message and DEADLOCK in e.message for e in made
    ), "one Event names the repair, the node and the cause"
    reasons = {e.reason for e in policies.events(rp)}
    assert "UnhealthyNodeDetected" not in reasons, "only a fault left unrepaired is a Warning"
    status = policies.wait_status(rp, "lastRepairTime", lambda s: s.get("lastRepairTime"))
    assert status["nodes"] == 2 and status["unhealthyNodes"] == 1


def test_flapping_condition_creates_nothing(
    cluster: Cluster, pool: Any, policies: Policies
) -> None:
    p = pool(2)
    flappy, steady = p.names
    rp = policies.create(p, policy_spec(p, unhealthyConditions=deadlock_after("3s")))
    policies.wait_observed(rp)

    for _ in range(2):
        inject(cluster, flappy)
        time.sleep(1)
        heal(cluster, flappy)
    healed = time.monotonic()
    # A fault that holds, on the other node, proves the policy is at work meanwhile.
    inject(cluster, steady)
    one_repair(cluster, steady, timeout=10)
    no_repair_for(cluster, [flappy], seconds=max(0.0, healed + 5 - time.monotonic()))


def test_the_same_fault_never_yields_two_repairs_across_restarts(
    cluster: Cluster, pool: Any, policies: Policies, running_operator: Operator
) -> None:
    p = pool(3)
    node, witness, witness2 = p.names
    rp = policies.create(p, policy_spec(p))
    inject(cluster, node)
    first = one_repair(cluster, node)["metadata"]["name"]

    running_operator.kill()
    running_operator.start()
    # A fault injected after the restart gets its repair: the restarted policy daemon
    # has been through the pool, the first node included.
    inject(cluster, witness)
    one_repair(cluster, witness)
    assert names(repairs_for(cluster, [node])) == [first]

    # Finished while the fault stays (verify checks Ready only): the repair of this
    # fault exists, Succeeded, so the same fault must not yield another.
    wait_repair_phase(cluster, first, "Repairing", timeout=30)
    mark_repaired(cluster, first)
    wait_repair_phase(cluster, first, "Succeeded", timeout=30)
    assert node_condition_status(cluster, node) == "True", "the fault is still there"
    running_operator.kill()
    running_operator.start()
    inject(cluster, witness2)
    one_repair(cluster, witness2)
    # Only the restarted process counts 3 (witness2 came after the restart): the pass
    # that wrote it judged the first node's fault too, and made its repairs first.
    policies.wait_status(rp, "3 unhealthy", lambda s: s.get("unhealthyNodes") == 3)
    assert names(repairs_for(cluster, [node])) == [first]


def test_a_deleted_automatic_repair_is_not_made_again_for_the_same_fault(
    cluster: Cluster, pool: Any, policies: Policies, running_operator: Operator
) -> None:
    """`kubectl delete noderepair` of a policy's repair declines its fault: no new
    repair (no second cordon, eviction, repair) while the fault is unchanged, also
    after a restart of the operator; a new fault of the node is repaired again."""
    p = pool(3)
    node, witness, _ = p.names
    rp = policies.create(p, policy_spec(p))
    inject(cluster, node)
    first = one_repair(cluster, node)["metadata"]["name"]
    wait_repair_phase(cluster, first, "Repairing", timeout=30)
    cluster.custom.delete_cluster_custom_object(GROUP, VERSION, "noderepairs", first)
    wait_until(f"{first} gone", lambda: not repairs_for(cluster, [node]), timeout=30)
    no_repair_for(cluster, [node], seconds=2)
    declined = policies.wait_event(rp, "NodeRepairDeclined", "Normal")
    assert any(first in e.message and "until" in e.message for e in declined), declined
    status = policies.wait_status(
        rp,
        "the decline recorded",
        lambda s: any(r.get("declinedUntil") for r in s.get("repairs") or []),
    )
    assert [r["repair"] for r in status["repairs"]] == [first], status["repairs"]

    running_operator.kill()
    running_operator.start()
    inject(cluster, witness)  # the restarted policy has been through its pool
    one_repair(cluster, witness)
    no_repair_for(cluster, [node], seconds=1)
    assert not cluster.core.read_node(node).spec.unschedulable

    heal(cluster, node)
    inject(cluster, node)  # a new transition: a new fault
    second = one_repair(cluster, node)["metadata"]["name"]
    assert second != first


def node_condition_status(cluster: Cluster, node: str) -> str | None:
    for c in cluster.core.read_node(node).status.conditions or []:
        if c.type == DEADLOCK:
            return str(c.status)
    return None


# --- the storm guard ---


def test_storm_guard_suppresses_new_repairs(
    cluster: Cluster, pool: Any, policies: Policies
) -> None:
    """30 of 50 nodes unhealthy, maxUnhealthy 40% (20): no repair at all."""
    p = pool(50)
    sick = p.names[:30]
    inject_many(cluster, p, sick)
    time.sleep(1)  # the operator's node watch has seen them too
    rp = policies.create(
        p, policy_spec(p, maxUnhealthy="40%", maxConcurrentRepairs=2, minAvailable="90%")
    )

    status = policies.wait_status(
        rp,
        "StormActive",
        lambda s: any(
            c["type"] == "StormActive" and c["status"] == "True" for c in s.get("conditions") or []
        ),
    )
    storm = next(c for c in status["conditions"] if c["type"] == "StormActive")
    assert storm["reason"] == "MaxUnhealthyExceeded", storm
    assert "30 of 50" in storm["message"], storm
    assert (status["nodes"], status["unhealthyNodes"]) == (50, 30), status
    suppressed = status["suppressed"]
    assert suppressed["active"] is True and suppressed["reason"] == "MaxUnhealthyExceeded"
    assert sorted(suppressed["nodes"]) == sorted(sick)
    events = policies.wait_event(rp, "StormActive", "Warning")
    assert "30 of 50" in events[0].message, events[0].message
    # The pass that wrote that status judged all 30 and made its repairs (none)
    # before writing it; a repair of an earlier pass would be there by now.
    assert not repairs_for(cluster, p.names)

    # Below the limit again (19 of 50, limit 20): the guard lifts and repairs start,
    # for unhealthy nodes only (which of the healed ones still counted when the guard
    # lifted is a race, so only the always-healthy nodes are sure to get none).
    for node in sick[:11]:
        heal(cluster, node, wait=False)
    policies.wait_status(
        rp,
        "StormActive False",
        lambda s: any(
            c["type"] == "StormActive" and c["status"] == "False" for c in s.get("conditions") or []
        ),
    )
    wait_until(
        "repairs for the 19 still unhealthy nodes",
        lambda: {r["spec"]["nodeName"] for r in repairs_for(cluster, p.names)} >= set(sick[11:]),
        timeout=30,
    )
    assert not repairs_for(cluster, p.names[30:]), "healthy nodes get no repair"


def test_storm_message_gives_the_counts_also_when_paused(
    cluster: Cluster, pool: Any, policies: Policies
) -> None:
    """The StormActive condition and Event say how many nodes are unhealthy, whatever
    else holds repairs back (here: the policy is paused)."""
    p = pool(5)
    rp = policies.create(p, policy_spec(p, maxUnhealthy=1, paused=True))
    inject_many(cluster, p, p.names[:3])
    status = policies.wait_status(
        rp,
        "StormActive with all three faults counted",
        lambda s: any(
            c["type"] == "StormActive" and c["status"] == "True" and "3 of 5" in c["message"]
            for c in s.get("conditions") or []
        ),
    )
    assert status["suppressed"]["reason"] == "Paused", status["suppressed"]
    # The Event is posted when the storm begins: with 2 or 3 of the faults seen.
    event = policies.wait_event(rp, "StormActive", "Warning")[0]
    assert re.search(r"[23] of 5 nodes unhealthy; maxUnhealthy 1 allows 1", event.message), (
        event.message
    )


# --- the pool limits under a burst ---


def burst(
    cluster: Cluster,
    pool: Any,
    policies: Policies,
    operator: Operator | None = None,
) -> None:
    """10 of 50 nodes fail at once; maxConcurrentRepairs 2, minAvailable 90% (45).
    With `operator`, it is SIGKILLed once 3 repairs are under way, and restarted."""
    p = pool(50)
    sick = p.names[:10]
    rp = policies.create(
        p, policy_spec(p, maxUnhealthy="40%", maxConcurrentRepairs=2, minAvailable="90%")
    )
    policies.wait_observed(rp)
    with (
        LimitsWatch(cluster, p, max_active=2, min_available=45) as watch,
        RepairCrew(cluster, p.names) as crew,
    ):
        inject_many(cluster, p, sick, wait=False)  # the crew heals them as it goes
        if operator is not None:
            wait_until("3 repairs under way", lambda: len(watch.left_pending) >= 3, timeout=60)
            operator.kill()
            time.sleep(1)
            operator.start()
        wait_until(
            "10 repairs Succeeded",
            lambda: (
                (r := repairs_for(cluster, p.names))
                and sum(phase(x) == "Succeeded" for x in r) >= 10
            ),
            timeout=150,
            interval=0.5,
        )
        time.sleep(1)  # anything extra the policy would still make
    assert watch.samples > 50, watch.samples
    assert not watch.violations, watch.violations[:5]
    assert watch.peak_active == 2, f"2 at once expected at some point ({watch.peak_active})"
    assert watch.peak_locked <= 2, watch.peak_locked
    assert watch.low_available >= 45
    made = repairs_for(cluster, p.names)
    by_node: dict[str, list[str]] = {}
    for r in made:
        by_node.setdefault(r["spec"]["nodeName"], []).append(r["metadata"]["name"])
    assert sorted(by_node) == sorted(sick), by_node
    assert all(len(v) == 1 for v in by_node.values()), f"duplicates: {by_node}"
    assert all(phase(r) == "Succeeded" for r in made), [(names([r]), phase(r)) for r in made]
    assert all(r["metadata"]["labels"][POLICY_LABEL] == rp for r in made)
    assert sorted(crew.done) == names(made)
    assert watch.pending_messages, "repairs waited for capacity"
    assert all(m.startswith("WaitingForCapacity") for m in watch.pending_messages), (
        watch.pending_messages
    )


def test_burst_of_failures_stays_within_the_pool_limits(
    cluster: Cluster, pool: Any, policies: Policies
) -> None:
    burst(cluster, pool, policies)


def test_operator_killed_during_a_burst_duplicates_nothing(
    cluster: Cluster, pool: Any, policies: Policies, running_operator: Operator
) -> None:
    burst(cluster, pool, policies, running_operator)


# --- pausing ---


def test_paused_policy_starts_nothing_and_running_repairs_go_on(
    cluster: Cluster, pool: Any, policies: Policies
) -> None:
    p = pool(2)
    node = p.names[0]
    rp = policies.create(p, policy_spec(p, paused=True))
    inject(cluster, node)
    status = policies.wait_status(
        rp, "suppressed Paused", lambda s: (s.get("suppressed") or {}).get("reason") == "Paused"
    )
    assert status["suppressed"]["active"] is True, status
    assert status["suppressed"]["nodes"] == [node], status
    assert status["unhealthyNodes"] == 1
    detected = policies.wait_event(rp, "UnhealthyNodeDetected", "Warning")
    assert any(node in e.message and DEADLOCK in e.message for e in detected)
    held = policies.wait_event(rp, "NodeRepairSuppressed", "Warning")
    assert any(node in e.message and "paused" in e.message for e in held)
    assert not repairs_for(cluster, p.names), "the pass that suppressed it made none"

    policies.patch_spec(rp, {"paused": False})
    repair = one_repair(cluster, node, timeout=10)["metadata"]["name"]
    wait_repair_phase(cluster, repair, "Repairing", timeout=30)
    status = policies.wait_status(
        rp, "no longer suppressed", lambda s: not (s.get("suppressed") or {}).get("active")
    )

    # Paused again while the repair runs: it goes on to the end.
    policies.patch_spec(rp, {"paused": True})
    policies.wait_observed(rp)
    heal(cluster, node)
    mark_repaired(cluster, repair)
    wait_repair_phase(cluster, repair, "Succeeded", timeout=30)
    assert names(repairs_for(cluster, p.names)) == [repair]


# --- manual repairs count against the limits ---


def test_manual_repairs_count_against_the_pool_limits(
    cluster: Cluster, pool: Any, policies: Policies, repairs: Repairs, running_operator: Operator
) -> None:
    p = pool(3)
    rp = policies.create(p, policy_spec(p, unhealthyConditions=[], maxConcurrentRepairs=1))
    policies.wait_observed(rp)
    first = repairs.create(p.names[0], repair=MANUAL, verify=VERIFY)
    repairs.wait_phase(first, "Repairing", timeout=30)
    second = repairs.create(p.names[1], repair=MANUAL, verify=VERIFY)
    status = wait_until(
        f"{second} waiting for capacity",
        lambda: (s := repairs.status(second)).get("message") and s,
        timeout=15,
    )
    assert status["phase"] == "Pending", status
    assert status["message"].startswith("WaitingForCapacity"), status["message"]
    assert rp in status["message"], "it names the policy whose limit holds it"
    policies.wait_status(rp, "1 active repair", lambda s: s.get("activeRepairs") == 1)
    decided_again(cluster, running_operator, second)
    assert repairs.phase(second) == "Pending"
    assert repairs.phase(first) == "Repairing"

    mark_repaired(cluster, first)
    repairs.wait_phase(first, "Succeeded", timeout=30)
    repairs.wait_phase(second, "Repairing", timeout=30)


def test_repair_that_took_its_node_before_a_crash_counts_against_the_limits(
    cluster: Cluster,
    pool: Any,
    policies: Policies,
    repairs: Repairs,
    running_operator: Operator,
) -> None:
    """The operator is killed right after a repair's conditional node patch (lock +
    cordon) and before its first status write: the repair has no phase yet, but it
    holds its node. With maxConcurrentRepairs 1, an older waiting repair of the pool
    must not take a second node on restart (invariant 5; DESIGN "Node markers": the
    lock names the active repair of the node)."""
    p = pool(3)
    rp = policies.create(p, policy_spec(p, unhealthyConditions=[], maxConcurrentRepairs=1))
    policies.wait_observed(rp)
    running_operator.kill()
    older = repairs.create(p.names[1], name=f"a-{p.selector['pool']}", repair=MANUAL, verify=VERIFY)
    time.sleep(1.1)  # creation timestamps are whole seconds: make `older` older
    holder = repairs.create(
        p.names[0], name=f"b-{p.selector['pool']}", repair=MANUAL, verify=VERIFY
    )
    # Exactly what pitstop.cluster.nodes.lock_and_cordon writes, in one patch.
    cluster.core.patch_node(
        p.names[0],
        {
            "metadata": {"annotations": {LOCK: holder, "pitstop.dev/was-unschedulable": "false"}},
            "spec": {
                "unschedulable": True,
                "taints": [{"key": "pitstop.dev/maintenance", "effect": "NoSchedule"}],
            },
        },
    )
    with (
        LimitsWatch(cluster, p, max_active=1, min_available=0) as watch,
        RepairCrew(cluster, p.names),
    ):
        running_operator.start()
        wait_until(
            "both repairs Succeeded, one after the other",
            lambda: repairs.phase(older) == "Succeeded" and repairs.phase(holder) == "Succeeded",
            timeout=60,
            interval=0.3,
        )
    assert not watch.violations, (
        f"2 nodes of the pool held at once with maxConcurrentRepairs 1: {watch.violations[:3]}"
    )


def test_deleted_policy_makes_no_more_repairs(
    cluster: Cluster, pool: Any, policies: Policies, running_operator: Operator
) -> None:
    """A policy deleted right after it was created (e.g. a mistaken `kubectl apply`
    undone at once) must stop acting on its pool. (kopf stops a daemon when it sees
    the deletion through its finalizer; an object deleted before the finalizer is on
    it goes unnoticed, nolar/kopf#548, so the daemon itself must notice.)"""
    p = pool(2)
    for _ in range(5):
        rp = policies.create(p, policy_spec(p))
        cluster.custom.delete_cluster_custom_object(GROUP, VERSION, RP_PLURAL, rp)
    wait_until("the policies gone", lambda: not any(map(policies.exists, policies.made)))
    # A live policy on another pool proves the operator is at work meanwhile.
    other = pool(1)
    witness = policies.create(other, policy_spec(other))
    try:
        inject(cluster, other.names[0])
        one_repair(cluster, other.names[0])
        inject(cluster, p.names[0])
        time.sleep(3)
        made = repairs_for(cluster, p.names)
        assert not made, (
            "NodeRepairs made for deleted policies: "
            f"{[(r['metadata']['name'], r['metadata']['labels'][POLICY_LABEL]) for r in made]}"
        )
        assert policies.exists(witness)
    finally:
        # Leave no fault for a surviving policy daemon to act on while the repairs
        # are cleaned up, and restart the operator: that ends such daemons.
        heal(cluster, p.names[0])
        running_operator.kill()
        running_operator.start()


def test_repair_deleted_at_once_leaves_its_node_alone(
    cluster: Cluster, pool: Any, running_operator: Operator
) -> None:
    """Same cause as above, for NodeRepairs: one deleted right after its creation
    must not leave its node cordoned and locked (invariant 4)."""
    p = pool(5)
    for node in p.names:
        name = f"quick-{node}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodeRepair",
            "metadata": {"name": name},
            "spec": {"nodeName": node, "reason": "E2E", "repair": MANUAL},
        }
        cluster.custom.create_cluster_custom_object(GROUP, VERSION, "noderepairs", body)
        cluster.custom.delete_cluster_custom_object(GROUP, VERSION, "noderepairs", name)
    try:
        wait_until("the repairs gone", lambda: not repairs_for(cluster, p.names))
        time.sleep(3)
        held = {}
        for node in p.names:
            n = cluster.core.read_node(node)
            lock = (n.metadata.annotations or {}).get(LOCK)
            if n.spec.unschedulable or lock:
                held[node] = lock
        assert not held, f"nodes left cordoned by deleted NodeRepairs: {held}"
    finally:
        running_operator.kill()  # ends any daemon that outlived its repair
        running_operator.start()


# --- overlapping pools ---


def test_node_in_two_pools_is_reported_and_not_repaired(
    cluster: Cluster, pool: Any, policies: Policies
) -> None:
    p = pool(3)
    shared, alone, _ = p.names
    overlap = {"pitstop-e2e/overlap": p.selector["pool"]}
    cluster.core.patch_node(shared, {"metadata": {"labels": overlap}})
    whole = policies.create(p, policy_spec(p))
    part = policies.create(
        p, policy_spec(p, nodeSelector={"matchLabels": {**p.selector, **overlap}})
    )

    for rp in (whole, part):
        status = policies.wait_status(
            rp,
            "PoolConflict True",
            lambda s: any(
                c["type"] == "PoolConflict" and c["status"] == "True"
                for c in s.get("conditions") or []
            ),
        )
        conflict = next(c for c in status["conditions"] if c["type"] == "PoolConflict")
        assert shared in conflict["message"], conflict
        assert alone not in conflict["message"], conflict

    inject(cluster, shared)
    inject(cluster, alone)
    # The node in one pool is repaired: the policy is at work...
    assert one_repair(cluster, alone)["metadata"]["labels"][POLICY_LABEL] == whole
    # ...but the node in two pools is not: a pass that saw both faults (the status
    # it wrote once its repairs were made says so) made none for it.
    status = policies.wait_status(
        whole,
        "both unhealthy, one suppressed",
        lambda s: (
            s.get("unhealthyNodes") == 2 and (s.get("suppressed") or {}).get("nodes") == [shared]
        ),
    )
    assert status["suppressed"]["reason"] == "PoolConflict", status
    policies.wait_status(
        part,
        "its one node unhealthy, suppressed",
        lambda s: (
            s.get("unhealthyNodes") == 1 and (s.get("suppressed") or {}).get("nodes") == [shared]
        ),
    )
    assert not repairs_for(cluster, [shared])


# --- kubectl ---


def columns(cluster: Cluster, rp: str, *flags: str) -> dict[str, str]:
    out = cluster.kubectl("get", "rp", rp, *flags).stdout.splitlines()
    assert len(out) == 2, out
    header, row = out[0].split(), out[1].split()
    assert len(header) == len(row), out
    return dict(zip(header, row, strict=True))


def test_printer_columns(cluster: Cluster, pool: Any, policies: Policies) -> None:
    p = pool(3)
    node = p.names[0]
    rp = policies.create(p, policy_spec(p, paused=True))
    inject(cluster, node)
    policies.wait_status(rp, "1 unhealthy", lambda s: s.get("unhealthyNodes") == 1)
    cols = columns(cluster, rp)
    assert list(cols)[:5] == ["NAME", "NODES", "UNHEALTHY", "ACTIVE", "PAUSED"], cols
    assert (cols["NAME"], cols["NODES"], cols["UNHEALTHY"], cols["ACTIVE"]) == (rp, "3", "1", "0")
    assert cols["PAUSED"] == "true"
    assert columns(cluster, rp, "-o", "wide")["SUPPRESSED"] == "Paused"

    policies.patch_spec(rp, {"paused": False})
    repair = one_repair(cluster, node)["metadata"]["name"]
    wait_repair_phase(cluster, repair, "Repairing", timeout=30)
    policies.wait_status(rp, "1 active", lambda s: s.get("activeRepairs") == 1)
    cols = columns(cluster, rp)
    assert (cols["NODES"], cols["UNHEALTHY"], cols["ACTIVE"], cols["PAUSED"]) == (
        "3",
        "1",
        "1",
        "false",
    ), cols
    assert is_active(one_repair(cluster, node))
