"""The index functions (no cluster): slimmed pods and nodes keep everything the
instance contract and the node markers read, and EndpointSlices give readiness by pod."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from pitstop import constants as C
from pitstop import selectors
from pitstop.cluster import indexes, nodes
from pitstop.instances import contract

ENDPOINT_PODS = {"fn/web-1", "fn/plain"}


def full_pod(name: str, **overrides: Any) -> dict[str, Any]:
    """A pod as the API returns it, with plenty pitstop never reads."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "fn",
            "uid": f"uid-{name}",
            "resourceVersion": "123",
            "creationTimestamp": "2024-05-01T12:00:00Z",
            "labels": {"app": "fn", "pod-template-hash": "abc"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...}",
                "prometheus.io/scrape": "true",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "fn-abc",
                    "uid": "rs",
                    "controller": True,
                }
            ],
            "managedFields": [{"manager": "kube-controller-manager"}],
        },
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "c", "image": "fn:1", "env": [{"name": "X", "value": "y"}]}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
            "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0}],
        },
    }
    for path, value in overrides.items():
        section, field = path.split("__")
        body[section][field] = value
    return body


def _annotated(**extra: str) -> dict[str, str]:
    return {"kubectl.kubernetes.io/last-applied-configuration": "{...}", **extra}


PODS = [
    full_pod("plain"),
    full_pod("web-1", spec__readinessGates=[{"conditionType": C.CONDITION_SERVING}]),
    full_pod(
        "web-2",
        spec__readinessGates=[{"conditionType": "x/other"}, {"conditionType": C.CONDITION_SERVING}],
        status__conditions=[
            {"type": "Ready", "status": "False"},
            {"type": C.CONDITION_SERVING, "status": "False", "reason": "NodeRepair"},
        ],
    ),
    full_pod(
        "labelled",
        metadata__labels={C.LABEL_INSTANCE_TYPE: "async"},
        metadata__annotations=_annotated(
            **{C.ANNOTATION_INFLIGHT: "4", C.ANNOTATION_DRAINING: "2024-05-01T12:00:00Z"}
        ),
    ),
    full_pod("bad-count", metadata__annotations=_annotated(**{C.ANNOTATION_INFLIGHT: "1.5"})),
    full_pod("ds", metadata__ownerReferences=[{"kind": "DaemonSet", "name": "d", "uid": "u"}]),
    full_pod("mirror", metadata__annotations=_annotated(**{"kubernetes.io/config.mirror": "h"})),
    full_pod("done", status__phase="Succeeded"),
    full_pod("failed", status__phase="Failed"),
    full_pod("going", metadata__deletionTimestamp="2024-05-01T12:05:00Z"),
    full_pod("no-status", status__conditions=None),
]


def answers(pod: dict[str, Any]) -> tuple[Any, ...]:
    return (
        contract.key(pod),
        contract.is_instance(pod),
        contract.kind(pod, ENDPOINT_PODS),
        contract.inflight_tasks(pod),
        contract.has_serving_gate(pod),
        contract.serving_status(pod),
        contract.is_terminating(pod),
        contract.is_ready(pod),
        C.ANNOTATION_DRAINING in pod["metadata"]["annotations"],
    )


@pytest.mark.parametrize("pod", PODS, ids=lambda p: p["metadata"]["name"])
def test_slim_pod_gives_the_same_instance_answers(pod: dict[str, Any]) -> None:
    assert answers(indexes.slim_pod(pod)) == answers(pod)


def test_slim_pod_drops_what_is_not_read() -> None:
    slim = indexes.slim_pod(PODS[0])
    assert all(set(c) == {"ports", "env"} for c in slim["spec"]["containers"])
    assert "managedFields" not in slim["metadata"]
    assert slim["metadata"]["annotations"] == {}
    # Ready (what a budget counts) is kept; ContainersReady is not read.
    assert slim["status"]["conditions"] == [{"type": "Ready", "status": "True"}]


def test_slim_pod_does_not_alias_the_body() -> None:
    pod = copy.deepcopy(PODS[3])
    slim = indexes.slim_pod(pod)
    slim["metadata"]["labels"]["x"] = "y"
    slim["metadata"]["annotations"]["x"] = "y"
    assert pod == PODS[3]


