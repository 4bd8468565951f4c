"""Room before the drain: resource quantities and pod requests (pitstop.resources),
the scheduler-like fit (pitstop.pool.room), the admission's use of it
(pool.daemon.room_refusal), and what a repair waiting for room says."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitstop import constants as C
from pitstop import kstatus, resources
from pitstop.cluster import indexes
from pitstop.models import NodeRepairSpec, NodeRepairStatus, Phase, RepairPolicySpec
from pitstop.pool import arithmetic, room
from pitstop.pool.daemon import room_refusal
from pitstop.repair.flow import Observation
from pitstop.repair.machine import decide

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# --- quantities and requests ---


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("250m", Decimal("0.25")),
        ("2", Decimal(2)),
        ("1.5", Decimal("1.5")),
        ("1Gi", Decimal(1024**3)),
        ("512Mi", Decimal(512 * 1024**2)),
        ("1k", Decimal(1000)),
        ("1e3", Decimal(1000)),
        ("100n", Decimal("1e-7")),
    ],
)
def test_quantities_parse_as_the_api_server_stores_them(text: str, value: Decimal) -> None:
    assert resources.parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "1 Gi", "abc", "1Gb", "--1"])
def test_a_quantity_the_api_server_would_refuse_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        resources.parse_quantity(text)


def test_cpu_counts_in_millicores_rounded_up() -> None:
    assert resources.amount("cpu", "1") == 1000
    assert resources.amount("cpu", "100n") == 1  # the scheduler rounds a request up
    assert resources.amount("memory", "1Ki") == 1024


def container(cpu: str | None = None, memory: str | None = None, **more: Any) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    return {"name": "c", "resources": {"requests": requests}, **more}


def test_pod_requests_add_containers_and_take_the_largest_init_step() -> None:
    spec = {
        "containers": [container("500m", "1Gi"), container("250m")],
        "initContainers": [container("2", "512Mi")],
        "overhead": {"cpu": "100m"},
    }
    # cpu: the init container (2000m) is more than the containers (750m); memory: the
    # containers'; then the overhead on top.
    assert resources.pod_requests(spec) == {"cpu": 2100, "memory": 1024**3}


def test_sidecars_run_beside_the_containers_and_the_later_init_steps() -> None:
    spec = {
        "containers": [container("500m")],
        "initContainers": [
            container("200m", restartPolicy="Always"),  # a sidecar, kept running
            container("1"),  # runs beside the sidecar: 1200m at that step
        ],
    }
    assert resources.pod_requests(spec) == {"cpu": 1200}
    spec["containers"] = [container("1500m")]  # 1500 + 200 beside it
    assert resources.pod_requests(spec) == {"cpu": 1700}


def test_a_pod_without_requests_asks_for_nothing_but_its_slot() -> None:
    assert resources.pod_requests({"containers": [{"name": "c"}]}) == {}
    assert resources.describe({"pods": 1}) == "1 pod"
    assert resources.describe({"cpu": 1500, "memory": 3 * 1024**3, "pods": 2}) == (
        "1500m cpu, 3Gi memory, 2 pods"
    )


# --- the fit ---


def need(key: str, cpu: int = 0, memory: int = 0, **more: Any) -> room.Need:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    return room.Need(key=key, requests=requests, **more)


def node_room(
    name: str, cpu: int = 2000, memory: int = 8, pods: int = 10, **more: Any
) -> room.Room:
    return room.Room(
        name=name,
        labels=more.get("labels", {}),
        taints=more.get("taints", ()),
        free={"cpu": cpu, "memory": memory, "pods": pods},
    )


def test_first_fit_decreasing_places_the_largest_first() -> None:
    # In arrival order, 500 + 500 would go on a and leave 1500 nowhere; largest first
    # puts 1500 on a and both 500s on b.
    needs = [need("s1", 500), need("s2", 500), need("big", 1500)]
    found = room.fit(needs, [node_room("a", 2000), node_room("b", 1000)])
    assert found.placed == {"big": "a", "s1": "a", "s2": "b"}
    assert not found.unplaced


def test_what_fits_nowhere_is_named_with_its_requests_and_slot() -> None:
    found = room.fit([need("x", 1500, 1024**3)], [node_room("a", 1000)])
    assert [n.key for n in found.unplaced] == ["x"]
    assert found.missing == {"cpu": 1500, "memory": 1024**3, "pods": 1}
    message = room.shortage("n1", [need("x", 1500, 1024**3)], [node_room("a", 1000)])
    assert message is not None
    assert message.startswith("1 of 1 instances of n1 fit on none of the 1 other")
    assert message.endswith("missing room for 1500m cpu, 1Gi memory, 1 pod")


def test_pod_slots_count_even_without_requests() -> None:
    found = room.fit([need("a"), need("b")], [node_room("n", pods=1)])
    assert len(found.unplaced) == 1


def test_instances_of_nodes_under_repair_take_their_room_first() -> None:
    rooms = [node_room("a", 2000)]
    assert room.shortage("n1", [need("mine", 1500)], rooms) is None
    short = room.shortage("n1", [need("mine", 1500)], rooms, others=[need("theirs", 1000)])
    assert short is not None and "once 1 instances of nodes under repair" in short


def test_taints_keep_out_what_does_not_tolerate_them() -> None:
    tainted = node_room("a", taints=[{"key": "gpu", "value": "yes", "effect": "NoSchedule"}])
    assert not room.may_go(need("x"), tainted)
    assert room.may_go(need("x", tolerations=[{"key": "gpu", "value": "yes"}]), tainted)
    assert room.may_go(need("x", tolerations=[{"key": "gpu", "operator": "Exists"}]), tainted)
    assert room.may_go(need("x", tolerations=[{"operator": "Exists"}]), tainted)
    assert not room.may_go(need("x", tolerations=[{"key": "gpu", "value": "no"}]), tainted)
    assert not room.may_go(
        need("x", tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}]),
        tainted,
    )
    soft = node_room("b", taints=[{"key": "k", "effect": "PreferNoSchedule"}])
    assert room.may_go(need("x"), soft)  # only scores, never filters


def test_node_selector_and_required_affinity_choose_the_nodes() -> None:
    a = node_room("a", labels={"pool": "p", "gen": "5"})
    b = node_room("b", labels={"pool": "q"})
    assert room.may_go(need("x", node_selector={"pool": "p"}), a)
    assert not room.may_go(need("x", node_selector={"pool": "p"}), b)

    def terms(*t: dict[str, Any]) -> room.Need:
        return need("x", node_terms=list(t))

    def expr(key: str, op: str, *values: str) -> dict[str, Any]:
        return {"matchExpressions": [{"key": key, "operator": op, "values": list(values)}]}

    assert room.may_go(terms(expr("pool", "In", "p", "r")), a)
    assert not room.may_go(terms(expr("pool", "In", "p")), b)
    assert room.may_go(terms(expr("pool", "NotIn", "p")), b)
    assert room.may_go(terms(expr("gen", "Gt", "4")), a)
    assert not room.may_go(terms(expr("gen", "Lt", "4")), a)
    assert not room.may_go(terms(expr("gen", "Gt", "4")), b)  # absent: no match
    assert room.may_go(terms(expr("gen", "DoesNotExist")), b)
    assert room.may_go(terms(expr("nope", "In", "x"), expr("pool", "Exists")), b)  # ORed
    by_name = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}
    assert room.may_go(terms(by_name), b) and not room.may_go(terms(by_name), a)
    assert not room.may_go(terms({}), a)  # an empty term matches no node


def test_a_node_room_is_its_allocatable_less_what_its_pods_request() -> None:
    node = {
        "metadata": {"name": "a", "labels": {}},
        "spec": {},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10"}},
    }
    pods = [
        pod("p1", cpu="500m"),
        pod("p2", cpu="250m", memory="1Gi"),
        pod("done", cpu="1", phase="Succeeded"),  # finished: holds nothing
    ]
    r = room.room_of(indexes.slim_node(node), [indexes.slim_pod(p) for p in pods])
    assert r.free == {"cpu": 1250, "memory": 3 * 1024**3, "pods": 8}
    bare = room.room_of({"metadata": {"name": "b"}}, [])
    assert bare.free == {"cpu": 0, "memory": 0, "pods": 0}  # nothing reported: no room


def test_the_index_keeps_what_the_fit_reads() -> None:
    whole = pod(
        "p",
        cpu="1",
        memory="1Gi",
        nodeSelector={"pool": "p"},
        tolerations=[{"key": "k", "operator": "Exists", "tolerationSeconds": 300}],
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "z", "operator": "In", "values": ["1"]}]}
                    ]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1}],
            }
        },
    )
    slim = indexes.slim_pod(whole)
    assert (
        room.need_of(slim).requests
        == room.need_of(whole).requests
        == {
            "cpu": 1000,
            "memory": 1024**3,
        }
    )
    rooms = [
        node_room(name, labels=labels, taints=taints)
        for name, labels, taints in [
            ("a", {"pool": "p", "z": "1"}, [{"key": "k", "effect": "NoSchedule"}]),
            ("b", {"pool": "p", "z": "2"}, []),  # affinity says no
            ("c", {"pool": "q", "z": "1"}, []),  # nodeSelector says no
            ("d", {"pool": "p", "z": "1"}, [{"key": "j", "effect": "NoExecute"}]),
        ]
    ]
    for r in rooms:
        assert room.may_go(room.need_of(slim), r) == room.may_go(room.need_of(whole), r)
    assert [r.name for r in rooms if room.may_go(room.need_of(slim), r)] == ["a"]
    assert indexes.slim_pod(indexes.watched_pod(whole)) == slim
    # The same tolerations are one shared list across pods.
    assert (
        slim["spec"]["tolerations"]
        is indexes.slim_pod(pod("q", **whole["spec"]))["spec"]["tolerations"]
    )


def pod(
    name: str, cpu: str | None = None, memory: str | None = None, **spec: Any
) -> dict[str, Any]:
    phase = spec.pop("phase", "Running")
    node = spec.pop("nodeName", "n1")
    owner = spec.pop("owner", "ReplicaSet")
    body: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": name, "ownerReferences": [{"kind": owner}]},
        "spec": {"nodeName": node, "containers": [container(cpu, memory)], **spec},
        "status": {"phase": phase},
    }
    return body


# --- properties of the fit ---

NEEDS = st.lists(
    st.builds(
        lambda i, cpu, mem: need(f"p{i}", cpu, mem),
        st.integers(0, 10_000),
        st.integers(0, 4000),
        st.integers(0, 64),
    ),
    max_size=12,
    unique_by=lambda n: n.key,
)
ROOMS = st.lists(
    st.builds(
        lambda i, cpu, mem, pods: node_room(f"n{i:02d}", cpu, mem, pods),
        st.integers(0, 50),
        st.integers(0, 5000),
        st.integers(0, 128),
        st.integers(0, 6),
    ),
    max_size=6,
    unique_by=lambda r: r.name,
)


@settings(deadline=None, max_examples=150)
@given(NEEDS, ROOMS)
def test_the_fit_never_overcommits_a_node_and_places_or_names_every_instance(
    needs: list[room.Need], rooms: list[room.Room]
) -> None:
    before = [dict(r.free) for r in rooms]
    found = room.fit(needs, rooms)
    assert [dict(r.free) for r in rooms] == before  # the caller's rooms untouched
    assert sorted([*found.placed, *(n.key for n in found.unplaced)]) == sorted(n.key for n in needs)
    by_key = {n.key: n for n in needs}
    for r in rooms:
        mine = [by_key[k] for k, where in found.placed.items() if where == r.name]
        used = resources.total([{**n.requests, "pods": 1} for n in mine])
        assert all(used.get(k, 0) <= r.free.get(k, 0) for k in used), (r, mine)


@settings(deadline=None, max_examples=150)
@given(NEEDS, ROOMS)
def test_more_than_all_the_room_together_never_fits(
    needs: list[room.Need], rooms: list[room.Room]
) -> None:
    asked = resources.total([{**n.requests, "pods": 1} for n in needs])
    free = resources.total([{k: max(v, 0) for k, v in r.free.items()} for r in rooms])
    if any(v > free.get(k, 0) for k, v in asked.items()):
        assert room.fit(needs, rooms).unplaced


@settings(deadline=None, max_examples=150)
@given(NEEDS, ROOMS, st.integers(0, 10_000), st.integers(0, 4000), st.integers(0, 6))
def test_a_node_added_never_leaves_out_what_fitted_before(
    needs: list[room.Need], rooms: list[room.Room], cpu: int, mem: int, pods: int
) -> None:
    """A new node (last in the order) can only take instances nothing else took."""
    before = room.fit(needs, rooms)
    after = room.fit(needs, [*rooms, node_room("zz-new", cpu, mem, pods)])
    assert {n.key for n in after.unplaced} <= {n.key for n in before.unplaced}
    assert {k: v for k, v in after.placed.items() if v != "zz-new"} == before.placed


@settings(deadline=None, max_examples=100)
@given(NEEDS)
def test_one_ample_node_per_instance_places_them_all(needs: list[room.Need]) -> None:
    rooms = [node_room(f"n{i:02d}", 10_000, 4000, 1) for i in range(len(needs))]
    assert not room.fit(needs, rooms).unplaced


# --- the admission's use of the fit ---


def cluster_node(name: str, ready: bool = True, **more: Any) -> dict[str, Any]:
    return indexes.slim_node(
        {
            "metadata": {
                "name": name,
                "labels": {"pool": "p", **more.pop("labels", {})},
                "annotations": more.pop("annotations", {}),
                "resourceVersion": "1",
            },
            "spec": more.pop("spec", {}),
            "status": {
                "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "10"},
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }
    )


def refusal(
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    policy: dict[str, Any] | None = None,
    repairs: dict[str, list[dict[str, Any]]] | None = None,
) -> str | None:
    nodes_index = {n["metadata"]["name"]: [n] for n in nodes}
    pods_index: dict[str, list[dict[str, Any]]] = {}
    for p in pods:
        pods_index.setdefault(p["spec"]["nodeName"], []).append(indexes.slim_pod(p))
    views = [arithmetic.node_view(n) for n in nodes]
    pools = []
    if policy is not None:
        pools = [("rp", RepairPolicySpec.model_validate({"nodeSelector": {}, **policy}))]
    # Dicts stand in for kopf's indexes (get, items).
    by_name: Any = nodes_index
    by_node: Any = pods_index
    repairs_by_node: Any = repairs or {}
    return room_refusal(views[0], pools, views, by_name, by_node, repairs_by_node, ())


def test_admission_waits_while_the_instances_fit_nowhere_else() -> None:
    nodes = [cluster_node("n1"), cluster_node("n2")]
    pods = [pod("a", "1500m", nodeName="n1"), pod("b", "1500m", nodeName="n2")]
    found = refusal(nodes, pods)
    assert found is not None and found.startswith(f"{C.REASON_WAITING_FOR_ROOM}: 1 of 1")
    assert refusal([*nodes, cluster_node("n3")], pods) is None  # a third node has room


def test_what_the_drain_would_not_evict_needs_no_room() -> None:
    nodes = [cluster_node("n1"), cluster_node("n2")]
    pods = [
        pod("ds", "1500m", nodeName="n1", owner="DaemonSet"),
        pod("b", "1500m", nodeName="n2"),
    ]
    assert refusal(nodes, pods) is None
    leaving = pod("gone", "1500m", nodeName="n1")
    leaving["metadata"]["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    assert refusal(nodes, [*pods, leaving]) is None  # its replacement is made already
    assert refusal(nodes, [*pods, pod("stays", "1500m", nodeName="n1")]) is not None


def test_an_autoscaled_pool_or_a_node_not_ready_never_waits_for_room() -> None:
    pods = [pod("a", "1500m", nodeName="n1"), pod("b", "1500m", nodeName="n2")]
    assert refusal([cluster_node("n1"), cluster_node("n2")], pods, {"autoscaled": True}) is None
    assert refusal([cluster_node("n1", ready=False), cluster_node("n2")], pods) is None


def test_nodes_under_repair_or_cordoned_give_no_room_and_theirs_go_first() -> None:
    pods = [pod("a", "1500m", nodeName="n1"), pod("c", "1500m", nodeName="n3")]
    cordoned = cluster_node("n2", spec={"unschedulable": True})
    assert refusal([cluster_node("n1"), cordoned], pods) is not None
    # n3 is locked by another repair: no room, and its instance needs n2's room.
    locked = cluster_node("n3", annotations={C.ANNOTATION_REPAIR: "other"})
    assert refusal([cluster_node("n1"), cluster_node("n2"), locked], pods) is not None
    assert refusal([cluster_node("n1"), cluster_node("n2"), cluster_node("n3")], pods) is None


def test_a_pool_bounds_where_the_instances_may_go() -> None:
    pods = [pod("a", "1500m", nodeName="n1")]
    elsewhere = cluster_node("n9", labels={"pool": "other"})
    nodes = [cluster_node("n1"), elsewhere]
    assert refusal(nodes, pods) is None  # in no pool: any node of the cluster
    assert refusal(nodes, pods, {"nodeSelector": {"matchLabels": {"pool": "p"}}}) is not None


# --- what a repair waiting for room says ---


def test_a_repair_waiting_for_room_warns_and_touches_nothing() -> None:
    waiting = f"{C.REASON_WAITING_FOR_ROOM}: 1 of 1 instances of n1 fit on none"
    obs = Observation(
        now=NOW,
        name="r1",
        generation=1,
        spec=NodeRepairSpec.model_validate({"nodeName": "n1"}),
        status=NodeRepairStatus(phase=Phase.PENDING),
        node={"metadata": {"name": "n1"}, "spec": {}},
        holder_active=False,
        instances=[],
        waiting_for=waiting,
    )
    d = decide(obs)
    assert not (d.take_lock or d.recordon or d.mark_draining or d.deregister or d.evict)
    assert d.status.phase == Phase.PENDING and d.status.message == waiting
    assert [(e.type, e.reason, e.once) for e in d.events] == [
        ("Warning", C.REASON_WAITING_FOR_ROOM, True)
    ]
    summary = kstatus.of_repair(Phase.PENDING, d.status.message, False)
    assert summary is not None and summary.reason == C.REASON_WAITING_FOR_ROOM


def test_a_pending_repair_summary_names_its_cause_and_otherwise_its_phase() -> None:
    busy = kstatus.of_repair(Phase.PENDING, "NodeBusy: node is being repaired by r0", False)
    assert busy is not None and busy.reason == "NodeBusy"
    plain = kstatus.of_repair(Phase.PENDING, "Pending: waiting", False)
    assert plain is not None and plain.reason == "Pending"
    moving = kstatus.of_repair(Phase.EVICTING, "WaitingForRoom: never here", False)
    assert moving is not None and moving.reason == "Evicting"
