"""The Alertmanager receiver (POST /alerts on the operator's alerts port) on the
real control plane: alerts named in a RepairPolicy become NodeRepairs for the
pool's nodes; authentication, malformed and oversized payloads; resolved alerts
leave running repairs alone; and end to end through a real Alertmanager (Debian's
prometheus-alertmanager), with the right token and with a wrong one.

The bearer token is the one in Secret pitstop-system/pitstop-alerts (key token);
the `alerts_token` fixture makes it if it is missing."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.kube import Cluster, wait_until
from tests.e2e.operator import Operator, free_port
from tests.e2e.policies_helpers import (
    POLICY_LABEL,
    Policies,
    alert,
    alerts_token_fixture,  # noqa: F401  (the `alerts_token` fixture)
    get_repair,
    mark_repaired,
    payload,
    policies_fixture,  # noqa: F401  (the `policies` fixture)
    policy_spec,
    post,
    repairs_for,
    wait_repair_phase,
)

pytestmark = pytest.mark.e2e

ALERT = "NodeDiskFailing"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def alert_policy(p: Any) -> dict[str, Any]:
    """Alerts only: no node condition makes a node unhealthy."""
    return policy_spec(p, unhealthyConditions=[], alerts={"names": [ALERT], "nodeLabel": "node"})


def one_repair(cluster: Cluster, node: str, timeout: float = 20) -> dict[str, Any]:
    found: list[dict[str, Any]] = wait_until(
        f"a NodeRepair for {node}", lambda: repairs_for(cluster, [node]), timeout=timeout
    )
    assert len(found) == 1, [r["metadata"]["name"] for r in found]
    return found[0]


# --- the receiver, over HTTP ---


def test_firing_alert_makes_a_repair_and_resolving_it_does_not_stop_it(
    cluster: Cluster, pool: Any, policies: Policies, running_operator: Operator, alerts_token: str
) -> None:
    p = pool(2)
    node = p.names[0]
    rp = policies.create(p, alert_policy(p))
    policies.wait_observed(rp)

    reply = post(running_operator.alerts_port, payload(alert(ALERT, node)), alerts_token)
    assert reply.status == 200, reply
    assert reply.body == {"accepted": 1, "firing": 1}, reply
    repair = one_repair(cluster, node)
    name = repair["metadata"]["name"]
    assert repair["metadata"]["labels"][POLICY_LABEL] == rp
    assert repair["spec"]["nodeName"] == node
    assert ALERT in repair["spec"]["reason"], repair["spec"]["reason"]
    assert not repairs_for(cluster, [p.names[1]])
    wait_repair_phase(cluster, name, "Repairing", timeout=30)
    policies.wait_status(rp, "1 unhealthy", lambda s: s.get("unhealthyNodes") == 1)

    # Resolved: no new repair, and the running one goes on (once the policy's pass
    # that took the resolution has written its status, after anything it did).
    reply = post(
        running_operator.alerts_port, payload(alert(ALERT, node, "resolved")), alerts_token
    )
    assert reply.status == 200 and reply.body == {"accepted": 1, "firing": 0}, reply
    policies.wait_status(rp, "0 unhealthy", lambda s: s.get("unhealthyNodes") == 0)
    current = get_repair(cluster, name)
    assert current["metadata"].get("deletionTimestamp") is None
    assert current["status"]["phase"] == "Repairing", current["status"]
    mark_repaired(cluster, name)
    wait_repair_phase(cluster, name, "Succeeded", timeout=30)
    assert [r["metadata"]["name"] for r in repairs_for(cluster, p.names)] == [name]


def test_receiver_refuses_requests_without_the_token(
    running_operator: Operator, alerts_token: str
) -> None:
    body = payload(alert(ALERT, "some-node"))
    port = running_operator.alerts_port
    for reply in (
        post(port, body),
        post(port, body, "wrong-" + alerts_token),
        post(port, body, headers={"Authorization": alerts_token}),  # no scheme
        post(port, body, headers={"Authorization": f"Basic {alerts_token}"}),
    ):
        assert reply.status == 401, reply
        assert "token" in reply.body["error"], reply


def test_receiver_rejects_malformed_payloads(running_operator: Operator, alerts_token: str) -> None:
    port = running_operator.alerts_port
    bad_json = post(port, b'{"version": "4", "alerts": [', alerts_token)
    assert bad_json.status == 400, bad_json
    assert "JSON" in bad_json.body["error"], bad_json

    v3 = post(port, payload(alert(ALERT, "n"), version="3"), alerts_token)
    assert v3.status == 400, v3
    assert "version" in v3.body["error"] and "'3'" in v3.body["error"], v3

    no_name = json.loads(payload(alert(ALERT, "n")))
    del no_name["alerts"][0]["labels"]["alertname"]
    reply = post(port, json.dumps(no_name).encode(), alerts_token)
    assert reply.status == 400 and "alertname" in reply.body["error"], reply
    reply = post(port, b"[]", alerts_token)
    assert reply.status == 400 and "object" in reply.body["error"], reply

    big = payload(alert(ALERT, "n", filler="x" * (1024 * 1024)))
    assert len(big) > 1024 * 1024
    reply = post(port, big, alerts_token)
    assert reply.status == 413, reply
    assert "larger" in reply.body["error"], reply


def trickle(body: bytes, size: int = 4096) -> Iterator[bytes]:
    """The body in pieces with pauses, as a slow network delivers it."""
    for i in range(0, len(body), size):
        time.sleep(0.002)
        yield body[i : i + size]


def test_receiver_reads_the_whole_body(running_operator: Operator, alerts_token: str) -> None:
    """A payload is read to its end, however it arrives (an alert group of a few
    hundred alerts is tens of kB, more than one TCP segment on a real network)."""
    port = running_operator.alerts_port
    many = payload(*(alert("NotOnAnyPolicy", f"nowhere-{i}") for i in range(200)))
    assert len(many) > 50_000
    length = {"Content-Length": str(len(many))}
    reply = post(port, trickle(many), alerts_token, headers=length)
    assert reply.status == 200 and reply.body == {"accepted": 200, "firing": 200}, reply
    reply = post(port, trickle(many), alerts_token, chunked=True)
    assert reply.status == 200 and reply.body == {"accepted": 200, "firing": 200}, reply
    # Without a Content-Length, the limit holds too: 413, not a parse error.
    big = payload(alert(ALERT, "n", filler="x" * (1024 * 1024)))
    reply = post(port, trickle(big, 65536), alerts_token, chunked=True)
    assert reply.status == 413, reply


def test_alerts_that_do_not_match_make_nothing(
    cluster: Cluster, pool: Any, policies: Policies, running_operator: Operator, alerts_token: str
) -> None:
    p = pool(4)
    outside = pool(1).names[0]
    sentinel, unlisted, refused, _ = p.names
    rp = policies.create(p, alert_policy(p))
    policies.nodes.add(outside)  # cleaned up too, should it get a repair
    policies.wait_observed(rp)
    port = running_operator.alerts_port

    for body in (
        payload(alert(ALERT, outside)),  # a node outside the pool
        payload(alert("NodeFanFailing", unlisted)),  # an alert the policy does not list
        payload(alert(ALERT, None, host=unlisted)),  # no node label
    ):
        assert post(port, body, alerts_token).status == 200
    assert post(port, payload(alert(ALERT, refused)), "wrong").status == 401
    # Alerts are taken in order: once this one has its repair, those before were seen.
    assert post(port, payload(alert(ALERT, sentinel)), alerts_token).status == 200
    one_repair(cluster, sentinel)
    # The pass that first counted it had taken the alerts before it, and made its
    # repairs before writing that status.
    policies.wait_status(rp, "1 unhealthy", lambda s: s.get("unhealthyNodes") == 1)
    assert not repairs_for(cluster, [outside, unlisted, refused])


# --- a real Alertmanager ---


def alertmanager_version() -> str:
    if not Path(ALERTMANAGER).exists():
        pytest.skip(
            f"{ALERTMANAGER} is missing: install Debian's prometheus-alertmanager package"
            " (apt-get install -y prometheus-alertmanager)"
        )
    out = subprocess.run(
        [ALERTMANAGER, "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    return (out.stdout + out.stderr).split("version", 1)[1].split()[0]


@contextmanager
def alertmanager(workdir: Path, receiver_port: int, token: str) -> Iterator[tuple[str, Path]]:
    """An Alertmanager (no clustering) whose one route sends every alert at once to
    the operator's receiver with `token`; yields its URL and its log."""
    version = alertmanager_version()
    major, minor = (int(x) for x in version.split(".")[:2])
    # `authorization` arrived in 0.22 (prometheus/common); older ones take bearer_token.
    if (major, minor) >= (0, 22):
        http_config: dict[str, Any] = {"authorization": {"type": "Bearer", "credentials": token}}
    else:
        http_config = {"bearer_token": token}
    config = {
        "route": {
            "receiver": "pitstop",
            "group_by": ["alertname", "node"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "pitstop",
                "webhook_configs": [
                    {
                        "url": f"http://127.0.0.1:{receiver_port}/alerts",
                        "send_resolved": True,
                        "http_config": http_config,
                    }
                ],
            }
        ],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "alertmanager.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={workdir / 'alertmanager.yml'}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=debug",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"alertmanager exited: {log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until("alertmanager ready", ready, timeout=30, interval=0.2)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fire(url: str, node: str) -> None:
    """What Prometheus does: POST the alert to Alertmanager's API."""
    body = [
        {
            "labels": {"alertname": ALERT, "node": node, "severity": "critical"},
            "annotations": {"summary": f"disk failing on {node}"},
            "startsAt": datetime.now(UTC).isoformat(),
            "generatorURL": "http://prometheus.example/graph",
        }
    ]
    req = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200, r.status


def test_alertmanager_alert_makes_a_repair(
    cluster: Cluster,
    pool: Any,
    policies: Policies,
    running_operator: Operator,
    alerts_token: str,
    tmp_path: Path,
) -> None:
    alertmanager_version()
    p = pool(2)
    node = p.names[0]
    rp = policies.create(p, alert_policy(p))
    policies.wait_observed(rp)
    with alertmanager(tmp_path / "am", running_operator.alerts_port, alerts_token) as (url, log):
        fire(url, node)
        repair = one_repair(cluster, node, timeout=20)
        wait_until("Notify success", lambda: "Notify success" in log.read_text(), timeout=10)
    assert repair["metadata"]["labels"][POLICY_LABEL] == rp
    assert ALERT in repair["spec"]["reason"]
    assert not repairs_for(cluster, [p.names[1]])


def test_an_alert_fault_survives_an_operator_restart(
    cluster: Cluster,
    pool: Any,
    policies: Policies,
    running_operator: Operator,
    alerts_token: str,
    tmp_path: Path,
) -> None:
    """An alert that came while the policy was paused still counts after the leader
    changed, though Alertmanager repeats it only after repeat_interval (1h here)."""
    alertmanager_version()
    p = pool(2)
    node = p.names[0]
    rp = policies.create(p, {**alert_policy(p), "paused": True})
    policies.wait_observed(rp)
    with alertmanager(tmp_path / "am", running_operator.alerts_port, alerts_token) as (url, log):
        fire(url, node)
        status = policies.wait_status(rp, "the alert kept", lambda s: s.get("alerts"))
        wait_until("Notify success", lambda: "Notify success" in log.read_text(), timeout=10)
        (kept,) = status["alerts"]
        assert (kept["node"], kept["alertname"]) == (node, ALERT), kept
        # Alertmanager sends no endsAt while an alert fires: the fault holds until resolved.
        assert "endsAt" not in kept, kept

        running_operator.kill()
        running_operator.start()
        policies.patch_spec(rp, {"paused": False})
        repair = one_repair(cluster, node, timeout=20)
    assert ALERT in repair["spec"]["reason"]
    assert "Notify success" in log.read_text()


def test_alertmanager_with_a_wrong_token_makes_nothing(
    cluster: Cluster,
    pool: Any,
    policies: Policies,
    running_operator: Operator,
    alerts_token: str,
    tmp_path: Path,
) -> None:
    alertmanager_version()
    p = pool(2)
    node = p.names[0]
    rp = policies.create(p, alert_policy(p))
    policies.wait_observed(rp)
    port = running_operator.alerts_port
    with alertmanager(tmp_path / "am", port, "wrong-" + alerts_token) as (url, log):
        fire(url, node)
        # Alertmanager tried, and the receiver said 401 (a client error: no retry).
        text = wait_until(
            "Alertmanager's notification refused with 401",
            lambda: (
                (t := log.read_text(errors="replace")) and "unexpected status code 401" in t and t
            ),
            timeout=20,
            interval=0.2,
        )
    assert "Notify for alerts failed" in text and "bearer token" in text, text[-2000:]
    assert not repairs_for(cluster, p.names), "a refused notification is no alert"
