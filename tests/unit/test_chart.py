"""The Helm chart (charts/pitstop) against manifests/: rendered with `helm template`
(defaults) and `kubectl kustomize`, the objects that must agree do — RBAC rules,
the Deployment (args, ports, probes, security context, volumes), Services, the PDB,
the CRDs; and the chart's values, flags and schema do what values.yaml says. No
cluster: only the helm and kubectl binaries."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import chart
from tests.chart import CHART, by_key, kustomize, template

NS = "pitstop-system"
USER_ROLES = ("pitstop-admin", "pitstop-repairer", "pitstop-viewer", "pitstop-break-glass")
RULES = "files/pitstop.rules.yaml"
DASHBOARD = "files/pitstop-dashboard.json"


@pytest.fixture(scope="module")
def rendered() -> dict[chart.Key, dict[str, Any]]:
    return by_key(template())


@pytest.fixture(scope="module")
def manifests() -> dict[chart.Key, dict[str, Any]]:
    return by_key(kustomize())


def of_kind(objects: dict[chart.Key, dict[str, Any]], *kinds: str) -> dict[chart.Key, Any]:
    return {key: o for key, o in objects.items() if key[0] in kinds}


def test_the_chart_makes_what_manifests_make(
    rendered: dict[chart.Key, Any], manifests: dict[chart.Key, Any]
) -> None:
    """The same objects by kind, namespace and name; only the Namespace is Helm's
    (`--create-namespace`)."""
    expected = {key for key in manifests if key[0] != "Namespace"}
    assert set(rendered) == expected


def test_labels_are_a_superset(
    rendered: dict[chart.Key, Any], manifests: dict[chart.Key, Any]
) -> None:
    """Whatever selects pitstop's objects by label (kubectl -l, aggregation) finds the
    chart's too."""
    for key, want in manifests.items():
        if key[0] == "Namespace":
            continue
        labels = rendered[key]["metadata"].get("labels", {})
        wanted = want["metadata"].get("labels", {})
        missing = {k: v for k, v in wanted.items() if labels.get(k) != v}
        assert not missing, f"{key}: {missing}"


def test_rbac_agrees(rendered: dict[chart.Key, Any], manifests: dict[chart.Key, Any]) -> None:
    roles = of_kind(manifests, "ClusterRole", "Role")
    assert {key[2] for key in roles} >= {"pitstop", *USER_ROLES}
    for key, want in roles.items():
        # An aggregated role has no rules of its own: its aggregationRule must agree.
        assert rendered[key].get("rules") == want.get("rules"), key
        assert rendered[key].get("aggregationRule") == want.get("aggregationRule"), key
    for key, want in of_kind(manifests, "ClusterRoleBinding", "RoleBinding").items():
        assert rendered[key]["roleRef"] == want["roleRef"], key
        assert rendered[key]["subjects"] == want["subjects"], key
    for key, want in of_kind(manifests, "ServiceAccount").items():
        automount = "automountServiceAccountToken"
        assert rendered[key].get(automount) == want.get(automount), key


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Deployment's spec without what may differ: pod labels (the chart adds
    Helm's) and the image."""
    spec = copy.deepcopy(deployment["spec"])
    del spec["template"]["metadata"]
    for container in spec["template"]["spec"]["containers"]:
        del container["image"]
    return dict(spec)


def test_deployment_agrees(rendered: dict[chart.Key, Any], manifests: dict[chart.Key, Any]) -> None:
    """Replicas, strategy, selector, affinity, security contexts, and the container's
    command, args, env, ports, probes, resources and volumes: all equal."""
    key = ("Deployment", NS, "pitstop")
    assert pod_spec(rendered[key]) == pod_spec(manifests[key])
    labels = rendered[key]["spec"]["template"]["metadata"]["labels"]
    selector = manifests[key]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert rendered[key]["spec"]["replicas"] == 2  # leader election: one acts, one stands by


def test_services_and_pdb_agree(
    rendered: dict[chart.Key, Any], manifests: dict[chart.Key, Any]
) -> None:
    for key, want in of_kind(manifests, "Service", "PodDisruptionBudget").items():
        assert rendered[key]["spec"] == want["spec"], key
        assert rendered[key]["metadata"].get("annotations") == want["metadata"].get("annotations")


def test_crds_agree(rendered: dict[chart.Key, Any], manifests: dict[chart.Key, Any]) -> None:
    crds = of_kind(manifests, "CustomResourceDefinition")
    assert len(crds) == 5
    for key, want in crds.items():
        assert rendered[key] == want, key


# --- values ---


def deployment(*args: str, namespace: str = NS) -> dict[str, Any]:
    (found,) = [o for o in template(*args, namespace=namespace) if o["kind"] == "Deployment"]
    return found


