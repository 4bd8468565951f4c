"""The shipped alerting rules and dashboard against a real Prometheus (Debian's
prometheus package) scraping the e2e operator's /metrics every second: a repair
that is really stuck (the API server refuses its status writes once it is
Repairing, as a broken admission webhook would) fires PitstopRepairPastDeadline,
and its failure once released fires PitstopRepairsFailing; after a RepairPolicy's
repair through every phase, every panel's PromQL of the shipped dashboard returns
series, so no panel is dead.

Prometheus loads a copy of charts/pitstop/files/pitstop.rules.yaml rewritten by
this test in one respect only: the `for:` of PitstopRepairPastDeadline is 1s
instead of the shipped 5m (`rules_for_test`), so the test does not wait five
minutes. Every expression, label and annotation is the shipped one."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.kube import REPO, Cluster, Pool, wait_until
from tests.e2e.operator import Operator, free_port
from tests.e2e.policies_helpers import (
    Policies,
    heal,
    inject,
    mark_repaired,
    policies_fixture,  # noqa: F401  (the `policies` fixture)
    policy_spec,
    repairs_for,
    wait_repair_phase,
)
from tests.e2e.repairs import GROUP, PLURAL, VERSION, Repairs
from tests.e2e.workloads import deployment, ready_pods, running_pods

pytestmark = pytest.mark.e2e

PROMETHEUS = "/usr/bin/prometheus"
RULES = REPO / "charts" / "pitstop" / "files" / "pitstop.rules.yaml"
DASHBOARD = REPO / "charts" / "pitstop" / "files" / "pitstop-dashboard.json"
JOB = "pitstop"
STUCK_ALERT = "PitstopRepairPastDeadline"
SHORTENED_FOR = {STUCK_ALERT: "1s"}
"""The only change to the shipped rules: `for:` durations a test cannot wait for."""


def rules_for_test(dst: Path) -> Path:
    """The shipped rules file with the `for:` of SHORTENED_FOR shortened; nothing else."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in SHORTENED_FOR:
                rule["for"] = SHORTENED_FOR[rule["alert"]]
    dst.write_text(yaml.safe_dump(rules, sort_keys=False))
    return dst


class Prometheus:
    def __init__(self, url: str, log: Path, started: float):
        self.url, self.log, self.started = url, log, started

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> Any:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def value(self, expr: str) -> float | None:
        found = self.query(expr)
        return float(found[0]["value"][1]) if found else None

    def alerts(self, name: str, state: str | None = None) -> list[dict[str, Any]]:
        return [
            a
            for a in self.api("alerts")["alerts"]
            if a["labels"]["alertname"] == name and (state is None or a["state"] == state)
        ]


@pytest.fixture(scope="module")
def prometheus(
    operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """A Prometheus on a free loopback port with its data in a temp dir, scraping the
    operator every second and evaluating the (rewritten copy of the) shipped rules
    every second."""
    if not Path(PROMETHEUS).exists():
        pytest.skip(f"{PROMETHEUS} is missing: install Debian's prometheus package")
    operator.ensure_running()
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_for_test(workdir / "pitstop.rules.yaml"))],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=info",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started = time.time()
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until("prometheus ready", ready, timeout=30, interval=0.2)
        prom = Prometheus(url, log, started)
        groups = prom.api("rules")["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"]}
        shipped = {
            r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
        }
        assert loaded == shipped, (loaded, shipped)
        wait_until(
            "the operator scraped",
            lambda: prom.value(f'up{{job="{JOB}"}}') == 1.0,
            timeout=30,
            interval=0.5,
        )
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"\nprometheus log: {log}")


# --- a stuck repair ---


