"""A barrier for tests that assert that something did NOT happen.

Sleeping and then asserting proves nothing on a loaded machine: the operator may
not have looked at all meanwhile. Instead, a test first sees the state under test
reflected in the repair's status (so a pass of its driver has had it in view), then
waits here until the driver has made one more whole pass, actions included: a pass
that decided on that state. Then whatever the test asserts did not happen, the
operator had its chance to do and did not.

The operator counts decided passes in `pitstop_repair_passes_total{repair}`; passes
of one driver run one after another, so once the count is two above what it was
here, the first of those two passes ended, actions and all. Each pass is asked for
by annotating the NodeRepair (any NodeRepair event wakes its driver), so a repair
that waits for nothing in particular does not make the test wait for its resync.
"""

from __future__ import annotations

import re
import uuid

from tests.e2e.kube import Cluster, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import GROUP, PLURAL, VERSION, Repairs

POKE = "e2e.pitstop.dev/poke"


def passes(operator: Operator, repair: str) -> int:
    """Decided passes of the repair's driver so far (0 before its first)."""
    pattern = rf'^pitstop_repair_passes_total\{{repair="{re.escape(repair)}"\}} (\S+)$'
    found = re.search(pattern, operator.metrics(), re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def poke(cluster: Cluster, repair: str) -> None:
    note = {"metadata": {"annotations": {POKE: uuid.uuid4().hex}}}
    cluster.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, repair, note)


def decided_again(cluster: Cluster, operator: Operator, repair: str) -> None:
    """Returns once the driver of `repair` has made a whole pass that began after the
    status the caller saw was written (call it only after seeing one)."""
    start = passes(operator, repair)
    for target in (start + 1, start + 2):
        poke(cluster, repair)

        def reached(target: int = target) -> bool:
            return passes(operator, repair) >= target

        wait_until(f"{repair}: pass {target - start} after the barrier", reached, timeout=30)


def saw_itself(cluster: Cluster, operator: Operator, repairs: Repairs, repair: str) -> None:
    """`decided_again` for a change of the NodeRepair itself (an annotation), which no
    status reflects: bumping its generation (spec.reason, free text) after the change
    and waiting for a condition observed at that generation proves a pass read the
    object as it is now, change included (one object's events arrive in order). Only
    for a repair that holds its node: those passes set their conditions each time."""
    reason = repairs.get(repair)["spec"].get("reason") or ""
    bumped = cluster.custom.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, repair, {"spec": {"reason": f"{reason}."}}
    )
    generation = bumped["metadata"]["generation"]

    def observed() -> bool:
        conditions = repairs.status(repair).get("conditions") or []
        return any(c.get("observedGeneration") == generation for c in conditions)

    wait_until(f"{repair}: a pass at generation {generation}", observed, timeout=30)
    decided_again(cluster, operator, repair)
