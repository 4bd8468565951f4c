"""Task deadlines from the runtime (no cluster): what a profile's taskDeadline reads
from a pod, what `drain.taskTimeoutSeconds: Auto` makes of a node's instances (the
largest, the margin, the cap, the fallback), and the drain waiting exactly that."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pitstop import constants as C
from pitstop.cli import commands
from pitstop.cluster import indexes
from pitstop.instances import contract
from pitstop.instances.sources import deadlines, matching, profiles
from pitstop.instances.sources.deadlines import Deadline
from pitstop.models import (
    AUTO,
    DEFAULT_TASK_TIMEOUT,
    DrainSpec,
    NodeRepairSpec,
    Phase,
    TaskTimeoutSource,
)
from pitstop.repair import drain
from pitstop.repair.flow import (
    AUTO_CAP_SECONDS,
    AUTO_MARGIN_SECONDS,
    auto_task_timeout,
    phase_deadline,
)
from pitstop.repair.machine import decide
from tests.unit.test_drain import NOW, inst, observe, status

EXAMPLES = Path(__file__).parents[2] / "manifests" / "examples"
OPENFAAS = {
    "env": [{"name": "exec_timeout"}, {"name": "write_timeout"}],
    "defaultSeconds": 30,
}


def profile(task_deadline: dict[str, Any] | None = OPENFAAS) -> profiles.Profile:
    spec: dict[str, Any] = {"podSelector": {}}
    if task_deadline is not None:
        spec["taskDeadline"] = task_deadline
    p = profiles.parse_profile(
        {"metadata": {"name": "of", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}
    )
    assert isinstance(p, profiles.Profile), p
    return p


def pod(*containers: tuple[str, dict[str, str]]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "fn", "name": "f-1"},
        "spec": {
            "containers": [
                {"name": name, "env": [{"name": k, "value": v} for k, v in env.items()]}
                for name, env in containers
            ]
        },
    }


# --- what a pod declares ---


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"exec_timeout": "60s"}, Deadline(60.0, "exec_timeout=60s")),
        ({"exec_timeout": "1m30s", "write_timeout": "2m"}, Deadline(120.0, "write_timeout=2m")),
        ({"exec_timeout": "45"}, Deadline(45.0, "exec_timeout=45")),  # bare seconds
        # 0 is "no limit" to the watchdog: the other variable, or the default.
        ({"exec_timeout": "0", "write_timeout": "20s"}, Deadline(20.0, "write_timeout=20s")),
        ({"exec_timeout": "0"}, Deadline(30.0, "default")),
        ({"exec_timeout": "soon"}, Deadline(30.0, "default")),  # not a duration
        ({}, Deadline(30.0, "default")),
        ({"unrelated": "600s"}, Deadline(30.0, "default")),
    ],
)
def test_the_largest_named_variable_or_the_default(env: dict[str, str], expected: Deadline) -> None:
    assert deadlines.task_deadline(pod(("fn", env)), profile()) == expected


def test_variables_of_every_container_unless_one_is_named() -> None:
    two = pod(("user-container", {"T": "5s"}), ("queue-proxy", {"T": "300"}))
    anywhere = profile({"env": [{"name": "T"}]})
    assert deadlines.task_deadline(two, anywhere) == Deadline(300.0, "T=300")
    only_user = profile({"env": [{"name": "T", "container": "user-container"}]})
    assert deadlines.task_deadline(two, only_user) == Deadline(5.0, "T=5s")


def test_no_deadline_without_a_stanza_or_a_profile_or_a_default() -> None:
    with_env = pod(("fn", {"exec_timeout": "60s"}))
    assert deadlines.task_deadline(with_env, None) is None
    assert deadlines.task_deadline(with_env, profile(None)) is None
    assert deadlines.task_deadline(pod(("fn", {})), profile({"env": [{"name": "x"}]})) is None


def test_the_instance_carries_its_deadline_through_the_index() -> None:
    """The index keeps what the deadline reads (any variable whose value looks like a
    duration, and the container's name), so a profile made after the pod was indexed
    finds it; other values are dropped."""
    full = pod(("fn", {"exec_timeout": "60s", "URL": "http://x", "TOKEN": "s3cret"}))
    slim = indexes.slim_pod(full)
    (container,) = slim["spec"]["containers"]
    assert container["name"] == "fn"
    assert container["env"] == [{"name": "exec_timeout", "value": "60s"}]
    match = matching.match([profile()], {}, {})
    i = contract.observe(slim, None, match)
    assert i.deadline == Deadline(60.0, "exec_timeout=60s")
    assert i.deadline == contract.observe(full, None, match).deadline


# --- the spec ---


@pytest.mark.parametrize("value", [AUTO, 1, 1800])
def test_task_timeout_is_seconds_or_auto(value: int | str) -> None:
    assert DrainSpec.model_validate({"taskTimeoutSeconds": value}).task_timeout_seconds == value


@pytest.mark.parametrize("value", ["auto", "60", "", 0, -1, True, 1.5])
def test_task_timeout_refuses_anything_else(value: Any) -> None:
    with pytest.raises(ValidationError, match="whole number of seconds"):
        DrainSpec.model_validate({"taskTimeoutSeconds": value})


# --- what Auto means on a node ---


def declaring(name: str, seconds: float | None) -> contract.Instance:
    i = inst(name)
    d = Deadline(seconds, f"exec_timeout={seconds:g}s") if seconds is not None else None
    return dataclasses.replace(i, deadline=d, profile="of")


def test_auto_is_the_largest_deadline_plus_the_margin() -> None:
    got = auto_task_timeout([declaring("a", 20), declaring("b", 59.5), declaring("c", None)])
    assert got.source == TaskTimeoutSource.RUNTIME
    assert got.runtime_seconds == 60 and got.instance == "fn/b"
    assert got.seconds == 60 + AUTO_MARGIN_SECONDS
    assert "fn/b" in got.message and "exec_timeout=59.5s of InstanceProfile of" in got.message


def test_auto_without_a_declared_deadline_is_the_default_and_says_so() -> None:
    got = auto_task_timeout([declaring("a", None)])
    assert (got.seconds, got.source, got.runtime_seconds) == (
        DEFAULT_TASK_TIMEOUT,
        TaskTimeoutSource.DEFAULT,
        None,
    )
    assert "no instance on the node declares a task deadline" in got.message


def test_auto_is_capped_and_says_so() -> None:
    got = auto_task_timeout([declaring("long", 7200)])
    assert got.seconds == AUTO_CAP_SECONDS == DEFAULT_TASK_TIMEOUT
    assert got.source == TaskTimeoutSource.CAPPED and got.runtime_seconds == 7200
    assert "the cap" in got.message and "7200s" in got.message


def test_auto_never_shrinks_a_wait_under_way() -> None:
    before = auto_task_timeout([declaring("a", 20), declaring("b", 300)])
    assert auto_task_timeout([declaring("a", 20)], before) == before  # b left
    assert auto_task_timeout([declaring("a", 20), declaring("b", None)], before) == before
    grown = auto_task_timeout([declaring("c", 600)], before)
    assert grown.runtime_seconds == 600 and grown.instance == "fn/c"
    # Resolved to the default first (no profile declared one yet): a profile made
    # mid-drain does not cut the wait to its deadline.
    default = auto_task_timeout([declaring("a", None)])
    assert auto_task_timeout([declaring("a", 20)], default) == default


def test_auto_keeps_its_answer_once_the_declaring_instances_are_gone() -> None:
    """The default is for a node where no instance declared a deadline, not for one
    whose declaring instances were evicted: the e2e saw status.taskTimeout jump from
    15 s to 1800 s once the node was drained."""
    before = auto_task_timeout([declaring("a", 5), declaring("b", None)])
    assert before.seconds == 5 + AUTO_MARGIN_SECONDS
    assert auto_task_timeout([], before) == before
    assert auto_task_timeout([declaring("b", None)], before) == before


# --- the drain waits that long ---


def auto_spec() -> NodeRepairSpec:
    return NodeRepairSpec(node_name="n1", drain=DrainSpec(task_timeout_seconds=AUTO))


def waiting(since: float, *instances: contract.Instance) -> Any:
    st = status(Phase.WAITING_FOR_TASKS, since=since)
    return decide(observe(st, list(instances), sp=auto_spec()))


def busy(name: str, seconds: float | None) -> contract.Instance:
    return dataclasses.replace(declaring(name, seconds), tasks=contract.TaskCount(1))


def test_auto_times_the_tasks_out_at_the_declared_deadline() -> None:
    limit = 60 + AUTO_MARGIN_SECONDS
    d = waiting(limit - 1, busy("a", 60))
    assert d.status.phase == Phase.WAITING_FOR_TASKS
    assert d.wake_at == NOW + timedelta(seconds=1)
    assert d.status.task_timeout is not None and d.status.task_timeout.seconds == limit
    d = waiting(limit, busy("a", 60))
    assert d.status.phase == Phase.EVICTING
    cond = next(c for c in d.status.conditions if c.type == C.COND_TASKS_DRAINED)
    assert cond.reason == C.REASON_TASK_TIMEOUT


def test_auto_without_a_declared_deadline_waits_the_default() -> None:
    d = waiting(120, busy("a", None))
    assert d.status.phase == Phase.WAITING_FOR_TASKS
    assert d.wake_at == NOW + timedelta(seconds=DEFAULT_TASK_TIMEOUT - 120)
    assert d.status.task_timeout is not None
    assert d.status.task_timeout.source == TaskTimeoutSource.DEFAULT


def test_a_number_is_used_as_given_and_leaves_no_auto_status() -> None:
    st = status(Phase.WAITING_FOR_TASKS, since=100)
    d = decide(observe(st, [busy("a", 60)]))  # taskTimeoutSeconds: 1800
    assert d.status.phase == Phase.WAITING_FOR_TASKS and d.status.task_timeout is None


def test_the_phase_deadline_follows_auto() -> None:
    d = waiting(10, busy("a", 60))
    got = phase_deadline(auto_spec(), d.status)
    assert got == NOW - timedelta(seconds=10) + timedelta(seconds=60 + AUTO_MARGIN_SECONDS)


# --- the plan ---


def test_the_plan_shows_each_deadline_and_what_auto_makes_of_them() -> None:
    found = [declaring("a", 20), declaring("b", 60), declaring("c", None)]
    plan = drain.make_plan(found, []).wire()
    assert [(x["instance"], x["seconds"]) for x in plan["taskDeadlines"]] == [
        ("fn/a", 20),
        ("fn/b", 60),
    ]
    assert plan["autoTaskTimeout"]["seconds"] == 60 + AUTO_MARGIN_SECONDS
    text = commands.plan_text("n1", plan, found)
    assert "task deadlines its instances declare: fn/a=20s (exec_timeout=20s of" in text
    assert f"with drain.taskTimeoutSeconds: Auto: {60 + AUTO_MARGIN_SECONDS}s" in text


def test_a_stanza_with_only_a_default_declares_it_for_every_pod() -> None:
    only = profile({"defaultSeconds": 120})
    assert deadlines.task_deadline(pod(("fn", {"x": "5s"})), only) == Deadline(120.0, "default")


def test_an_empty_stanza_is_refused() -> None:
    p = profiles.parse_profile(
        {"metadata": {"name": "x"}, "spec": {"podSelector": {}, "taskDeadline": {}}}
    )
    assert isinstance(p, profiles.InvalidProfile)
    assert "set env, defaultSeconds or both" in p.message


def test_the_shipped_openfaas_profile_reads_the_watchdog_timeouts() -> None:
    body = yaml.safe_load(EXAMPLES.joinpath("instanceprofile-openfaas.yaml").read_text())
    shipped = profiles.parse_profile({**body, "metadata": {"name": "of"}})
    assert isinstance(shipped, profiles.Profile), shipped
    fn = pod(("fn", {"exec_timeout": "2m", "write_timeout": "65s", "read_timeout": "10m"}))
    assert deadlines.task_deadline(fn, shipped) == Deadline(120.0, "exec_timeout=2m")
    # Neither set: the watchdog's default.
    assert deadlines.task_deadline(pod(("fn", {})), shipped) == Deadline(30.0, "default")


def test_the_profile_status_says_where_the_deadline_is_read() -> None:
    assert profiles.describe_deadline(profile().spec) == (
        "env exec_timeout,write_timeout, default 30s"
    )
    knative = profile({"env": [{"name": "REVISION_TIMEOUT_SECONDS", "container": "queue-proxy"}]})
    assert profiles.describe_deadline(knative.spec) == "env queue-proxy/REVISION_TIMEOUT_SECONDS"
    assert profiles.describe_deadline(profile({"defaultSeconds": 60}).spec) == "default 60s"
    assert profiles.describe_deadline(profile(None).spec) is None
