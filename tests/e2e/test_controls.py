"""The summary conditions (Ready, Reconciling, Stalled) judged by cli-utils' own
kstatus on real objects, and the controls on a RepairPolicy: the per-node opt-out
label, maintenance windows and notifications to a local HTTP receiver.

Each test has its own pool (`pool=<id>`) and policies selecting only it; repairs
use the Manual strategy, finished by the test (`pitstop.dev/repaired`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.kube import Cluster, wait_until
from tests.e2e.operator import Operator
from tests.e2e.policies_helpers import (
    Policies,
    heal,
    inject,
    mark_repaired,
    no_repair_for,
    policies_fixture,  # noqa: F401  (the `policies` fixture)
    policy_spec,
    repairs_for,
    wait_repair_phase,
)
from tests.e2e.repairs import GROUP, PLURAL, VERSION, Repairs
from tests.e2e.webhook_server import Reply, WebhookServer

pytestmark = pytest.mark.e2e

NS = "pitstop-system"
EXCLUDE = "pitstop.dev/exclude-from-repair"
KSTATUS_SRC = Path(__file__).resolve().parents[2] / "hack" / "kstatus"
KSTATUS_BIN = Path.home() / ".cache" / "pitstop" / "bin" / "kstatus-judge-cli-utils-v0.37.2"


@pytest.fixture(scope="session")
def kstatus() -> Path:
    """cli-utils' kstatus (v0.37.2, from the Go module proxy) as a command: reads one
    object per line, prints {"status", "message"} per line (hack/kstatus)."""
    if not KSTATUS_BIN.exists():
        if shutil.which("go") is None:
            pytest.skip("no Go toolchain to build hack/kstatus (cli-utils' kstatus)")
        KSTATUS_BIN.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["go", "build", "-trimpath", "-o", str(KSTATUS_BIN), "."],
            cwd=KSTATUS_SRC,
            env={**os.environ, "GOFLAGS": "-mod=mod"},
            check=True,
            timeout=900,
        )
    return KSTATUS_BIN


def judge(kstatus: Path, obj: dict[str, Any]) -> str:
    """kstatus's verdict on `obj`: Current, InProgress, Failed, Terminating, ..."""
    out = subprocess.run(
        [str(kstatus)], input=json.dumps(obj) + "\n", capture_output=True, text=True, check=True
    )
    return str(json.loads(out.stdout)["status"])


