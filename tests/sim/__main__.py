"""python -m tests.sim: run seeds of the simulation, print each break with its
seed and a shrunk trace (docs/simulation.md).

  python -m tests.sim --seed 7 --steps 2000                 one seed
  python -m tests.sim --seed 7 --steps 915 --faults '...'   a printed reproduction
  python -m tests.sim --seed 1000 --total 1000000           the long run: seeds from
                                                            1000 until 1,000,000 steps ran
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.sim.run import Fault, Result, Simulation, report, shrink
from tests.sim.triage import classify


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000, help="steps per seed")
    ap.add_argument("--seeds", type=int, default=1, help="how many seeds, from --seed on")
    ap.add_argument("--total", type=int, default=0, help="run seeds until this many steps ran")
    ap.add_argument("--faults", default=None, help="the fault plan (step:kind:arg,...)")
    ap.add_argument("--shrink", type=int, default=30, help="replays the shrinker may spend")
    ap.add_argument("--trace", type=int, default=40, help="trace lines printed with a break")
    args = ap.parse_args(argv)

    plan = None
    if args.faults is not None:
        plan = [Fault.parse(f) for f in args.faults.split(",") if f.strip()]
    started = time.monotonic()
    steps = quiet = 0
    broken: dict[str, list[Result]] = {}
    seed, count = args.seed, 0
    while (count < args.seeds) if not args.total else (steps < args.total):
        t0 = time.monotonic()
        r = Simulation(seed, args.steps, plan).run()
        steps += r.steps
        quiet += r.quiet_steps
        print(f"{r.summary()} [{time.monotonic() - t0:.1f}s]", flush=True)
        if r.breaks:
            kind = classify(r.breaks[0])
            print(f"  BREAK ({kind}): {r.breaks[0].line()}", flush=True)
            first = kind not in broken
            broken.setdefault(kind, []).append(r)
            if first or not args.total:  # the long run shrinks one of each kind
                small, runs = shrink(r, args.shrink) if args.shrink else (r, 0)
                print(report(r, small if runs else None, args.trace), flush=True)
        seed, count = seed + 1, count + 1
    elapsed = time.monotonic() - started
    print(
        f"\n{count} seeds, {steps} steps (+{quiet} quiet) in {elapsed:.0f}s"
        f" ({1000 * elapsed / max(1, steps + quiet):.2f} ms a step);"
        f" {sum(len(v) for v in broken.values())} seeds broke"
    )
    for kind, results in sorted(broken.items()):
        seeds = ", ".join(str(r.seed) for r in results)
        print(f"  {kind}: {len(results)} seeds ({seeds})")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
