"""A drain signal's PATCH answer as the proof that the signal landed (no cluster): it is
the pod's version the patch made, so until the index moves past the version the
signal was sent on, the answer is the pod, with the count it carries (invariant 1:
that count was read from a version that carries the signal)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from pitstop import constants as C
from pitstop.cluster import indexes
from pitstop.instances.contract import Instance
from pitstop.models import NodeRepairSpec, NodeRepairStatus
from pitstop.repair.daemon import Driver
from pitstop.repair.flow import Decision

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
KEY = "fn/a"


def pod(rv: str, tasks: str, mark: str | None = None, uid: str = "u1") -> dict[str, Any]:
    notes = {C.ANNOTATION_INFLIGHT: tasks}
    if mark is not None:
        notes[C.ANNOTATION_DRAINING] = mark
    return {
        "metadata": {
            "namespace": "fn",
            "name": "a",
            "uid": uid,
            "resourceVersion": rv,
            "annotations": notes,
            "ownerReferences": [{"kind": "ReplicaSet"}],
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "fn"}]},
        "status": {"phase": "Running"},
    }


class PatchKube:
    """Answers a pod patch with the pod the test says the patch made."""

    def __init__(self, answer: dict[str, Any] | None) -> None:
        self.answer = answer
        self.patched: list[str] = []

    async def patch_pod(self, key: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        self.patched.append(key)
        return self.answer


def driver(answer: dict[str, Any] | None) -> Driver:
    return Driver("r1", {"spec": {"nodeName": "n1"}}, PatchKube(answer), logging.getLogger("t"))  # type: ignore[arg-type]


def seen(d: Driver, body: dict[str, Any]) -> Instance:
    index = {"n1": [indexes.slim_pod(body)]}
    (found,) = d.observe.instances(NOW, index, {})  # type: ignore[arg-type]
    return found


def signal(d: Driver) -> bool:
    decision = Decision(status=NodeRepairStatus(), mark_draining=[KEY])
    return asyncio.run(d.pod_steps.act(decision, NOW, NodeRepairSpec(node_name="n1")))


MARK = "2024-05-01T12:00:00.000000Z"


def test_the_answer_stands_for_the_pod_until_the_index_moves_past_the_version_sent_on() -> None:
    d = driver(pod("6", "0", MARK))
    before = seen(d, pod("5", "3"))
    assert not before.draining and before.tasks.count == 3
    assert signal(d), "an answer newer than the index: decide again at once"
    assert d.pod_steps.state.sent == {("drain", KEY)}
    # The watch still shows version 5: the answer (version 6) is the pod, with its
    # count, read from a version that carries the signal.
    now = seen(d, pod("5", "3"))
    assert now.draining and now.tasks.count == 0 and not now.tasks.busy
    # The echo arrives: the index is the pod again.
    echoed = seen(d, pod("6", "0", MARK))
    assert echoed.draining and KEY not in d.pod_steps.state.answered


def test_a_count_the_answer_carries_is_the_one_used() -> None:
    # The runtime raised its count before the signal landed: the answer shows it.
    d = driver(pod("6", "2", MARK))
    seen(d, pod("5", "0"))
    signal(d)
    i = seen(d, pod("5", "0"))
    assert i.draining and i.tasks.count == 2 and i.tasks.busy


def test_any_other_version_in_the_index_drops_the_answer() -> None:
    # Someone took the mark off after our patch (version 7): the index is newer than
    # the answer; the pod is not draining, and the mark is sent again.
    d = driver(pod("6", "0", MARK))
    seen(d, pod("5", "0"))
    signal(d)
    i = seen(d, pod("7", "1"))
    assert not i.draining and i.tasks.count == 1
    assert KEY not in d.pod_steps.state.answered
    # Nor does the answer come back when the index shows the old version again
    # (a re-list): it was dropped for good.
    assert not seen(d, pod("5", "0")).draining


def test_an_answer_of_another_pod_of_that_name_is_not_this_pod() -> None:
    d = driver(pod("9", "0", MARK, uid="u2"))
    seen(d, pod("5", "4"))
    signal(d)
    i = seen(d, pod("5", "4"))
    assert not i.draining and i.tasks.count == 4


def test_a_pod_gone_gives_no_answer_and_no_pass_at_once() -> None:
    d = driver(None)  # 404: the patch found no pod
    seen(d, pod("5", "0"))
    assert not signal(d)
    assert not d.pod_steps.state.answered


def test_a_version_older_than_the_answer_is_not_a_mark_removed() -> None:
    # The chaos soak's break (invariant 6, "drain signal rewritten" 70 ms apart): the
    # answer (version 7) stood for the pod in one pass; the next showed version 6, made
    # before the patch landed, without the mark. That is the watch catching up, not
    # someone removing the mark: the signal is not sent again. Only a mark the index
    # itself showed and then lost is.
    d = driver(pod("7", "0", MARK))
    seen(d, pod("5", "0"))
    signal(d)
    steps = d.pod_steps
    steps.forget_sent([seen(d, pod("5", "0"))])  # the answer stands for the pod
    steps.forget_sent([seen(d, pod("6", "0"))])  # an older version, not yet marked
    assert ("drain", KEY) in steps.state.sent
    steps.forget_sent([seen(d, pod("7", "0", MARK))])  # the echo
    steps.forget_sent([seen(d, pod("8", "0"))])  # someone took it off
    assert ("drain", KEY) not in steps.state.sent