@pytest.mark.parametrize("pod", PODS, ids=lambda p: p["metadata"]["name"])
def test_watched_pod_gives_the_same_answers_and_the_same_index_entry(pod: dict[str, Any]) -> None:
    """What kopf keeps of a pod's watch event serves the serving gate and the index
    exactly as the whole pod would."""
    watched = indexes.watched_pod(pod)
    assert answers(watched) == answers(pod)
    assert indexes.slim_pod(watched) == indexes.slim_pod(pod)


def test_watched_pod_keeps_what_kopf_reads_and_drops_the_bulk() -> None:
    pod = full_pod("kept", metadata__finalizers=["x/y"], metadata__generation=2)
    watched = indexes.watched_pod(pod)
    meta = watched["metadata"]
    assert (watched["apiVersion"], watched["kind"]) == ("v1", "Pod")
    for field in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp"):
        assert meta[field] == pod["metadata"][field], field
    assert (meta["finalizers"], meta["generation"]) == (["x/y"], 2)
    assert "managedFields" not in meta and "volumes" not in watched["spec"]
    assert "containerStatuses" not in watched["status"]


def test_pods_by_node_keys_by_node_and_skips_unscheduled_pods() -> None:
    assert indexes.pods_by_node(body=PODS[0]) == {"n1": indexes.slim_pod(PODS[0])}
    unscheduled = full_pod("pending", spec__nodeName=None)
    assert indexes.pods_by_node(body=unscheduled) is None


# --- nodes ---

OUR_TAINT = {"key": C.TAINT_MAINTENANCE, "effect": "NoSchedule"}
OTHER_TAINT = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "t"}


def full_node(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "n1",
            "uid": "u1",
            "resourceVersion": "99",
            "labels": {"pool": "faas-a"},
            "annotations": {
                C.ANNOTATION_REPAIR: "r1",
                C.ANNOTATION_WAS_UNSCHEDULABLE: "true",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {"podCIDR": "10.0.0.0/24", **spec},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "KubeletNotReady",
                    "message": "PLEG is not healthy",
                    "lastHeartbeatTime": "2024-05-01T12:00:00Z",
                    "lastTransitionTime": "2024-05-01T11:00:00Z",
                }
            ],
            "images": [{"names": ["big"], "sizeBytes": 1}],
        },
    }


NODES = [
    full_node(),
    full_node(unschedulable=True, taints=[OTHER_TAINT, OUR_TAINT]),
    full_node(unschedulable=False, taints=[OTHER_TAINT]),
]


def node_answers(node: dict[str, Any]) -> tuple[Any, ...]:
    return (
        nodes.lock_holder(node),
        nodes.was_unschedulable(node),
        nodes.has_taint(node),
        nodes.is_cordoned(node),
        nodes.condition_status(node, "Ready"),
        nodes.lock_and_cordon(node, "r2"),
        nodes.cordon(node),
        nodes.release(node),
    )


@pytest.mark.parametrize("node", NODES, ids=["bare", "cordoned", "other-taint"])
def test_slim_node_gives_the_same_marker_answers_and_patches(node: dict[str, Any]) -> None:
    assert node_answers(indexes.slim_node(node)) == node_answers(node)


def test_slim_node_keeps_only_lock_annotations() -> None:
    slim = indexes.slim_node(NODES[0])
    assert slim["metadata"]["annotations"] == {
        C.ANNOTATION_REPAIR: "r1",
        C.ANNOTATION_WAS_UNSCHEDULABLE: "true",
    }
    assert "images" not in slim["status"]


def test_nodes_by_name_keys_by_name() -> None:
    assert indexes.nodes_by_name(body=NODES[0], name="n1") == {"n1": indexes.slim_node(NODES[0])}


# --- EndpointSlices ---


def slice_(*endpoints: dict[str, Any], namespace: str = "fn") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "svc-abc", "namespace": namespace},
        "addressType": "IPv4",
        "endpoints": list(endpoints),
    }


def endpoint(pod: str, ready: bool | None, namespace: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "Pod", "name": pod}
    if namespace is not None:
        ref["namespace"] = namespace
    ep: dict[str, Any] = {"addresses": ["10.0.0.1"], "targetRef": ref, "nodeName": "n1"}
    if ready is not None:
        ep["conditions"] = {"ready": ready, "serving": ready, "terminating": False}
    return ep


