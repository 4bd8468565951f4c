"""pitstop as its users run it: installed with the whole tier's method (helm, or
PITSTOP_INSTALL=kustomize), two replicas on real nodes with the mounted
ServiceAccount token, one leader on the Lease, probes passing, /metrics on the pod
address, a repair completed, no permission error; and the leader's container
SIGKILLed: the standby takes over."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.kube import Cluster, wait_until
from tests.incluster.checks import (
    assert_no_permission_errors,
    get,
    one_leader_one_standby,
    repair_a_node,
)
from tests.incluster.conftest import (
    NAMESPACE,
    lease_holder,
    nodes_on_host,
    operator_pods,
    wait_holder,
)

pytestmark = pytest.mark.incluster

LEASE_DURATION = 15  # manifests/ and the chart: the default of `pitstop run`
ALERTS_SERVICE = "pitstop-alerts"
LEADER_LABEL = "pitstop.dev/leader"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def test_runs_as_two_pods_on_real_nodes_with_the_mounted_token(
    cluster: Cluster, installed: list[client.V1Pod]
) -> None:
    pods = operator_pods(cluster)
    assert len(pods) == 2, [p.metadata.name for p in pods]
    for pod in pods:
        node = cluster.core.read_node(pod.spec.node_name)
        assert node.metadata.labels.get("type") != "kwok", f"{pod.metadata.name} on a fake node"
        container = pod.spec.containers[0]
        assert container.args[0] == "run", container.args
        assert "--kubeconfig" not in container.args, container.args  # in-cluster config
        assert not any("kubeconfig" in (e.name or "").lower() for e in container.env or [])
        mounts = {m.mount_path for m in container.volume_mounts or []}
        assert TOKEN_DIR in mounts, mounts
        status = pod.status.container_statuses[0]
        assert status.ready, f"{pod.metadata.name} not Ready: {status}"
        assert status.restart_count == 0, f"{pod.metadata.name} restarted {status.restart_count}x"


def test_one_leader_one_standby_and_metrics_on_the_pod_address(
    cluster: Cluster, installed: list[client.V1Pod]
) -> None:
    pods = {p.metadata.name: p for p in operator_pods(cluster)}
    holder = one_leader_one_standby(cluster)
    for name, pod in pods.items():
        text = get(cluster, pod, 9090, "/metrics")
        expected = "1.0" if name == holder else "0.0"
        assert f"pitstop_leader {expected}" in text, f"{name}: {text[:300]}"
        assert "pitstop_build_info{" in text


def test_a_repair_of_a_kwok_node_completes(cluster: Cluster, installed: list[client.V1Pod]) -> None:
    repair_a_node(cluster)


def test_the_rbac_is_enough(cluster: Cluster, installed: list[client.V1Pod]) -> None:
    assert_no_permission_errors(cluster)


def alert_endpoints(cluster: Cluster) -> dict[str, str]:
    """Pod name -> address of the alerts Service's ready endpoints: where the
    Service sends an alert."""
    slices = client.DiscoveryV1Api(cluster.api).list_namespaced_endpoint_slice(
        NAMESPACE, label_selector=f"kubernetes.io/service-name={ALERTS_SERVICE}"
    )
    return {
        e.target_ref.name: e.addresses[0]
        for s in slices.items
        for e in s.endpoints or []
        if e.target_ref is not None and (e.conditions is None or e.conditions.ready)
    }


def alerts_token(cluster: Cluster) -> str:
    """The receiver's token (Secret pitstop-alerts, key token), made if absent."""
    try:
        secret = cluster.core.read_namespaced_secret("pitstop-alerts", NAMESPACE)
        return base64.b64decode(secret.data["token"]).decode().strip()
    except ApiException as e:
        if e.status != 404:
            raise
    token = secrets.token_urlsafe(24)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="pitstop-alerts"), string_data={"token": token}
    )
    cluster.core.create_namespaced_secret(NAMESPACE, body)
    return token


