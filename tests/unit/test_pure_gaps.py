"""Behaviour of the pure modules that no other unit test reached (found by measuring
line coverage): what a repair the pool holds back does, names of Jobs for long
repair names, the retry backoff, a lock taken again after its record was stripped,
drain marks and namespaces not known yet, and a profile asked for what it lacks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitstop import constants as C
from pitstop.cluster import nodes
from pitstop.instances import contract
from pitstop.instances.sources import addressing, answers, errors, matching, profiles
from pitstop.models import NodeRepairSpec, NodeRepairStatus, Phase
from pitstop.repair import recovery
from pitstop.repair.flow import Observation
from pitstop.repair.machine import decide

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# --- a repair the pool holds back (machine.decide in Pending) ---


def test_a_repair_the_pool_holds_back_touches_nothing_and_says_why_once() -> None:
    node = {"metadata": {"name": "n1"}, "spec": {}}
    obs = Observation(
        now=NOW,
        name="r1",
        generation=1,
        spec=NodeRepairSpec.model_validate({"nodeName": "n1"}),
        status=NodeRepairStatus(phase=Phase.PENDING),
        node=node,
        holder_active=False,
        instances=[],
        waiting_for="MinAvailable: 4 of 5 nodes available; the pool keeps 4",
    )
    d = decide(obs)
    assert not (d.take_lock or d.recordon or d.mark_draining or d.deregister or d.evict)
    assert d.status.phase == Phase.PENDING and not d.status.conditions
    assert d.status.message == f"{C.REASON_WAITING_FOR_CAPACITY}: {obs.waiting_for}"
    assert [(e.reason, e.once) for e in d.events] == [(C.REASON_WAITING_FOR_CAPACITY, True)]


# --- recovery's names and pauses ---

REPAIR_NAMES = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,250}[a-z0-9])?", fullmatch=True)


@settings(deadline=None)
@given(REPAIR_NAMES, st.integers(1, 99))
def test_job_names_fit_a_label_value_and_differ_per_attempt(repair: str, attempt: int) -> None:
    """Job names become pod labels (63 characters at most); each attempt has its own,
    and the same repair and attempt always gets the same (a restart finds it)."""
    name = recovery.job_name(repair, attempt)
    assert len(name) <= 63
    assert name.endswith(f"-{attempt}")
    assert name == recovery.job_name(repair, attempt)
    assert name != recovery.job_name(repair, attempt + 1)


def test_long_repair_names_that_share_a_prefix_get_different_job_names() -> None:
    a, b = "x" * 80 + "-kernel", "x" * 80 + "-disk"
    assert recovery.job_name(a, 1) != recovery.job_name(b, 1)
    assert recovery.job_name(a, 1).startswith("pitstop-xxx")


def test_retry_backoff_doubles_from_five_seconds_up_to_five_minutes() -> None:
    waits = [recovery.retry_backoff(n).total_seconds() for n in range(1, 9)]
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300]


# --- the lock taken again after someone stripped its record ---


def test_a_lock_taken_again_keeps_the_repairs_own_record_of_the_prior_cordon() -> None:
    """The annotations were stripped while our cordon stayed: the node looks cordoned
    before the repair, but the repair knows it was not (else it would stay cordoned)."""
    node = {"metadata": {"name": "n1", "annotations": {}}, "spec": {"unschedulable": True}}
    ops = nodes.lock_and_cordon(node, "r1", known_prior=False)
    written = {op["path"]: op.get("value") for op in ops if op["op"] == "add"}
    key = "/metadata/annotations/" + C.ANNOTATION_WAS_UNSCHEDULABLE.replace("/", "~1")
    assert written[key] == "false"


# --- the instance contract ---


def pod(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p1", "namespace": "fn", "annotations": annotations or {}}
    return {"metadata": meta, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}


def test_a_drain_mark_that_is_no_time_leaves_no_deadline_and_still_counts_as_marked() -> None:
    i = contract.observe(pod({C.ANNOTATION_DRAINING: "yesterday"}), None)
    assert i.draining and i.draining_since is None


def test_a_drain_mark_without_a_zone_is_read_as_utc() -> None:
    i = contract.observe(pod({C.ANNOTATION_DRAINING: "2026-03-01T12:00:00"}), None)
    assert i.draining_since == NOW


def test_a_pod_whose_namespace_is_not_known_yet_counts_as_busy() -> None:
    """A profile's namespaceSelector may describe it once its namespace's labels are
    known; until then its count is not trusted, whatever its annotation says."""
    i = contract.observe(
        pod({C.ANNOTATION_INFLIGHT: "0"}), None, matching.Match(None, uncertain=True)
    )
    assert i.tasks.busy and i.tasks.pending is not None


# --- task sources: asking a profile for what it does not have ---


def annotation_profile() -> profiles.Profile:
    body = {"metadata": {"name": "plain", "creationTimestamp": "2026-01-01T00:00:00Z"}}
    p = profiles.parse_profile({**body, "spec": {"podSelector": {}}})
    assert isinstance(p, profiles.Profile)
    return p


def test_a_profile_without_http_post_has_no_signal_request() -> None:
    with pytest.raises(ValueError, match="no httpPost drain signal"):
        addressing.signal_request(annotation_profile(), pod())


def test_a_profile_that_reads_the_annotation_parses_no_answer() -> None:
    with pytest.raises(ValueError, match="reads the annotation"):
        answers.parse_answer(annotation_profile(), "3")


def test_source_errors_are_equal_by_kind_and_message() -> None:
    a, b = errors.SourceError("http", "refused"), errors.SourceError("http", "refused")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != errors.SourceError("http", "timed out")
    assert repr(a) == "SourceError('http', 'refused')"