def test_endpoints_by_pod_gives_ready_flags_per_pod() -> None:
    body = slice_(endpoint("a", True), endpoint("b", False))
    assert indexes.endpoints_by_pod(body=body) == {"fn/a": True, "fn/b": False}


def test_endpoint_without_ready_condition_counts_as_ready() -> None:
    """EndpointSlice API: a nil ready condition means ready."""
    assert indexes.endpoints_by_pod(body=slice_(endpoint("a", None))) == {"fn/a": True}


def test_target_ref_namespace_wins_over_the_slices() -> None:
    body = slice_(endpoint("a", True, namespace="other"), namespace="fn")
    assert indexes.endpoints_by_pod(body=body) == {"other/a": True}


def test_pod_listed_twice_is_ready_if_either_entry_is() -> None:
    assert indexes.endpoints_by_pod(body=slice_(endpoint("a", False), endpoint("a", True))) == {
        "fn/a": True
    }
    assert indexes.endpoints_by_pod(body=slice_(endpoint("a", True), endpoint("a", False))) == {
        "fn/a": True
    }


def test_non_pod_targets_and_empty_slices_are_skipped() -> None:
    external = {"addresses": ["1.2.3.4"], "targetRef": {"kind": "Node", "name": "n1"}}
    bare = {"addresses": ["1.2.3.5"]}
    assert indexes.endpoints_by_pod(body=slice_(external, bare)) == {}
    assert indexes.endpoints_by_pod(body={"metadata": {"namespace": "fn"}, "endpoints": None}) == {}


def full_pdb(name: str = "fn-pdb", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": name,
            "namespace": "fn",
            "generation": 2,
            "resourceVersion": "99",
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"maxUnavailable": "10%", "selector": {"matchLabels": {"app": "fn"}}},
        "status": {
            "observedGeneration": 2,
            "disruptionsAllowed": 1,
            "currentHealthy": 10,
            "desiredHealthy": 9,
            "expectedPods": 10,
            "disruptedPods": {"web-1": "2024-05-01T12:00:00Z"},
            "conditions": [{"type": "DisruptionAllowed", "status": "True"}],
            **status,
        },
    }


def test_slim_pdb_keeps_what_the_budget_arithmetic_reads() -> None:
    slim = indexes.slim_pdb(full_pdb())
    assert "managedFields" not in slim["metadata"]
    assert contract.budget(slim) == contract.budget(full_pdb())
    assert contract.budget(slim) == contract.Budget(
        "fn/fn-pdb", 1, frozenset({"fn/web-1"}), spare=1, healthy=10, expected=10
    )
    for pod in PODS:
        assert selectors.pdb_covers(slim, pod) == contract.covers(full_pdb(), pod)


def test_pdbs_by_namespace_keys_by_namespace() -> None:
    body = full_pdb()
    assert indexes.pdbs_by_namespace(body=body, namespace="fn") == {"fn": indexes.slim_pdb(body)}


def test_a_pdb_event_wakes_the_repairs_of_nodes_holding_pods_it_covers() -> None:
    wake = indexes.Wakeups()
    covered, elsewhere = wake.nodes.register("n1"), wake.nodes.register("n2")
    other = full_pod("other", metadata__labels={"app": "other"}, spec__nodeName="n2")
    indexes.wake_on_pdb(
        body=full_pdb(),
        memo={indexes.MEMO_WAKEUPS: wake},
        pods_by_node={"n1": [indexes.slim_pod(PODS[0])], "n2": [other]},
    )
    assert covered.is_set()
    assert not elsewhere.is_set()


def test_slim_pods_share_what_they_repeat() -> None:
    """100,000 indexed pods: strings and empty containers they all repeat are kept once."""
    a = indexes.slim_pod(json.loads(json.dumps(full_pod("a"))))
    b = indexes.slim_pod(json.loads(json.dumps(full_pod("b"))))
    (key_a,), (key_b,) = (
        [k for k in p["metadata"]["labels"] if k == "pod-template-hash"] for p in (a, b)
    )
    assert key_a is key_b
    assert a["metadata"]["namespace"] is b["metadata"]["namespace"]
    plain = {"spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i"}]}}
    assert indexes.slim_pod(plain)["spec"]["containers"] == [{"ports": [], "env": []}]