def post_alert(address: str, token: str) -> tuple[int, dict[str, object]]:
    """One firing alert that no RepairPolicy matches (it makes nothing)."""
    alert = {
        "labels": {"alertname": "PitstopInClusterProbe", "node": "none"},
        "status": "firing",
        "startsAt": "2026-12-06T00:00:00Z",
    }
    body = json.dumps({"version": "4", "status": "firing", "alerts": [alert]}).encode()
    request = urllib.request.Request(
        f"http://{address}:9095/alerts",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError as e:  # not listening (yet), refused, timed out
        return 0, {"error": str(e)}


def test_alerts_reach_the_leader_only(cluster: Cluster, installed: list[client.V1Pod]) -> None:
    """The alerts Service selects the label the leader puts on its own Pod: its only
    endpoint is the leader, so every alert posted where the Service routes is
    accepted (with both replicas behind it, half got the standby's 503)."""
    if not nodes_on_host(cluster):
        pytest.skip("posts to the Service's endpoints: only where this machine routes to them")
    pods = {p.metadata.name for p in operator_pods(cluster)}
    holder = wait_holder(cluster, pods)
    token = alerts_token(cluster)
    endpoints = wait_until(
        f"the {ALERTS_SERVICE} Service routing to the leader {holder} only",
        lambda: (e := alert_endpoints(cluster)).keys() == {holder} and e,
        timeout=60,
    )
    labelled = {
        p.metadata.name for p in operator_pods(cluster) if LEADER_LABEL in (p.metadata.labels or {})
    }
    assert labelled == {holder}, labelled
    # The receiver reads the token through a cache (or the kubelet's update of a
    # mounted Secret): the first answers may still be 401.
    address = endpoints[holder]
    wait_until("the leader accepting the token", lambda: post_alert(address, token)[0] == 200, 150)
    answers = [post_alert(a, token) for _ in range(4) for a in alert_endpoints(cluster).values()]
    assert len(answers) >= 4
    assert all(status == 200 and body.get("accepted") == 1 for status, body in answers), answers


def pid_of(pod: str) -> int:
    """The PID, on this machine, of the operator process of Pod `pod` (its
    environment carries POD_NAME from the downward API)."""
    marker = f"POD_NAME={pod}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ and b"pitstop" in cmdline:
            return int(entry.name)
    raise AssertionError(f"no process of Pod {pod} on this machine")


def test_sigkill_of_the_leaders_container_leaves_a_leader_within_the_lease_duration(
    cluster: Cluster, installed: list[client.V1Pod]
) -> None:
    """The kubelet restarts the killed container at once, under the same Pod name:
    it may take its own Lease back (the old process is gone), or the standby takes
    it once it expired. Either way a replica leads again within the lease duration
    + 5 s. (tests/e2e/test_leader_election.py proves the standby's takeover when the
    leader does not come back, under a burst of admissions.)"""
    if not nodes_on_host(cluster):
        pytest.skip("SIGKILLs a process on the node: only where the nodes run on this machine")
    pods = {p.metadata.name for p in operator_pods(cluster)}
    leader = wait_holder(cluster, pods)
    os.kill(pid_of(leader), signal.SIGKILL)
    killed = time.monotonic()

    def leading() -> str | None:
        holder = lease_holder(cluster)
        if holder not in pods:
            return None
        pod = cluster.core.read_namespaced_pod(holder, NAMESPACE)
        try:
            role = json.loads(get(cluster, pod, 8080, "/healthz")).get("role")
        except OSError:
            return None
        return holder if role == "leader" else None

    holder = wait_until(
        "a replica leading again", leading, timeout=LEASE_DURATION + 15, interval=0.2
    )
    took = time.monotonic() - killed
    print(f"\nleader SIGKILLed; {holder} leading after {took:.1f} s (lease {LEASE_DURATION} s)")
    assert took <= LEASE_DURATION + 5

    def restarted() -> bool:
        pod = cluster.core.read_namespaced_pod(leader, NAMESPACE)
        status = pod.status.container_statuses[0]
        return bool(status.restart_count >= 1 and status.ready)

    wait_until(f"{leader} restarted and Ready", restarted, timeout=120)
    roles = sorted(
        json.loads(get(cluster, p, 8080, "/healthz"))["role"] for p in operator_pods(cluster)
    )
    assert roles == ["leader", "standby"], roles
    # The alerts Service follows the Lease: its one endpoint is the leader now.
    holder = wait_holder(cluster, pods)
    wait_until(
        f"the {ALERTS_SERVICE} Service routing to {holder} only",
        lambda: alert_endpoints(cluster).keys() == {holder},
        timeout=60,
    )