@contextmanager
def status_writes_refused_once_repairing(cluster: Cluster, repair: str) -> Iterator[None]:
    """A ValidatingAdmissionPolicy that refuses every status write of NodeRepair
    `repair` once it is Repairing (as a failing admission webhook would): its driver
    decides but can write nothing, so the repair stays in the phase past its
    deadline. Active once a dry-run create of `<repair>-probe` is refused; gone, on
    the way out, once it is accepted again (so the repair's deletion is not refused)."""
    adm = client.AdmissionregistrationV1Api(cluster.api)
    name = f"e2e-stuck-{repair}"
    expression = (
        f"request.operation == 'CREATE' ? object.metadata.name != '{repair}-probe' : ("
        f"object.metadata.name != '{repair}' || !has(oldObject.status)"
        " || !has(oldObject.status.phase) || oldObject.status.phase != 'Repairing')"
    )
    probe = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NodeRepair",
        "metadata": {"name": f"{repair}-probe"},
        "spec": {"nodeName": "nowhere", "reason": "probe"},
    }

    def refused() -> bool:
        try:
            cluster.custom.create_cluster_custom_object(
                GROUP, VERSION, PLURAL, probe, dry_run="All"
            )
        except ApiException as e:
            return e.status in (400, 403, 422)
        return False

    adm.create_validating_admission_policy(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": [VERSION],
                            "operations": ["UPDATE"],
                            "resources": [f"{PLURAL}/status"],
                        },
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": [VERSION],
                            "operations": ["CREATE"],
                            "resources": [PLURAL],
                        },
                    ]
                },
                "validations": [{"expression": expression, "message": "simulated API failure"}],
            },
        }
    )
    try:
        adm.create_validating_admission_policy_binding(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {"policyName": name, "validationActions": ["Deny"]},
            }
        )
        wait_until("the API refusing the probe", refused, timeout=30, interval=0.5)
        yield
    finally:
        for delete in (
            adm.delete_validating_admission_policy_binding,
            adm.delete_validating_admission_policy,
        ):
            try:
                delete(name)
            except ApiException as e:
                if e.status != 404:
                    raise
        wait_until("the API accepting the probe", lambda: not refused(), timeout=30, interval=0.5)


def test_a_stuck_repair_fires_its_alert_and_its_failure_another(
    cluster: Cluster, pool: Callable[[int], Pool], repairs: Repairs, prometheus: Prometheus
) -> None:
    node = pool(1).names[0]
    name = f"stuck-{uuid.uuid4().hex[:8]}"
    timeout = 8  # repair.timeoutSeconds: the Repairing phase's deadline
    assert not prometheus.alerts(STUCK_ALERT), "a repair of an earlier test is stuck"
    with status_writes_refused_once_repairing(cluster, name):
        repairs.create(
            node,
            name=name,
            repair={"strategy": "Manual", "timeoutSeconds": timeout, "maxAttempts": 1},
        )
        status = repairs.wait_phase(name, "Repairing", timeout=30)
        # Within its deadline: in the phase, not past it.
        assert prometheus.alerts(STUCK_ALERT) == []
        found = wait_until(
            f"{STUCK_ALERT} firing",
            lambda: prometheus.alerts(STUCK_ALERT, "firing"),
            timeout=timeout + 30,
            interval=0.5,
        )
        (alert,) = found
        assert alert["labels"]["phase"] == "Repairing", alert
        assert alert["labels"]["severity"] == "warning", alert
        assert alert["annotations"]["runbook_url"] == "docs/runbooks.md#pitstoprepairpastdeadline"
        # It is really stuck: still Repairing, its deadline passed, and the driver
        # keeps deciding (its passes are counted) but cannot write.
        assert repairs.phase(name) == "Repairing"
        assert status["repair"]["attemptStartTime"], status
        passes = prometheus.value(f'pitstop_repair_passes_total{{repair="{name}"}}')
        wait_until(
            "the driver still deciding",
            lambda: (
                (prometheus.value(f'pitstop_repair_passes_total{{repair="{name}"}}') or 0)
                > (passes or 0)
            ),
            timeout=15,
            interval=0.5,
        )
    # Released: the pass writes what it decided (the attempt timed out: Failed), the
    # repair leaves the phase, and its failure is told by the other alert.
    repairs.wait_phase(name, "Failed", timeout=30)
    wait_until(
        f"{STUCK_ALERT} resolved",
        lambda: not prometheus.alerts(STUCK_ALERT),
        timeout=30,
        interval=0.5,
    )
    (failing,) = wait_until(
        "PitstopRepairsFailing firing",
        lambda: prometheus.alerts("PitstopRepairsFailing", "firing"),
        timeout=30,
        interval=0.5,
    )
    assert failing["annotations"]["runbook_url"] == "docs/runbooks.md#pitstoprepairsfailing"