def test_values_reach_the_deployment(tmp_path: Path) -> None:
    values = {
        "image": {"repository": "registry.example/pitstop", "tag": "1.2.3", "pullPolicy": "Always"},
        "replicaCount": 3,
        "extraArgs": ["--lease-duration", "20"],
        "resources": {"limits": {"memory": "2Gi"}},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    spec = deployment("-f", str(path))["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 3
    assert container["image"] == "registry.example/pitstop:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert container["args"] == [
        "run", "--alerts-token-file", "/etc/pitstop/alerts/token", "--lease-duration", "20"
    ]  # fmt: skip
    # Helm merges maps: the other defaults stay.
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == values["tolerations"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    digest = "sha256:" + "a" * 64
    pinned = deployment("--set", f"image.digest={digest}")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"] == f"pitstop@{digest}"


def test_affinity_replaces_the_default_spread() -> None:
    default = deployment()["spec"]["template"]["spec"]["affinity"]
    assert "podAntiAffinity" in default
    given = deployment("--set", "affinity.nodeAffinity.foo=bar")["spec"]["template"]["spec"]
    assert given["affinity"] == {"nodeAffinity": {"foo": "bar"}}


def test_another_namespace() -> None:
    """Everything namespaced, and every binding's subject, follows the release's
    namespace (the operator reads it from POD_NAMESPACE)."""
    objects = template(namespace="ops")
    for o in objects:
        if o["kind"] in ("ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
                         "PodDisruptionBudget"):  # fmt: skip
            assert o["metadata"]["namespace"] == "ops", o["metadata"]
        for subject in o.get("subjects", []):
            assert subject["namespace"] == "ops"


def test_optional_objects_are_off_by_default(rendered: dict[chart.Key, Any]) -> None:
    kinds = {key[0] for key in rendered}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_the_flags_turn_them_off_and_on() -> None:
    objects = template("--set", "podDisruptionBudget.enabled=false,userRoles.create=false")
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("PodDisruptionBudget", "pitstop") not in names
    assert not {name for kind, name in names if name in USER_ROLES}
    assert ("ClusterRole", "pitstop") in names  # the operator's own stays


def test_service_monitor_scrapes_the_metrics_port(rendered: dict[chart.Key, Any]) -> None:
    objects = template("--set", "serviceMonitor.enabled=true,serviceMonitor.labels.release=prom")
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    # The Services it selects that have the port: exactly pitstop-metrics.
    scraped = [
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Service"
        and selector.items() <= o["metadata"]["labels"].items()
        and ports & {p["name"] for p in o["spec"]["ports"]}
    ]
    assert scraped == ["pitstop-metrics"]


# --- the monitoring files (files/): read with .Files.Get, never copied ---


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    """A copy of the chart whose files/ the test controls."""
    copied = tmp_path / "pitstop"
    shutil.copytree(CHART, copied)
    shutil.rmtree(copied / "files", ignore_errors=True)
    (copied / "files").mkdir()
    return copied


# Test-owned stand-ins for the real files (branch monitoring writes those).
PLACEHOLDER_RULES = {
    "groups": [
        {
            "name": "placeholder-for-test",
            "rules": [
                {
                    "alert": "PlaceholderForTest",
                    "expr": "vector(0) > 1",
                    "annotations": {"summary": "{{ $labels.node }} is only a placeholder"},
                }
            ],
        }
    ]
}
PLACEHOLDER_DASHBOARD = {"title": "placeholder for test", "panels": [{"title": "{{ no tpl }}"}]}


def test_prometheus_rule_carries_the_rules_file(chart_copy: Path) -> None:
    """The groups as they are in the file: Prometheus' own {{ $labels }} templates are
    not Helm's."""
    (chart_copy / RULES).write_text(yaml.safe_dump(PLACEHOLDER_RULES))
    objects = template("--set", "prometheusRule.enabled=true", chart=chart_copy)
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert rule["spec"] == PLACEHOLDER_RULES


def test_dashboard_configmap_carries_the_json(chart_copy: Path) -> None:
    text = json.dumps(PLACEHOLDER_DASHBOARD, indent=2)
    (chart_copy / DASHBOARD).write_text(text)
    flags = "dashboard.enabled=true,dashboard.namespace=grafana"
    objects = template("--set", flags, chart=chart_copy)
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert config["metadata"]["namespace"] == "grafana"
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["pitstop-dashboard.json"]) == PLACEHOLDER_DASHBOARD


@pytest.mark.parametrize(
    ("flag", "path", "content", "message"),
    [
        ("prometheusRule.enabled", RULES, None, "has no files/pitstop.rules.yaml"),
        ("prometheusRule.enabled", RULES, "groups: [unclosed", "is not YAML"),
        ("prometheusRule.enabled", RULES, "other: 1\n", "has no `groups:`"),
        ("dashboard.enabled", DASHBOARD, None, "has no files/pitstop-dashboard.json"),
        ("dashboard.enabled", DASHBOARD, "{not json", "is not JSON"),
    ],
)
def test_a_flag_without_its_file_fails_clearly(
    chart_copy: Path, flag: str, path: str, content: str | None, message: str
) -> None:
    if content is not None:
        (chart_copy / path).write_text(content)
    done = chart.run("helm", "template", "x", str(chart_copy), "--set", f"{flag}=true")
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert flag in done.stderr


@pytest.mark.parametrize("path", [RULES, DASHBOARD])
def test_the_real_monitoring_files_render(path: str) -> None:
    if not (CHART / path).exists():
        pytest.skip(f"charts/pitstop/{path} is not in this tree yet (branch monitoring)")
    flag = "prometheusRule.enabled" if path == RULES else "dashboard.enabled"
    kinds = {o["kind"] for o in template("--set", f"{flag}=true")}
    assert ("PrometheusRule" if path == RULES else "ConfigMap") in kinds


# --- the schema ---


@pytest.mark.parametrize(
    "bad",
    [
        "replicas=3",  # a typo of replicaCount: unknown keys are refused
        "image.pullPolicy=Sometimes",
        "replicaCount=0",
        "serviceMonitor.interval=often",
        "podDisruptionBudget.maxUnavailable=half",
    ],
)
def test_the_schema_refuses(bad: str) -> None:
    done = chart.run("helm", "template", "x", str(CHART), "--set", bad)
    assert done.returncode != 0
    assert "schema" in done.stderr.lower(), done.stderr
