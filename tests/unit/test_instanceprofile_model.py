"""The InstanceProfile model (no cluster): defaults, the one-of rules, ports and
matchers, with the same messages the CRD's CEL rules give."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pitstop.models import InstanceKind, InstanceProfileSpec, InstanceProfileStatus


def spec(**fields: Any) -> InstanceProfileSpec:
    return InstanceProfileSpec.model_validate({"podSelector": {}, **fields})


def test_defaults_are_the_annotation_contract() -> None:
    s = spec()
    assert s.wire() == {
        "podSelector": {},
        "kind": "auto",
        "tasks": {"annotation": {}},
        "drainSignal": {"annotation": {}},
        "pollIntervalSeconds": 1.0,
        "timeoutSeconds": 1.0,
    }
    assert s.kind is InstanceKind.AUTO
    assert s.tasks.type == "annotation" and s.drain_signal.type == "annotation"


def test_a_prometheus_profile() -> None:
    s = spec(
        kind="sync",
        tasks={
            "prometheus": {
                "port": "metrics",
                "metric": "function_requests_in_flight",
                "labels": [
                    {"name": "code", "value": "200"},
                    {"name": "p", "operator": "=~", "value": "/f/.*"},
                ],
            }
        },
        drainSignal={"httpPost": {"port": 9100, "path": "/drain"}},
    )
    assert s.tasks.type == "prometheus" and s.drain_signal.type == "httpPost"
    assert s.tasks.prometheus is not None and s.tasks.prometheus.path == "/metrics"
    assert s.wire()["tasks"]["prometheus"]["labels"][0]["operator"] == "="
    assert InstanceProfileSpec.model_validate(s.wire()) == s


def test_an_http_profile_with_a_json_field() -> None:
    s = spec(tasks={"http": {"port": 8080, "path": "/stats", "field": "tasks.inFlight"}})
    assert s.tasks.http is not None and s.tasks.http.field == "tasks.inFlight"
    assert spec(drainSignal={"none": {}}).drain_signal.type == "none"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tasks": {}}, "exactly one of annotation, prometheus, http or knative"),
        (
            {"tasks": {"annotation": {}, "http": {"port": 1, "path": "/n"}}},
            "exactly one of annotation, prometheus, http or knative",
        ),
        ({"drainSignal": {}}, "exactly one of annotation, httpPost or none"),
        ({"drainSignal": {"none": {}, "annotation": {}}}, "exactly one of annotation, httpPost"),
        ({"tasks": {"http": {"port": 0, "path": "/n"}}}, "must be a port number (1-65535)"),
        ({"tasks": {"http": {"port": 70000, "path": "/n"}}}, "must be a port number"),
        ({"tasks": {"http": {"port": "Metrics", "path": "/n"}}}, "container port name"),
        ({"tasks": {"http": {"port": "1234", "path": "/n"}}}, "container port name"),
        ({"tasks": {"http": {"port": "a--b", "path": "/n"}}}, "container port name"),
        ({"tasks": {"http": {"port": "a-very-long-port-name", "path": "/n"}}}, "port name"),
        ({"tasks": {"http": {"port": 80, "path": "inflight"}}}, "String should match pattern"),
        ({"tasks": {"prometheus": {"port": 80}}}, "metric"),
        ({"tasks": {"prometheus": {"port": 80, "metric": "a-b"}}}, "String should match"),
        (
            {"tasks": {"prometheus": {"port": 80, "metric": "m", "labels": [{"name": "x"}]}}},
            "value",
        ),
        (
            {
                "tasks": {
                    "prometheus": {
                        "port": 80,
                        "metric": "m",
                        "labels": [{"name": "x", "operator": "=~", "value": "("}],
                    }
                }
            },
            "not a regular expression",
        ),
        ({"kind": "both"}, "Input should be 'sync', 'async' or 'auto'"),
        ({"pollIntervalSeconds": 0}, "greater than or equal to 0.1"),
        ({"timeoutSeconds": 0}, "greater than or equal to 0.05"),
    ],
)
def test_invalid_specs(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        spec(**fields)
    assert message in str(e.value)


def test_pod_selector_is_required() -> None:
    with pytest.raises(ValidationError, match="podSelector"):
        InstanceProfileSpec.model_validate({})


def test_status_round_trips() -> None:
    wire = {
        "tasks": "prometheus :8081/metrics http_requests_in_flight",
        "drainSignal": "none",
        "pods": 3,
        "conflicts": ["other"],
        "conditions": [{"type": "Conflict", "status": "True", "reason": "OverlappingProfiles"}],
        "lastUpdateTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 2,
    }
    assert InstanceProfileStatus.model_validate(wire).wire() == wire