def conds(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def summary(obj: dict[str, Any]) -> tuple[str, str, str]:
    c = conds(obj)
    return tuple(c.get(t, {}).get("status", "-") for t in ("Ready", "Reconciling", "Stalled"))  # type: ignore[return-value]


def get_repair(cluster: Cluster, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    return obj


def assert_well_formed(obj: dict[str, Any]) -> None:
    """Each summary condition as the API conventions want it, and at the status's
    generation."""
    gen = obj["metadata"]["generation"]
    assert obj["status"]["observedGeneration"] == gen
    for t in ("Ready", "Reconciling", "Stalled"):
        c = conds(obj)[t]
        assert c["reason"] and c["message"] and c["lastTransitionTime"], c
        assert c["observedGeneration"] == gen, c
        assert "None" not in c["message"], c


@pytest.fixture
def chat(cluster: Cluster) -> Iterator[tuple[WebhookServer, str]]:
    """A chat service on loopback and a Secret holding its URL, marked for
    notifications by the platform admin with the receiver's prefix: (server, secret)."""
    with WebhookServer(lambda req, i: Reply(200, b"ok")) as server:
        name = f"chat-{uuid.uuid4().hex[:6]}"
        url = server.url.replace("/repair", "/services/T0/B0/s3cr3t-path")
        prefix = server.url.replace("/repair", "/services/")
        cluster.kubectl("create", "secret", "generic", name, "-n", NS, f"--from-literal=url={url}")
        cluster.kubectl("label", "secret", name, "-n", NS, "pitstop.dev/notification-secret=true")
        cluster.kubectl(
            "annotate", "secret", name, "-n", NS, f"pitstop.dev/notification-url-prefixes={prefix}"
        )
        yield server, name
        cluster.kubectl("delete", "secret", name, "-n", NS, "--ignore-not-found", "--wait=false")


def texts(server: WebhookServer) -> list[tuple[str, str]]:
    return [(r.body["pitstop"]["event"], r.body["pitstop"]["repair"]) for r in server.requests]


def test_repairs_and_policy_judged_by_kstatus_and_notified(
    cluster: Cluster,
    pool: Any,
    policies: Policies,
    chat: tuple[WebhookServer, str],
    kstatus: Path,
) -> None:
    server, secret = chat
    p = pool(3)
    good, bad = p.names[0], p.names[1]
    notify = {
        "webhook": {"secretRef": {"name": secret, "key": "url"}, "timeoutSeconds": 5},
        "template": "{policy}: {repair} on {node} {event} ({reason}): {message}",
    }
    rp = policies.create(p, policy_spec(p, notifications=notify))
    policies.wait_observed(rp)
    policy = policies.get(rp)
    assert summary(policy) == ("True", "False", "False"), conds(policy)
    assert conds(policy)["Ready"]["reason"] == "Watching"
    assert_well_formed(policy)
    assert judge(kstatus, policy) == "Current"

    # A repair under way: Reconciling, kstatus InProgress.
    inject(cluster, good)
    name = wait_until("a repair of the good node", lambda: repairs_for(cluster, [good]))[0][
        "metadata"
    ]["name"]
    under_way = wait_repair_phase(cluster, name, "Repairing", timeout=60)
    assert summary(under_way) == ("False", "True", "False"), conds(under_way)
    assert conds(under_way)["Reconciling"]["reason"] == "Repairing"
    assert_well_formed(under_way)
    assert judge(kstatus, under_way) == "InProgress"
    started = server.wait_requests(1)[0]
    assert started.body["pitstop"] == {
        "event": "started",
        "repair": name,
        "node": good,
        "policy": rp,
        "reason": started.body["pitstop"]["reason"],
        "phase": started.body["pitstop"]["phase"],
        "message": started.body["pitstop"]["message"],
    }
    assert started.body["text"].startswith(f"{rp}: {name} on {good} started (")
    assert "KernelDeadlock" in started.body["pitstop"]["reason"]
    assert started.headers["content-type"].startswith("application/json")

    # Success: Ready, kstatus Current; told once.
    heal(cluster, good)
    mark_repaired(cluster, name)
    done = wait_repair_phase(cluster, name, "Succeeded", timeout=60)
    done = wait_until(
        "the summary of the finished repair",
        lambda: (r := get_repair(cluster, name)) and summary(r)[0] == "True" and r,
        timeout=10,
    )
    assert summary(done) == ("True", "False", "False"), conds(done)
    assert conds(done)["Ready"]["reason"] == "Succeeded"
    assert_well_formed(done)
    assert judge(kstatus, done) == "Current"
    server.wait_requests(2)
    assert texts(server) == [("started", name), ("succeeded", name)]

    # Failure: Stalled, kstatus Failed; told.
    inject(cluster, bad)
    failing = wait_until("a repair of the bad node", lambda: repairs_for(cluster, [bad]))[0][
        "metadata"
    ]["name"]
    wait_repair_phase(cluster, failing, "Repairing", timeout=60)
    mark_repaired(cluster, failing, "false")
    wait_repair_phase(cluster, failing, "Failed", timeout=60)
    failed = wait_until(
        "the summary of the failed repair",
        lambda: (r := get_repair(cluster, failing)) and summary(r)[2] == "True" and r,
        timeout=10,
    )
    assert summary(failed) == ("False", "False", "True"), conds(failed)
    assert conds(failed)["Stalled"]["message"] == failed["status"]["message"]
    assert_well_formed(failed)
    assert judge(kstatus, failed) == "Failed"
    server.wait_requests(4)
    assert texts(server)[2:] == [("started", failing), ("failed", failing)]
    assert "failed" in server.requests[3].body["text"]

    # Nothing about the URL anywhere the operator writes.
    for e in policies.events(rp):
        assert "s3cr3t" not in (e.message or "")
    assert "s3cr3t" not in json.dumps(policies.get(rp)["status"])


def test_notifications_need_a_secret_the_admin_marked(
    cluster: Cluster, pool: Any, policies: Policies
) -> None:
    """A Secret not labelled for notifications is not read for a URL: nothing is
    posted, the policy gets NotificationFailed naming the Secret, never the URL."""
    with WebhookServer(lambda req, i: Reply(200, b"ok")) as server:
        name = f"chat-{uuid.uuid4().hex[:6]}"
        url = server.url + "/s3cr3t"
        cluster.kubectl("create", "secret", "generic", name, "-n", NS, f"--from-literal=url={url}")
        try:
            p = pool(2)
            node = p.names[0]
            notify = {"webhook": {"secretRef": {"name": name, "key": "url"}}}
            rp = policies.create(p, policy_spec(p, notifications=notify))
            policies.wait_observed(rp)
            inject(cluster, node)
            repair = wait_until("a repair", lambda: repairs_for(cluster, [node]))[0]
            wait_repair_phase(cluster, repair["metadata"]["name"], "Repairing", timeout=60)
            (event,) = policies.wait_event(rp, "NotificationFailed", "Warning")
            assert f"{NS}/{name} is not marked for notifications" in event.message
            assert "s3cr3t" not in event.message
            time.sleep(1)
            assert server.requests == []
        finally:
            cluster.kubectl("delete", "secret", name, "-n", NS, "--ignore-not-found")


def test_an_excluded_node_is_not_repaired_automatically_but_by_hand(
    cluster: Cluster, pool: Any, policies: Policies, repairs: Repairs
) -> None:
    p = pool(2)
    node = p.names[0]
    cluster.core.patch_node(node, {"metadata": {"labels": {EXCLUDE: "true"}}})
    rp = policies.create(p, policy_spec(p))
    policies.wait_observed(rp)
    inject(cluster, node)
    status = policies.wait_status(
        rp, "NodeExcluded", lambda s: (s.get("suppressed") or {}).get("reason") == "NodeExcluded"
    )
    assert status["suppressed"]["nodes"] == [node] and status["unhealthyNodes"] == 1
    (event,) = policies.wait_event(rp, "NodeExcluded", "Normal")
    assert node in event.message and "KernelDeadlock" in event.message
    assert EXCLUDE in event.message
    no_repair_for(cluster, [node], seconds=3)

    # By hand it runs: the label holds back automatic repairs only.
    name = repairs.create(node, repair={"strategy": "Manual", "timeoutSeconds": 60})
    wait_repair_phase(cluster, name, "Repairing", timeout=60)
    assert [r["metadata"]["name"] for r in repairs_for(cluster, [node])] == [name]

    # Without the label, the fault is repaired once the manual repair is gone.
    repairs.delete(name)
    wait_until("the manual repair gone", lambda: not repairs.exists(name), timeout=30)
    cluster.core.patch_node(node, {"metadata": {"labels": {EXCLUDE: None}}})
    made = wait_until("an automatic repair", lambda: repairs_for(cluster, [node]), timeout=20)
    assert made[0]["metadata"]["labels"]["pitstop.dev/policy"] == rp


def hhmm(when: datetime) -> str:
    return when.strftime("%H:%M")


def test_maintenance_windows_gate_automatic_repairs(
    cluster: Cluster, pool: Any, policies: Policies, kstatus: Path
) -> None:
    now = datetime.now(UTC)
    opens = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    closed = [{"start": hhmm(opens), "end": hhmm(opens + timedelta(hours=1))}]
    p = pool(2)
    node = p.names[0]
    rp = policies.create(p, policy_spec(p, maintenanceWindows=closed))
    policies.wait_observed(rp)
    status = policies.status(rp)
    assert status["maintenanceWindow"] == {
        "open": False,
        "nextOpenTime": opens.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    inject(cluster, node)
    status = policies.wait_status(
        rp,
        "OutsideMaintenanceWindow",
        lambda s: (s.get("suppressed") or {}).get("reason") == "OutsideMaintenanceWindow",
    )
    assert opens.strftime("%Y-%m-%dT%H:%M:%SZ") in status["suppressed"]["message"]
    no_repair_for(cluster, [node], seconds=3)
    policy = policies.get(rp)
    assert summary(policy) == ("True", "False", "False")  # waiting as told
    assert judge(kstatus, policy) == "Current"

    # A window open now (in Berlin's wall-clock time): the repair starts.
    berlin = datetime.now(ZoneInfo("Europe/Berlin"))
    open_now = [
        {
            "start": hhmm(berlin - timedelta(hours=1)),
            "end": hhmm(berlin + timedelta(hours=1)),
            "timeZone": "Europe/Berlin",
        }
    ]
    policies.patch_spec(rp, {"maintenanceWindows": open_now})
    made = wait_until("a repair inside the window", lambda: repairs_for(cluster, [node]))
    wait_repair_phase(cluster, made[0]["metadata"]["name"], "Repairing", timeout=60)
    status = policies.wait_observed(rp)
    assert status["maintenanceWindow"]["open"] is True and status["maintenanceWindow"]["closesAt"]

    # An unknown zone: no automatic repair, Stalled, kstatus Failed.
    policies.patch_spec(
        rp, {"maintenanceWindows": [{"start": "00:00", "end": "23:59", "timeZone": "Mars/Base"}]}
    )
    policies.wait_observed(rp)
    policy = policies.get(rp)
    assert summary(policy) == ("False", "False", "True")
    assert conds(policy)["Stalled"]["reason"] == "InvalidMaintenanceWindow"
    assert "Mars/Base" in conds(policy)["Stalled"]["message"]
    assert judge(kstatus, policy) == "Failed"


def test_bad_windows_and_templates_are_refused_at_admission(
    cluster: Cluster, pool: Any, policies: Policies
) -> None:
    p = pool(1)
    bad = [
        ({"maintenanceWindows": [{"start": "02:00", "end": "02:00"}]}, "start and end must differ"),
        ({"maintenanceWindows": [{"start": "25:00", "end": "02:00"}]}, "start"),
        ({"maintenanceWindows": [{"start": "01:00", "end": "02:00", "days": ["Funday"]}]}, "days"),
        (
            {
                "notifications": {
                    "webhook": {"secretRef": {"name": "s", "key": "url"}},
                    "template": "{node} {token}",
                }
            },
            "unknown placeholder",
        ),
    ]
    for spec, said in bad:
        with pytest.raises(Exception) as refused:
            policies.create(p, policy_spec(p, **spec))
        assert said in str(refused.value), (spec, str(refused.value)[:500])


def test_instance_profiles_judged_by_kstatus(
    cluster: Cluster, running_operator: Operator, kstatus: Path
) -> None:
    """A valid profile is Current; one the CRD admits but the operator cannot use (a
    regular expression that does not compile) is Stalled, kstatus Failed."""
    ip = "instanceprofiles"
    made = []
    try:
        for spec in (
            {"podSelector": {"matchLabels": {"fleet": uuid.uuid4().hex[:8]}}, "kind": "sync"},
            {
                "podSelector": {"matchLabels": {"fleet": uuid.uuid4().hex[:8]}},
                "tasks": {
                    "prometheus": {
                        "port": 1,
                        "metric": "m",
                        "labels": [{"name": "a", "operator": "=~", "value": "("}],
                    }
                },
            },
        ):
            name = f"ip-{uuid.uuid4().hex[:8]}"
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InstanceProfile"}
            body |= {"metadata": {"name": name}, "spec": spec}
            cluster.custom.create_cluster_custom_object(GROUP, VERSION, ip, body)
            made.append(name)

        def profile(name: str) -> dict[str, Any]:
            obj: dict[str, Any] = cluster.custom.get_cluster_custom_object(GROUP, VERSION, ip, name)
            return obj

        good, bad = (
            wait_until(f"{n} judged", lambda n=n: "Stalled" in conds(profile(n)) and profile(n))
            for n in made
        )
        assert summary(good) == ("True", "False", "False"), conds(good)
        assert judge(kstatus, good) == "Current"
        assert summary(bad) == ("False", "False", "True"), conds(bad)
        assert "not a regular expression" in conds(bad)["Stalled"]["message"]
        assert judge(kstatus, bad) == "Failed"
    finally:
        for name in made:
            cluster.custom.delete_cluster_custom_object(GROUP, VERSION, ip, name)


def test_a_policys_pending_repair_waits_for_the_next_window(
    cluster: Cluster, pool: Any, policies: Policies
) -> None:
    """Made inside a window but held Pending by maxConcurrentRepairs, a repair does
    not start once the window has closed: it waits, saying until when, and starts
    when a window opens. The repair already under way finishes meanwhile."""
    berlin = datetime.now(ZoneInfo("Europe/Berlin"))
    open_now = [
        {
            "start": hhmm(berlin - timedelta(hours=1)),
            "end": hhmm(berlin + timedelta(hours=1)),
            "timeZone": "Europe/Berlin",
        }
    ]
    p = pool(3)
    first_node, second_node = p.names[0], p.names[1]
    rp = policies.create(p, policy_spec(p, maintenanceWindows=open_now, maxConcurrentRepairs=1))
    policies.wait_observed(rp)
    inject(cluster, first_node)
    first = wait_until("the first repair", lambda: repairs_for(cluster, [first_node]))[0]
    first_name = first["metadata"]["name"]
    wait_repair_phase(cluster, first_name, "Repairing", timeout=60)
    inject(cluster, second_node)
    second = wait_until("the second repair", lambda: repairs_for(cluster, [second_node]))[0]
    second_name = second["metadata"]["name"]
    wait_until(
        "the second waits for capacity",
        lambda: (
            "MaxConcurrentRepairs"
            in ((get_repair(cluster, second_name).get("status") or {}).get("message") or "")
        ),
        timeout=30,
    )

    # The window closes (moved two hours ahead); the first repair finishes anyway.
    later = datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(hours=2)
    closed = [
        {"start": hhmm(later), "end": hhmm(later + timedelta(hours=1)), "timeZone": "Europe/Berlin"}
    ]
    policies.patch_spec(rp, {"maintenanceWindows": closed})
    policies.wait_observed(rp)
    heal(cluster, first_node)
    mark_repaired(cluster, first_name)
    wait_repair_phase(cluster, first_name, "Succeeded", timeout=60)
    waiting = wait_until(
        "the second held by the window",
        lambda: (
            (m := (get_repair(cluster, second_name).get("status") or {}).get("message"))
            and "OutsideMaintenanceWindow" in m
            and m
        ),
        timeout=30,
    )
    assert f"(policy {rp})" in waiting and "opens at" in waiting
    time.sleep(2)
    assert (get_repair(cluster, second_name).get("status") or {}).get("phase") == "Pending"

    policies.patch_spec(rp, {"maintenanceWindows": open_now})
    wait_repair_phase(cluster, second_name, "Repairing", timeout=60)