# --- the dashboard ---


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["expr"])
        for p in dashboard["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's template variables ($name, ${name}, $__rate_interval) as it would."""
    done = re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m.group(1)], expr)
    assert "$" not in done, done
    return done


def test_after_a_policys_repair_every_dashboard_panel_has_data(
    cluster: Cluster,
    namespace: str,
    pool: Callable[[int], Pool],
    policies: Policies,
    prometheus: Prometheus,
) -> None:
    p = pool(2)
    sick = p.names[0]
    cluster.apps.create_namespaced_deployment(
        namespace, deployment("fn", 2, p.selector, gated=True)
    )
    ready_pods(cluster, namespace, "fn", 2)  # the serving gates opened
    busy = next(x for x in running_pods(cluster, namespace, "fn", 2) if x.spec.node_name == sick)
    cluster.core.patch_namespaced_pod(
        busy.metadata.name,
        namespace,
        {"metadata": {"annotations": {"pitstop.dev/inflight-tasks": "3"}}},
    )
    rp = policies.create(p, policy_spec(p))
    policies.wait_observed(rp)
    inject(cluster, sick)
    (repair,) = wait_until(f"a repair of {sick}", lambda: repairs_for(cluster, [sick]), timeout=30)
    name = repair["metadata"]["name"]
    wait_repair_phase(cluster, name, "WaitingForTasks", timeout=30)
    wait_until(
        "the tasks in flight scraped",
        lambda: prometheus.value(f'pitstop_inflight_tasks{{node="{sick}"}}') == 3.0,
        timeout=20,
        interval=0.5,
    )
    cluster.core.patch_namespaced_pod(
        busy.metadata.name,
        namespace,
        {"metadata": {"annotations": {"pitstop.dev/inflight-tasks": "0"}}},
    )
    wait_repair_phase(cluster, name, "Repairing", timeout=30)
    heal(cluster, sick)
    mark_repaired(cluster, name)
    wait_repair_phase(cluster, name, "Succeeded", timeout=60)
    wait_until(
        "the success scraped",
        lambda: (
            (prometheus.value('sum(pitstop_repairs_completed_total{phase="Succeeded"})') or 0) >= 1
        ),
        timeout=20,
        interval=0.5,
    )

    variables = {"job": JOB, "policy": rp, "datasource": "prometheus", "__rate_interval": "15s"}

    def empty_panels(end: float) -> list[str]:
        empty = []
        for title, expr in panel_queries():
            result = prometheus.query_range(substitute(expr, variables), prometheus.started, end)
            if not result:
                empty.append(f"{title}: {expr}")
        return empty

    # increase() needs two samples of a series: a counter that first appeared a
    # scrape before the success was scraped (the eviction, some 1.7 s earlier) may
    # have one at the last step yet, so the panels are asked again for a few scrapes.
    deadline = time.monotonic() + 10
    while True:
        end = time.time()
        empty = empty_panels(end)
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, "dashboard panels without data:\n" + "\n".join(empty)

    # And the data says what happened: the policy's pool, the eviction, the task.
    window = f"[{int(end - prometheus.started) + 5}s]"
    assert prometheus.value(f'max_over_time(pitstop_pool_nodes{{policy="{rp}"}}{window})') == 2
    assert (
        prometheus.value(f'max_over_time(pitstop_pool_unhealthy_nodes{{policy="{rp}"}}{window})')
        == 1
    )
    evicted = prometheus.value('sum(pitstop_evictions_total{result="evicted"})')
    assert evicted is not None and evicted >= 1
    assert prometheus.value(f'max_over_time(pitstop_gated_pods{{state="open"}}{window})') >= 2  # type: ignore[operator]
    assert prometheus.value(f'max(pitstop_leader{{job="{JOB}"}})') == 1
    # A healthy, leading operator raises none of the alerts about itself.
    for quiet in ("PitstopNoLeader", "PitstopDownGatedPodsWaiting", "PitstopGatedPodsWaiting"):
        assert not prometheus.alerts(quiet), quiet
