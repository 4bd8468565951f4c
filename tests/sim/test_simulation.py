"""The simulation tier in `make test`: fixed seeds, 2,000 steps each, every one
replayed identically on every run (docs/simulation.md).

CLEAN seeds, and the FIXED seeds that found holes now fixed, must hold every
invariant. KNOWN seeds break on the current code in
a way tests.sim.triage names; each is an expected failure (strict: once the fix
is merged it passes, and the strict xfail then fails until its mark is removed).
A seed that breaks any other way fails outright, with the seed and a trace.

PITSTOP_SIM_STEPS=N runs the long run too: fresh seeds until N steps ran."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pitstop.instances import contract
from tests.sim.run import Result, Simulation, report, shrink
from tests.sim.triage import (
    GATE_TIME_AT_SEND,
    HOLE_DELETION_RACE,
    HOLE_DEREGISTRATION,
    LATE_WRITE_OVER_FINAL,
    LOST_STATUS_ANSWER,
    SLOT_OF_DELETED_REPAIR,
    STALE_MARK,
    STALE_SLICE_VIEW,
    UNSEEN_MARK,
    classify,
)

STEPS = 2000

CLEAN = [1, 4, 6, 7, 8, 9, 10, 11, 15, 16, 19, 26, 31, 33, 36, 39, 47, 65, 67]
"""19 seeds of 2,000 steps that break nothing on this branch."""
FIXED = {
    0: HOLE_DELETION_RACE,  # was invariant 3: a deleted repair's pass marked a pod given back
    3: HOLE_DELETION_RACE,  # was invariant 9: pods kept pitstop.dev/draining
    27: HOLE_DELETION_RACE,  # was invariant 6: the pass wrote its status over Aborted;
    # then invariant 1: RepairAllowed on the watch's word, 5 pods on the node (1a506f2)
    5: HOLE_DEREGISTRATION,
    23: HOLE_DEREGISTRATION,
    61: HOLE_DEREGISTRATION,
    44: SLOT_OF_DELETED_REPAIR,  # was invariant 5: a deleted repair's slot freed too early
    87: SLOT_OF_DELETED_REPAIR,
    49: STALE_MARK,  # was invariant 1: a mark a give-back took off trusted by the next repair
    25: GATE_TIME_AT_SEND,  # was invariant 2: a gate's wait counted from its truncated stamp
    56: GATE_TIME_AT_SEND,
    20071: LOST_STATUS_ANSWER,  # was invariant 6 at step 184: Uncordoning back to Verifying
    94: UNSEEN_MARK,  # was invariant 1 before hole 1's fix: a mark not yet seen forced out
    60076: LATE_WRITE_OVER_FINAL,  # was invariant 6 at step 284: Succeeded back to Uncordoning
}
"""Seeds that found holes before their fixes were merged (issue 18's two, and four this
tier found, and the long run's late write); now they must hold every invariant (with
CLEAN: 33 seeds, 66,000 steps).
Seed 25 (the pool slot) met the gate's send time next; both are fixed."""
FIXED_LONG = {
    30000: (STALE_SLICE_VIEW, 4126),  # was invariant 2 at step 4125: a stale slice view
    # was invariant 1 at step 4214: a Failed repair's give-back (onFailure: Uncordon)
    # took off the drain signals of the repair that had taken its node over meanwhile
    10004: (STALE_MARK, 4215),
}
"""Seeds of the long run whose hole shows only after more than STEPS: seed → (the
hole it found, the steps it takes to reach it). Now they must hold."""
KNOWN: dict[int, tuple[str, int]] = {}
"""seed → (the hole it finds, its first break, on this code; the steps it takes)."""

REASONS: dict[str, str] = {}


class KnownHole(Exception):
    """The seed broke the way its mark expects."""


def _run(seed: int, steps: int = STEPS) -> Result:
    return Simulation(seed, steps).run()


