"""InstanceProfiles in repairs on kwok nodes: everything that needs no traffic to an
instance (kwok's pod addresses reach nothing, and none is ever contacted here).
The kind from a profile, the annotation contract as the default, two profiles on
one pod (Conflict on both, a Warning Event on the repair), a source that cannot
be addressed (busy, reported, counted, until the task timeout), an invalid
stored profile. Traffic-bound behaviour is tested on real nodes."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import cond, make_pool, node_pods, wait_event
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.repairs import Repairs
from tests.e2e.workloads import deployment, running_pods

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "pitstop.dev", "v1alpha1", "instanceprofiles"
INFLIGHT = "pitstop.dev/inflight-tasks"


@pytest.fixture
def profiles(cluster: Cluster) -> Iterator[Callable[..., str]]:
    """Creates InstanceProfiles for one test (cluster-scoped: each test selects its own
    pods by a unique label), deletes them afterwards."""
    made: list[str] = []

    def create(spec: dict[str, Any], name: str | None = None) -> str:
        name = name or f"ip-{uuid.uuid4().hex[:8]}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InstanceProfile"}
        body |= {"metadata": {"name": name}, "spec": spec}
        cluster.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
        made.append(name)
        return name

    yield create
    for name in made:
        cluster.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)


def profile_status(cluster: Cluster, name: str) -> dict[str, Any]:
    got = cluster.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    return dict(got.get("status") or {})


def workers(cluster: Cluster, ns: str, p: Any, label: str, count: int = 1) -> list[str]:
    """Async-looking pods (no Service, no type label) carrying `fleet=<label>`."""
    body = deployment("worker", count, p.selector, grace=1, labels={"fleet": label})
    cluster.apps.create_namespaced_deployment(ns, body)
    return [x.metadata.name for x in running_pods(cluster, ns, "worker", count)]


def test_kind_comes_from_the_profile(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, profiles: Callable[..., str]
) -> None:
    label = uuid.uuid4().hex[:8]
    profiles({"podSelector": {"matchLabels": {"fleet": label}}, "kind": "sync"})
    p = make_pool(cluster, pool)
    workers(cluster, namespace, p, label)
    name = repairs.create(p.names[0])
    status = repairs.wait_phase(name, "Repairing", timeout=40)
    assert status["instances"]["sync"] == 1 and status["instances"]["async"] == 0, status
    # A sync instance without the serving gate: reported, as for a labelled one.
    wait_event(cluster, name, "NoServingGate")


def test_annotation_contract_is_the_default(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, profiles: Callable[..., str]
) -> None:
    label = uuid.uuid4().hex[:8]
    # A profile for other pods changes nothing for these.
    profiles({"podSelector": {"matchLabels": {"fleet": "someone-else"}}, "kind": "sync"})
    p = make_pool(cluster, pool)
    (pod,) = workers(cluster, namespace, p, label)
    cluster.core.patch_namespaced_pod(
        pod, namespace, {"metadata": {"annotations": {INFLIGHT: "2"}}}
    )
    name = repairs.create(p.names[0])
    waiting = repairs.wait_phase(name, "WaitingForTasks", timeout=20)
    assert waiting["instances"]["async"] == 1
    wait_until(
        "2 tasks counted from the annotation",
        lambda: repairs.status(name)["instances"]["inflightTasks"] == 2,
        timeout=10,
    )
    cluster.core.patch_namespaced_pod(
        pod, namespace, {"metadata": {"annotations": {INFLIGHT: "0"}}}
    )
    repairs.wait_phase(name, "Repairing", timeout=30)


def test_two_profiles_on_one_pod(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, profiles: Callable[..., str]
) -> None:
    label = uuid.uuid4().hex[:8]
    older = profiles({"podSelector": {"matchLabels": {"fleet": label}}, "kind": "sync"})
    time.sleep(1.1)  # creationTimestamp has a resolution of one second
    newer = profiles(
        {
            "podSelector": {
                "matchExpressions": [{"key": "fleet", "operator": "In", "values": [label]}]
            },
            "kind": "async",
        }
    )
    p = make_pool(cluster, pool)
    (pod,) = workers(cluster, namespace, p, label)

    for name, other in ((older, newer), (newer, older)):
        wait_until(
            f"Conflict on {name}",
            lambda n=name: any(
                c["type"] == "Conflict" and c["status"] == "True"
                for c in profile_status(cluster, n).get("conditions") or []
            ),
            timeout=30,
        )
        status = profile_status(cluster, name)
        conflict = cond(status, "Conflict")
        assert conflict["reason"] == "OverlappingProfiles"
        assert (
            other in conflict["message"]
            and f"{older}, the older, describes them" in (conflict["message"])
        ), conflict
        assert status["conflicts"] == [other]
        assert cond(status, "Ready")["status"] == "True"
    assert profile_status(cluster, older)["pods"] == 1
    assert profile_status(cluster, newer)["pods"] == 0

    repair = repairs.create(p.names[0])
    status = repairs.wait_phase(repair, "Repairing", timeout=40)
    assert status["instances"]["sync"] == 1, "the older profile (kind: sync) describes the pod"
    events = wait_event(cluster, repair, "ConflictingInstanceProfiles")
    message = events[0].message or ""
    assert pod in message and older in message and newer in message, message


def test_source_that_cannot_be_addressed_is_busy_until_the_task_timeout(
    cluster: Cluster, namespace: str, pool: Any, repairs: Repairs, profiles: Callable[..., str]
) -> None:
    # A named port the pods do not have: the source cannot be read, and no request
    # is ever sent (kwok pod addresses reach nothing).
    label = uuid.uuid4().hex[:8]
    profiles(
        {
            "podSelector": {"matchLabels": {"fleet": label}},
            "tasks": {"prometheus": {"port": "no-such-port", "metric": "m"}},
        }
    )
    p = make_pool(cluster, pool)
    (pod,) = workers(cluster, namespace, p, label)
    name = repairs.create(p.names[0], drain={"taskTimeoutSeconds": 6, "onTaskTimeout": "Evict"})
    repairs.wait_phase(name, "WaitingForTasks", timeout=20)
    events = wait_event(cluster, name, "TaskSourceUnreachable")
    message = events[0].message or ""
    assert pod in message and "no container port named 'no-such-port'" in message, message
    wait_until(
        "unreachable counted",
        lambda: (repairs.status(name).get("instances") or {}).get("unreachable") == 1,
        timeout=10,
    )
    drained = cond(repairs.status(name), "TasksDrained")
    assert drained["status"] == "False" and "task source gives no count" in drained["message"]
    assert node_pods(cluster, namespace, p.names[0]), "nothing evicted while unreadable"
    status = repairs.wait_phase(name, "Repairing", timeout=30)
    assert cond(status, "TasksDrained")["reason"] == "TaskTimeout"
    # Evicted, it is gone: no source is unreachable any more (issue 22: the count stayed).
    assert status["instances"].get("unreachable", 0) == 0, status["instances"]


def test_invalid_stored_profile_describes_no_pod(
    cluster: Cluster, profiles: Callable[..., str]
) -> None:
    # The CRD cannot check a regular expression; the operator can.
    name = profiles(
        {
            "podSelector": {},
            "tasks": {
                "prometheus": {
                    "port": 1,
                    "metric": "m",
                    "labels": [{"name": "a", "operator": "=~", "value": "("}],
                }
            },
        }
    )
    wait_until(
        "Ready=False",
        lambda: any(
            c["type"] == "Ready" and c["status"] == "False"
            for c in profile_status(cluster, name).get("conditions") or []
        ),
        timeout=30,
    )
    ready = cond(profile_status(cluster, name), "Ready")
    assert ready["reason"] == "InvalidSpec" and "not a regular expression" in ready["message"]


def test_plan_warns_on_a_watchdog_grace_period_and_names_profiles(
    cluster: Cluster, namespace: str, pool: Any, profiles: Callable[..., str]
) -> None:
    # The annotation source: plan reads nothing over the network (kwok pods).
    label = uuid.uuid4().hex[:8]
    older = profiles({"podSelector": {"matchLabels": {"fleet": label}}})
    time.sleep(1.1)
    newer = profiles({"podSelector": {"matchLabels": {"fleet": label}}, "kind": "sync"})
    p = make_pool(cluster, pool)
    body = deployment("watchdog", 1, p.selector, grace=15, labels={"fleet": label})
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "write_timeout", "value": "10s"}
    ]
    cluster.apps.create_namespaced_deployment(namespace, body)
    (pod,) = [x.metadata.name for x in running_pods(cluster, namespace, "watchdog", 1)]
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bin_dir / "pitstop"), "plan", p.names[0], "--kubeconfig", cluster.kubeconfig],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"InstanceProfiles describing its instances: {older}" in out, out
    assert f"warning ConflictingInstanceProfiles: {namespace}/{pod} is matched by {older}" in out
    assert newer in out
    assert (
        f"warning GracePeriodTooShort: {namespace}/{pod} has terminationGracePeriodSeconds 15,"
        " of-watchdog needs more than 20 s"
    ) in out, out


def test_profile_status_follows_its_pods_promptly(
    cluster: Cluster, namespace: str, pool: Any, running_operator: Any, profiles: Callable[..., str]
) -> None:
    """`kubectl get iprof` showed PODS 0 for about 50 s while 4 matching pods ran (issue
    22): the count followed the pods only on the writer's 15 s round, if then."""
    label = uuid.uuid4().hex[:8]
    name = profiles({"podSelector": {"matchLabels": {"fleet": label}}})
    wait_until(
        "the profile's first status",
        lambda: (
            (s := profile_status(cluster, name)).get("pods") == 0
            and any(
                c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions") or []
            )
        ),
        timeout=30,
    )
    time.sleep(1)  # the pass its own status write triggers is over: the next is 15 s away
    p = make_pool(cluster, pool)
    body = deployment("worker", 4, p.selector, grace=1, labels={"fleet": label})
    cluster.apps.create_namespaced_deployment(namespace, body)
    running_pods(cluster, namespace, "worker", 4)
    wait_until(
        "PODS 4", lambda: profile_status(cluster, name).get("pods") == 4, timeout=5, interval=0.2
    )
    cluster.apps.patch_namespaced_deployment_scale("worker", namespace, {"spec": {"replicas": 1}})
    wait_until(
        "PODS 1", lambda: profile_status(cluster, name).get("pods") == 1, timeout=6, interval=0.2
    )
