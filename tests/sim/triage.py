"""Names for the breaks the simulation finds on the current code, so the fixed seeds
of `make test` can expect them by name until their fixes are merged. Holes 1 and 2
of issue 18 are fixed, and so is every other hole named here; their names stay, to
name a regression."""

from __future__ import annotations

import re

from tests.sim.checks import Break

HOLE_DEREGISTRATION = "hole-1-deregistration-deadline"
"""Issue 18 hole 1: the deregistration deadline is repair-wide. Once a repair has
timed out deregistering (DeregistrationTimeout), a gated sync instance its budget
held back is marked late and evicted within the same pass or soon after, still a
ready endpoint and with tasks in flight (invariants 1 and 2, and 9's per-instance
deadlines)."""
HOLE_DELETION_RACE = "hole-2-deletion-races-the-pass"
"""Issue 18 hole 2: deleting a repair races the pass in flight: the pass writes its
status over Aborted (invariant 6) and marks pods after the give-back unmarked them,
so they keep pitstop.dev/draining (invariant 9), or marks pods of a node already
given back (invariant 3), or takes the lock after its deletion was handled, leaving
the node cordoned by a repair that no longer exists until the orphan sweep (4)."""
SLOT_OF_DELETED_REPAIR = "pool-slot-freed-before-give-back"
"""Admission counts a repair being deleted as no longer active (RepairView.active
ignores deleting repairs) while its finalizer has not given its node back yet: a
waiting repair takes another node at once, and for a moment the pool has one
repair more than maxConcurrentRepairs (invariant 5)."""


STALE_MARK = "stale-drain-mark-after-give-back"
"""A repair that takes a node right after another's give-back decides from a view
that still shows the drain signals the give-back took off: it finds no task
unsignalled, skips the wait, and evicts a pod whose runtime, unmarked, took a task
again (invariant 1)."""


UNSEEN_MARK = "task-timeout-evicts-a-mark-not-yet-seen"
"""After the task timeout (onTaskTimeout: Evict) an instance marked late gets a
timeout of its own, counted from the drain mark the pass reads on the pod; one this
process just marked, whose mark the view does not show yet, has no mark to count
from and is evicted at once, with tasks in flight (invariants 1 and 9)."""


LOST_STATUS_ANSWER = "a-lost-status-answer-rewinds-the-phase"
"""A status write that landed but whose answer was lost leaves the driver deciding
from its older status (it never reads its own back): a repair already Uncordoning,
whose release failed, is verified again and written back to Verifying (6)."""
INFERRED_KIND = "a-sync-pod-inferred-async-from-a-lagging-view"
"""An unlabelled sync pod is sync only once the operator's view of the EndpointSlices
shows it: a new replacement whose endpoint has not reached the view yet is taken for
async and evicted without deregistration, still routed (2)."""


STALE_TARGET = "admission-sees-its-node-still-cordoned"
"""Admission judges the repair's own node from the view: a node another repair has
just released still looks cordoned there, so taking it "takes nothing away" and
minAvailable is not checked; the lock patch then meets the fresh node, but the
admission, once given, is not asked again: the pool drops below minAvailable (5)."""


GATE_TIME_AT_SEND = "gate-deadline-counted-from-the-send-time-truncated"
"""An instance's own deregistration wait counts from its serving condition's
lastTransitionTime, which the client stamps when it sends the patch, truncated to the
second: the gate closes up to a second and the request's latency later, so the wait
can end that much early (seed 56: stamped 436 s, closed at 437.02 s, evicted at
456.00 s with a 20 s timeout: 18.98 s; invariant 2 allows 1 s for the truncation)."""


STALE_SLICE_VIEW = "a-closed-gate-confirmed-by-a-slice-view-older-than-its-readiness"
"""A pod that became Ready a moment before its repair took the node, while the
operator's view of its EndpointSlice still shows the not-ready endpoint published
before (a watch running late): its gate is closed, the view shows serving False and
no ready endpoint, and the drain counts it deregistered (Deregistered=True) and
evicts it, while the endpoints controller still publishes it ready (2; long-run
seed 30000, step 4125, found on branch safety). Fixed: the view only says when to
look; a read of the API server's slices after the closing confirms
(Observe.confirm_deregistered)."""


LATE_WRITE_OVER_FINAL = "a-late-status-write-lands-over-a-final-phase"
"""A status write sent before a leader change lands after the new leader finished
the repair: both leaders decided Repairing → Uncordoning, the new one released the
node and wrote Succeeded, then the deposed one's Uncordoning arrived (a merge patch,
no precondition) and took the repair out of its final phase (6; long-run seed
60076 at step 284, on main too, found on branch safety). Fixed: a status write
tests the phase it was decided from (kube.guarded_status), as node patches test
their markers, and is refused."""


def _gate_closed_near_timeout(message: str) -> bool:
    closed = re.search(r"gate closed (\d+)s ago", message)
    timeout = re.search(r"deregistration timeout (\d+)s", message)
    return bool(closed and timeout and int(closed[1]) >= int(timeout[1]) - 3)


def classify(b: Break) -> str:
    if b.invariant == "2" and _gate_closed_near_timeout(b.message):
        return GATE_TIME_AT_SEND  # its own wait ran, a little short: not the repair-wide one
    if b.invariant in ("1", "2") and "DeregistrationTimeout" in b.message:
        return HOLE_DEREGISTRATION
    if b.invariant == "2" and "gate closed" in b.message and "Deregistered=True" in b.message:
        return STALE_SLICE_VIEW  # confirmed out of routing by a view that lagged
    if b.invariant == "6" and "went from Aborted" in b.message:
        return HOLE_DELETION_RACE
    if b.invariant == "9" and "keeps pitstop.dev/draining" in b.message:
        return HOLE_DELETION_RACE
    if b.invariant == "3" and ("gone)" in b.message or "being deleted)" in b.message):
        return HOLE_DELETION_RACE  # a pass of a deleted repair still marking pods
    if b.invariant == "4" and "which no longer exists" in b.message:
        return HOLE_DELETION_RACE  # a pass of a deleted repair took the lock after abort
    if b.invariant == "1" and "removed" in b.message and "by a give-back" in b.message:
        return STALE_MARK
    if b.invariant == "1" and "TasksDrained=False TaskTimeout" in b.message:
        return UNSEEN_MARK
    if b.invariant == "6" and "answer to one of its status writes was lost" in b.message:
        return LOST_STATUS_ANSWER
    if b.invariant == "6" and "went from Succeeded back to" in b.message:
        return LATE_WRITE_OVER_FINAL
    if b.invariant == "2" and "gate open, unlabelled" in b.message:
        return INFERRED_KIND
    if b.invariant == "5" and "nodes available" in b.message and "released it" in b.message:
        return STALE_TARGET
    if b.invariant == "5" and "(being deleted)" in b.message:
        return SLOT_OF_DELETED_REPAIR
    return f"invariant-{b.invariant}"
