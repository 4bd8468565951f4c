"""The alerting rules, the dashboard and the metrics they read, without a cluster:
the generated copies in manifests/monitoring/ agree with the single sources in
charts/pitstop/files/; every alert links a runbook section and every section an
alert; every metric named by a rule or a panel is one pitstop exports, and every
metric pitstop exports is documented; the new metrics' own logic (phase deadlines,
the past-deadline count, completed repairs, serving gate states)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pitstop import metrics
from pitstop.instances import serving
from pitstop.models import NodeRepairSpec, NodeRepairStatus, Phase, RepairStatus
from pitstop.registry import Registry
from pitstop.repair import flow
from pitstop.repair.report import Report
from pitstop.repair.state import RepairState
from tests.unit.test_report import sent_fields

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "pitstop" / "files" / "pitstop.rules.yaml"
DASHBOARD = REPO / "charts" / "pitstop" / "files" / "pitstop-dashboard.json"
MONITORING = REPO / "manifests" / "monitoring"
RUNBOOKS = REPO / "docs" / "runbooks.md"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("monitoring_gen", REPO / "hack" / "monitoring.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_exprs() -> list[tuple[str, str]]:
    return [
        (p["title"], t["expr"])
        for p in dashboard()["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


# --- the copies agree ---


def test_generated_manifests_are_current(tmp_path: Path) -> None:
    gen = generator()
    assert gen.main([str(tmp_path)]) == 0
    for name in ("prometheusrule.yaml", "dashboard-configmap.yaml", "kustomization.yaml"):
        assert (MONITORING / name).read_text() == (tmp_path / name).read_text(), (
            f"manifests/monitoring/{name} is stale: run `make monitoring`"
        )
    assert gen.main(["--check", str(MONITORING)]) == 0


def test_the_copies_say_the_same_as_the_sources() -> None:
    """Read back as objects, not as text: an edit of either side shows."""
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    cm = yaml.safe_load((MONITORING / "dashboard-configmap.yaml").read_text())
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["pitstop-dashboard.json"]) == dashboard()
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [
        "dashboard-configmap.yaml",
        "prometheusrule.yaml",
    ]


def test_the_default_install_does_not_need_the_prometheusrule_crd() -> None:
    default = yaml.safe_load((REPO / "manifests" / "kustomization.yaml").read_text())
    assert "monitoring" not in default["resources"]


def test_check_fails_on_a_stale_copy(tmp_path: Path) -> None:
    gen = generator()
    gen.main([str(tmp_path)])
    path = tmp_path / "prometheusrule.yaml"
    path.write_text(path.read_text().replace("for: 5m", "for: 1m"))
    assert gen.main(["--check", str(tmp_path)]) == 1


# --- runbooks ---


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_its_runbook_section_and_every_section_has_an_alert() -> None:
    sections = {
        anchor(line[3:]): line[3:].strip()
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    alerts = {r["alert"]: r for r in rules()}
    assert alerts, "no alerts"
    for name, rule in alerts.items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbooks.md#{anchor(name)}", (name, url)
        assert sections.get(anchor(name)) == name, f"docs/runbooks.md has no ## {name}"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert set(sections.values()) == set(alerts), "a runbook section without its alert"


def test_the_alerts_the_platform_must_hear_about_are_there() -> None:
    assert {r["alert"] for r in rules()} >= {
        "PitstopRepairPastDeadline",
        "PitstopRepairsFailing",
        "PitstopStormGuardEngaged",
        "PitstopPoolBelowMinAvailable",
        "PitstopNoLeader",
        "PitstopDownGatedPodsWaiting",
        "PitstopTaskSourceUnreachable",
    }


# --- the metrics they read ---


def exported() -> set[str]:
    """Every sample name pitstop's registry can produce (counters as *_total, the
    histogram's series)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        base = family.name
        if family.type == "counter":
            names.add(base + "_total")
        elif family.type == "histogram":
            names.update(base + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(base)
    return {n for n in names if n.startswith("pitstop_")}


def test_every_metric_a_rule_or_a_panel_reads_is_exported() -> None:
    known = exported()
    assert "pitstop_repairs_past_deadline" in known and "pitstop_evictions_total" in known
    used = [(r["alert"], r["expr"]) for r in rules()] + panel_exprs()
    for where, expr in used:
        for name in re.findall(r"\bpitstop_[a-z_]+", expr):
            assert name in known, f"{where}: {name} is not a pitstop metric"


def test_every_exported_metric_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    for name in exported():
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f"`{base}`" in readme, f"{base} is not documented in README.md"


# --- the dashboard ---


def test_dashboard_datasource_is_a_variable_and_every_variable_is_defined() -> None:
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in d["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"])
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            for var in re.findall(r"\$\{?(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), (p["title"], var)
    titles = " ".join(p["title"].lower() for p in panels)
    for wanted in ("phase", "duration", "eviction", "in-flight", "minavailable", "leader"):
        assert wanted in titles, wanted


# --- phase deadlines ---


def spec(**extra: Any) -> NodeRepairSpec:
    base = {
        "nodeName": "n1",
        "reason": "r",
        "drain": {"taskTimeoutSeconds": 60, "evictionTimeoutSeconds": 120},
        "repair": {"strategy": "Manual", "timeoutSeconds": 300},
        "verify": {"timeoutSeconds": 30},
    }
    return NodeRepairSpec.model_validate({**base, **extra})


@pytest.mark.parametrize(
    ("phase", "seconds"),
    [
        (Phase.DEREGISTERING, 60),
        (Phase.WAITING_FOR_TASKS, 60),
        (Phase.EVICTING, 120),
        (Phase.REPAIRING, 300),
        (Phase.VERIFYING, 30),
        (Phase.CORDONING, 300),
        (Phase.UNCORDONING, 300),
        (Phase.PENDING, None),
        (Phase.FAILED, None),
        (Phase.SUCCEEDED, None),
    ],
)
def test_phase_deadline(phase: Phase, seconds: int | None) -> None:
    status = NodeRepairStatus(phase=phase, phase_start_time=NOW)
    expected = None if seconds is None else NOW + timedelta(seconds=seconds)
    assert flow.phase_deadline(spec(), status) == expected


def test_repairing_deadline_follows_the_attempt() -> None:
    attempt = NOW + timedelta(seconds=500)
    status = NodeRepairStatus(
        phase=Phase.REPAIRING, phase_start_time=NOW, repair=RepairStatus(attempt_start_time=attempt)
    )
    assert flow.phase_deadline(spec(), status) == attempt + timedelta(seconds=300)
    later = NOW + timedelta(seconds=900)
    status.repair = RepairStatus(attempt_start_time=attempt, next_attempt_time=later)
    assert flow.phase_deadline(spec(), status) == later  # between attempts
    assert flow.phase_deadline(spec(), NodeRepairStatus(phase=Phase.REPAIRING)) is None


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A fresh operator run's registry, installed (the gauges read when scraped read
    it); the host's readers are put back afterwards."""
    monkeypatch.setattr(metrics.PAST_DEADLINE, "read", metrics.PAST_DEADLINE.read)
    monkeypatch.setattr(metrics.GATED_PODS, "read", metrics.GATED_PODS.read)
    fresh = Registry.fresh()
    fresh.install({})
    return fresh


