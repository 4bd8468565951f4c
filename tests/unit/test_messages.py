"""Status messages never print Python's None (issue 21, item 7): a message names
what is missing instead."""

from __future__ import annotations

from pitstop import constants as C
from pitstop.conditions import find
from pitstop.models import ExpectedCondition, NodeRepairSpec, Phase
from pitstop.repair.flow import Observation
from pitstop.repair.machine import decide
from tests.unit.test_recovery_props import NAME, T0, allowed, done, locked_node


def test_verify_names_a_condition_the_node_does_not_report() -> None:
    """Found with the real node-problem-detector: a verify step wanting
    ReadonlyFilesystem=False, which NPD's kernel monitor no longer reports, said
    `ReadonlyFilesystem=None (want False)`."""
    spec = NodeRepairSpec(node_name="n1")
    spec.verify.conditions = [
        ExpectedCondition.model_validate({"type": "Ready", "status": "True"}),
        ExpectedCondition.model_validate({"type": "ReadonlyFilesystem", "status": "False"}),
    ]
    status = allowed()
    status.phase = Phase.VERIFYING
    status.conditions.append(done(C.COND_REPAIRED))
    obs = Observation(
        now=T0,
        name=NAME,
        generation=1,
        spec=spec,
        status=status,
        node=locked_node("True"),
        holder_active=False,
        instances=[],
    )
    d = decide(obs)
    verified = find(d.status.conditions, C.COND_VERIFIED)
    assert verified is not None and verified.reason == C.REASON_NODE_UNHEALTHY
    assert verified.message == "ReadonlyFilesystem not reported by the node (want False)"
    assert "None" not in (d.status.message or "")
