"""The InstanceProfile CRD on a real API server: the shipped profiles are accepted,
the server fills in the model's defaults, the columns show the status, and bad
profiles are refused with a message that names the field."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from pitstop.constants import API_VERSION
from pitstop.models import InstanceProfileSpec
from tests.e2e.kube import REPO, Cluster

pytestmark = pytest.mark.e2e

PROFILES = sorted((REPO / "manifests" / "examples").glob("instanceprofile*.yaml"))


def profile(spec: dict[str, Any] | None, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "InstanceProfile",
        "metadata": {"name": name or f"crd-ip-{uuid.uuid4().hex[:8]}"},
    }
    if spec is not None:
        body["spec"] = spec
    return body


def dry_run(
    cluster: Cluster, body: dict[str, Any], *flags: str
) -> subprocess.CompletedProcess[str]:
    args = ("create", "--dry-run=server", "-o", "json", *flags, "-f", "-")
    return cluster.kubectl(*args, input=json.dumps(body), check=False)


def test_shipped_profiles_exist() -> None:
    assert len(PROFILES) >= 3


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_shipped_profiles_are_accepted(cluster: Cluster, path: Path) -> None:
    applied = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(path))
    assert "(server dry run)" in applied.stdout


def test_server_applies_the_models_defaults(cluster: Cluster) -> None:
    stored = dry_run(cluster, profile({"podSelector": {"matchLabels": {"app": "f"}}}))
    assert stored.returncode == 0, stored.stderr
    expected = InstanceProfileSpec.model_validate({"podSelector": {"matchLabels": {"app": "f"}}})
    assert json.loads(stored.stdout)["spec"] == expected.wire()


@pytest.mark.parametrize(
    "spec",
    [
        {"podSelector": {}, "kind": "async", "drainSignal": {"none": {}}},
        {
            "podSelector": {"matchExpressions": [{"key": "faas", "operator": "Exists"}]},
            "namespaceSelector": {"matchLabels": {"team": "a"}},
            "tasks": {
                "prometheus": {
                    "port": "metrics",
                    "metric": "function_requests_in_flight",
                    "labels": [{"name": "code", "operator": "!~", "value": "5.."}],
                }
            },
            "drainSignal": {"httpPost": {"port": 9100, "path": "/drain"}},
            "pollIntervalSeconds": 0.25,
            "timeoutSeconds": 0.5,
        },
        {"podSelector": {}, "tasks": {"http": {"port": 8080, "path": "/x?y=1", "field": "a.b"}}},
        {
            "podSelector": {},
            "taskDeadline": {
                "env": [{"name": "REVISION_TIMEOUT_SECONDS", "container": "queue-proxy"}]
            },
        },
        {"podSelector": {}, "taskDeadline": {"defaultSeconds": 300}},
    ],
)
def test_valid_profiles_are_accepted(cluster: Cluster, spec: dict[str, Any]) -> None:
    stored = dry_run(cluster, profile(spec), "--validate=strict")
    assert stored.returncode == 0, stored.stderr


def test_status_is_kept_whole_and_shown_in_columns(cluster: Cluster) -> None:
    name = f"crd-ip-status-{uuid.uuid4().hex[:6]}"
    status = {
        "tasks": "prometheus :8081/metrics http_requests_in_flight",
        "drainSignal": "none",
        "pods": 4,
        "conflicts": ["other"],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "InUse",
                "message": "describes 4 instances",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
                "observedGeneration": 1,
            },
            {"type": "Conflict", "status": "True", "reason": "OverlappingProfiles"},
        ],
        "lastUpdateTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 1,
    }
    body = profile({"podSelector": {}, "kind": "sync"}, name)
    cluster.kubectl("create", "-f", "-", input=json.dumps(body))
    try:
        # The operator keeps every profile's status too, so what the test writes may be
        # overwritten at any moment: the schema is judged on a server-side dry run, and
        # the columns against the object the same Table answer carries.
        patch = json.dumps({"status": status})
        args = ("patch", "iprof", name, "--subresource=status", "--type=merge", "-p", patch)
        stored = json.loads(cluster.kubectl(*args, "--dry-run=server", "-o", "json").stdout)
        assert stored["status"] == status, "the schema keeps the status whole"
        cluster.kubectl(*args)
        table = server_table(cluster, name)
        columns = [c["name"] for c in table["columnDefinitions"] if c["priority"] == 0]
        assert columns == ["Name", "Kind", "Tasks", "Drain", "Pods", "Ready", "Age"]
        row = table["rows"][0]
        names = [c["name"] for c in table["columnDefinitions"]]
        shown = dict(zip(names, row["cells"], strict=True))
        now = row["object"]["status"]
        assert (shown["Name"], shown["Kind"]) == (name, "sync")
        assert (shown["Tasks"], shown["Drain"], shown["Pods"]) == (
            now["tasks"],
            now["drainSignal"],
            now["pods"],
        ), (shown, now)
        wide = cluster.kubectl("get", "iprof", name, "-o", "wide").stdout.split("\n")
        assert "CONFLICT" in wide[0].split()
        listed = cluster.kubectl("get", "pitstop").stdout  # the category
        assert name in listed
    finally:
        cluster.kubectl("delete", "instanceprofile", name, "--wait=false")


def server_table(cluster: Cluster, name: str) -> dict[str, Any]:
    """The profile as the API server renders it for `kubectl get` (a meta.k8s.io
    Table), with the object it rendered from in the same answer."""
    request = cluster.api.param_serialize(
        "GET",
        f"/apis/{API_VERSION}/instanceprofiles/{name}",
        query_params=[("includeObject", "Object")],
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    answer = cluster.api.call_api(*request)
    answer.read()
    table: dict[str, Any] = json.loads(answer.data)
    return table


def _prom(**fields: Any) -> dict[str, Any]:
    return {"podSelector": {}, "tasks": {"prometheus": {"port": 8081, "metric": "m", **fields}}}


INVALID: list[tuple[str, dict[str, Any], list[str], tuple[str, ...]]] = [
    ("missing spec", profile(None), ["spec: Required value"], ()),
    ("missing podSelector", profile({}), ["spec.podSelector: Required value"], ()),
    (
        "no task source",
        profile({"podSelector": {}, "tasks": {}}),
        ["spec.tasks", "exactly one of annotation, prometheus, http or knative must be set"],
        (),
    ),
    (
        "two task sources",
        profile({"podSelector": {}, "tasks": {"annotation": {}, "http": {"port": 1, "path": "/"}}}),
        ["spec.tasks", "exactly one of annotation, prometheus, http or knative must be set"],
        (),
    ),
    (
        "two drain signals",
        profile(
            {"podSelector": {}, "drainSignal": {"none": {}, "httpPost": {"port": 1, "path": "/"}}}
        ),
        ["spec.drainSignal", "exactly one of annotation, httpPost or none must be set"],
        (),
    ),
    (
        "empty task deadline",
        profile({"podSelector": {}, "taskDeadline": {}}),
        ["spec.taskDeadline", "set env, defaultSeconds or both"],
        (),
    ),
    (
        "task deadline env without a name",
        profile({"podSelector": {}, "taskDeadline": {"env": [{"container": "fn"}]}}),
        ["spec.taskDeadline.env[0].name: Required value"],
        (),
    ),
    (
        "task deadline env name with =",
        profile({"podSelector": {}, "taskDeadline": {"env": [{"name": "a=b"}]}}),
        ["spec.taskDeadline.env[0].name"],
        (),
    ),
    (
        "no drain signal",
        profile({"podSelector": {}, "drainSignal": {}}),
        ["spec.drainSignal", "exactly one of annotation, httpPost or none must be set"],
        (),
    ),
    (
        "port 0",
        profile(_prom(port=0)),
        ["spec.tasks.prometheus.port", "must be a port number (1-65535) or a container port name"],
        (),
    ),
    (
        "port 65536",
        profile(_prom(port=65536)),
        ["spec.tasks.prometheus.port", "must be a port number (1-65535)"],
        (),
    ),
    (
        "port name with capitals",
        profile({"podSelector": {}, "drainSignal": {"httpPost": {"port": "Admin", "path": "/d"}}}),
        ["spec.drainSignal.httpPost.port", "container port name (IANA service name)"],
        (),
    ),
    (
        "port name of digits",
        profile({"podSelector": {}, "tasks": {"http": {"port": "8080", "path": "/n"}}}),
        ["spec.tasks.http.port", "container port name"],
        (),
    ),
    (
        "port name too long",
        profile(_prom(port="metrics-and-more")),
        ["spec.tasks.prometheus.port"],
        (),
    ),
    (
        "prometheus without metric",
        profile({"podSelector": {}, "tasks": {"prometheus": {"port": 8081}}}),
        ["spec.tasks.prometheus.metric: Required value"],
        (),
    ),
    (
        "metric name with a dash",
        profile(_prom(metric="in-flight")),
        ['spec.tasks.prometheus.metric: Invalid value: "in-flight"'],
        (),
    ),
    (
        "relative path",
        profile(_prom(path="metrics")),
        ['spec.tasks.prometheus.path: Invalid value: "metrics"'],
        (),
    ),
    (
        "matcher with an unknown operator",
        profile(_prom(labels=[{"name": "a", "operator": "==", "value": "b"}])),
        ["spec.tasks.prometheus.labels[0].operator", "Unsupported value"],
        (),
    ),
    (
        "matcher without value",
        profile(_prom(labels=[{"name": "a"}])),
        ["spec.tasks.prometheus.labels[0].value: Required value"],
        (),
    ),
    (
        "http without path",
        profile({"podSelector": {}, "tasks": {"http": {"port": 8080}}}),
        ["spec.tasks.http.path: Required value"],
        (),
    ),
    (
        "JSON field with spaces",
        profile({"podSelector": {}, "tasks": {"http": {"port": 1, "path": "/", "field": "a b"}}}),
        ['spec.tasks.http.field: Invalid value: "a b"'],
        (),
    ),
    (
        "unknown kind",
        profile({"podSelector": {}, "kind": "both"}),
        ["spec.kind", "Unsupported value"],
        (),
    ),
    (
        "poll interval 0",
        profile({"podSelector": {}, "pollIntervalSeconds": 0}),
        ["spec.pollIntervalSeconds", "must be between 0.1 and 60 seconds"],
        (),
    ),
    (
        "poll interval 0.01",
        profile({"podSelector": {}, "pollIntervalSeconds": 0.01}),
        ["spec.pollIntervalSeconds", "greater than or equal to 0.1"],
        (),
    ),
    (
        "timeout above a minute",
        profile({"podSelector": {}, "timeoutSeconds": 61}),
        ["spec.timeoutSeconds", "less than or equal to 60"],
        (),
    ),
    (
        "unknown task source (strict)",
        profile({"podSelector": {}, "tasks": {"statsd": {}}}),
        ['unknown field "spec.tasks.statsd"'],
        ("--validate=strict",),
    ),
]


@pytest.mark.parametrize(
    ("body", "messages", "flags"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_profiles_are_refused(
    cluster: Cluster, body: dict[str, Any], messages: list[str], flags: tuple[str, ...]
) -> None:
    refused = dry_run(cluster, body, *flags)
    assert refused.returncode != 0, f"accepted: {refused.stdout}"
    for message in messages:
        assert message in refused.stderr, refused.stderr