@pytest.mark.parametrize("seed", CLEAN + sorted(FIXED))
def test_a_seed_holds_every_invariant(seed: int) -> None:
    r = _run(seed)
    assert r.ok, report(r, shrink(r, budget=8)[0])
    assert r.steps == STEPS
    assert r.evictions > 0 and r.repairs.get("Succeeded", 0) > 0, (
        f"seed {seed} exercised nothing: {r.summary()}"
    )


@pytest.mark.parametrize("seed", sorted(FIXED_LONG))
def test_a_long_run_seed_holds_past_its_old_break(seed: int) -> None:
    _, steps = FIXED_LONG[seed]
    r = _run(seed, steps)
    assert r.ok, report(r, shrink(r, budget=4)[0])
    assert r.steps == steps


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(
            seed, marks=pytest.mark.xfail(strict=True, raises=KnownHole, reason=REASONS[hole])
        )
        for seed, (hole, _) in sorted(KNOWN.items())
    ],
)
def test_a_seed_finds_its_known_hole(seed: int) -> None:
    hole, steps = KNOWN[seed]
    r = _run(seed, steps)
    if r.breaks:
        kind = classify(r.breaks[0])
        assert kind == hole, f"a different break than expected:\n{report(r)}"
        raise KnownHole(report(r))


def test_a_seed_replays_exactly() -> None:
    a, b = _run(3, 400), _run(3, 400)
    assert a.trace == b.trace and a.trace
    assert (a.requests, a.evictions, a.sim_seconds) == (b.requests, b.evictions, b.sim_seconds)


def test_a_run_whose_tasks_all_ended_closes_its_loop(monkeypatch: Any) -> None:
    """A run that ends with no task left on its loop (seed 10,198 did, before the
    fixes of issue 18): closing it must not gather nothing (a future of another loop)
    and fail the run."""

    async def nothing(self: Simulation) -> None:
        return None

    monkeypatch.setattr(Simulation, "main", nothing)
    r = Simulation(10198, 10).run()
    assert r.steps == 0 and not r.breaks


def test_the_checks_catch_an_eviction_of_a_busy_instance(monkeypatch: Any) -> None:
    """A mutant drain that reads every task count as 0: invariant 1 must break, and
    the shrunk reproduction must break the same way when replayed."""
    monkeypatch.setattr(contract.TaskCount, "busy", property(lambda self: False))
    r = _run(3, 800)
    assert r.breaks and r.breaks[0].invariant == "1", r.summary()
    small, _ = shrink(r, budget=6)
    assert small.faults <= r.faults
    again = Simulation(small.seed, small.steps, small.plan, settle=False).run()
    assert again.breaks and again.breaks[0].invariant == "1"
    assert again.trace == small.trace


def test_the_checks_catch_an_eviction_of_a_routed_instance(monkeypatch: Any) -> None:
    """A mutant drain that takes every gated instance for out of routing as soon as
    its gate is closed, whatever the EndpointSlices say: routed instances are evicted:
    invariant 2 must break. (The older mutant, no gate ever closed, is now caught by
    the operator itself: an instance whose gate never closed is never forced out.)"""
    monkeypatch.setattr(
        contract.Instance, "deregistered", property(lambda self: self.serving == "False")
    )
    r = _run(5, 300)
    assert any(b.invariant == "2" for b in r.breaks), r.summary()


@pytest.mark.skipif(not os.environ.get("PITSTOP_SIM_STEPS"), reason="PITSTOP_SIM_STEPS unset")
def test_long_run() -> None:
    """Fresh seeds (from 10,000) until PITSTOP_SIM_STEPS steps ran; every break listed."""
    total, seed, found = int(os.environ["PITSTOP_SIM_STEPS"]), 10_000, []
    ran = 0
    while ran < total:
        r = _run(seed, 5000)
        ran += r.steps
        if r.breaks:
            found.append(f"seed {seed} ({classify(r.breaks[0])}): {r.breaks[0].line()}")
        seed += 1
    assert not found, f"{len(found)} seeds broke in {ran} steps:\n" + "\n".join(found)