def test_past_deadline_counts_repairs_whose_deadline_passed(run: Registry) -> None:
    phases = run.phases

    def past(phase: str, now: datetime | None = None) -> float:
        return phases.past_deadline(now)[(phase,)]

    phases.record("a", Phase.EVICTING, NOW - timedelta(seconds=1))
    phases.record("b", Phase.EVICTING, NOW + timedelta(seconds=60))
    phases.record("c", Phase.PENDING)
    assert past("Evicting", NOW) == 1
    assert past("Verifying", NOW) == 0, "every phase with a deadline is reported"
    assert ("Pending",) not in phases.past_deadline(NOW)
    assert past("Evicting", NOW + timedelta(seconds=61)) == 2, "counted when scraped"
    phases.record("a", Phase.REPAIRING, NOW + timedelta(hours=1))  # it moved on
    assert past("Evicting", NOW) == 0
    phases.record("b", None)  # gone
    assert past("Evicting", NOW + timedelta(seconds=61)) == 0
    # The registry reads the run's when scraped.
    phases.record("d", Phase.VERIFYING, datetime(2000, 1, 1, tzinfo=UTC))
    assert (
        metrics.REGISTRY.get_sample_value("pitstop_repairs_past_deadline", {"phase": "Verifying"})
        == 1
    )


class FakeKube:
    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        pass

    async def patch_status_ops(self, plural: str, name: str, ops: list[dict[str, Any]]) -> None:
        await self.patch_status(plural, name, sent_fields(ops))


def completed(phase: str) -> float:
    value = metrics.REGISTRY.get_sample_value("pitstop_repairs_completed_total", {"phase": phase})
    assert value is not None, "the final phases are reported from 0"
    return value


def test_a_written_status_records_its_deadline_and_a_completion_once(run: Registry) -> None:
    body = {"spec": {"nodeName": "n1"}}
    state = RepairState("r1", body, FakeKube(), logging.getLogger(), phases=run.phases)  # type: ignore[arg-type]
    r = Report(state)
    r.state.spec = spec()

    def write(phase: Phase, start: datetime) -> None:
        status = NodeRepairStatus(phase=phase, phase_start_time=start)
        asyncio.run(r.write_status(status, start, None))

    write(Phase.EVICTING, NOW)
    assert run.phases.deadlines["r1"] == (Phase.EVICTING, NOW + timedelta(seconds=120))
    failed = completed("Failed")
    write(Phase.FAILED, NOW + timedelta(seconds=5))
    write(Phase.FAILED, NOW + timedelta(seconds=6))
    assert completed("Failed") == failed + 1
    assert "r1" not in run.phases.deadlines and run.phases.phases["r1"] == Phase.FAILED


# --- serving gates ---


def pod(condition: str | None = None, gated: bool = True, deleting: bool = False) -> Any:
    meta: dict[str, Any] = {"name": "p", "namespace": "ns"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    conds = [] if condition is None else [{"type": "pitstop.dev/serving", "status": condition}]
    return {
        "metadata": meta,
        "spec": {
            "nodeName": "n1",
            "readinessGates": [{"conditionType": "pitstop.dev/serving"}] if gated else [],
        },
        "status": {"phase": "Running", "conditions": conds},
    }


FREE = {"metadata": {"name": "n1", "annotations": {}}}
LOCKED = {"metadata": {"name": "n1", "annotations": {"pitstop.dev/repair": "r1"}}}


def test_gate_state() -> None:
    free: set[str] = set()
    assert serving.gate_state(pod("True"), FREE, free) == "open"
    assert serving.gate_state(pod(None), FREE, free) == "waiting"
    assert serving.gate_state(pod("False"), FREE, free) == "waiting"
    assert serving.gate_state(pod("False"), LOCKED, free) == "held"
    assert serving.gate_state(pod("True"), LOCKED, free) == "open"
    assert serving.gate_state(pod(None, gated=False), FREE, free) is None
    assert serving.gate_state(pod(None, deleting=True), FREE, free) is None
    assert serving.gate_state(pod(None), None, free) is None  # its node not known (yet)
    # The run holds the node, before its watch event shows the lock.
    assert serving.gate_state(pod(None), FREE, {"n1"}) == "held"


def test_gated_pods_are_counted_when_scraped(run: Registry) -> None:
    for key, state in {"a/1": "open", "a/2": "waiting", "a/3": "open"}.items():
        run.gates.record(key, state)
    sample = metrics.REGISTRY.get_sample_value
    assert sample("pitstop_gated_pods", {"state": "open"}) == 2
    assert sample("pitstop_gated_pods", {"state": "waiting"}) == 1
    assert sample("pitstop_gated_pods", {"state": "held"}) == 0


def test_every_eviction_result_is_exported_from_zero() -> None:
    # A counter series born at its first increment hides that increment from
    # increase(): the dashboard's Evictions panel showed nothing for a short repair.
    for result in metrics.EVICTION_RESULTS:
        value = metrics.REGISTRY.get_sample_value("pitstop_evictions_total", {"result": result})
        assert value is not None, result
