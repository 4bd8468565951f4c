"""One simulation: a seed makes the cluster, the fault plan and every random choice
after (one generator per step, seeded by (seed, step), so a shorter plan disturbs
the steps after a removed fault as little as possible); the steps run on simulated
time; the checks judge every step; a break stops the run, and `shrink` looks for a
shorter plan with the same broken invariant.

A step: the planned faults of the step, one round of the world (controllers,
kubelets, runtimes, humans), then simulated time moves on by 0.05-2 s (more after
a `timeout` fault) while the operator's tasks, watch deliveries and requests run,
then the checks. After the last step the faults stop and the world turns quiet
(no new tasks, humans finish their repairs and delete the failed ones) until
every repair ended or four simulated hours passed: liveness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import kopf

from pitstop import constants as C
from tests.sim.checks import FINAL, Break, Checks
from tests.sim.cluster import RESOURCES, Cluster, stamp
from tests.sim.loop import VirtualLoop, patched_clock
from tests.sim.process import Process
from tests.sim.server import ApiServer, Network

FAULTS = (
    "restart",
    "leader",
    "delete",
    "timeout",
    "burst",
    "alerts",
    "drop",
    "dup",
    "late",
    "apierr",
    "churn",
)
"""restart: the operator killed, a new one up 1-15 s later; leader: the same with
the standby taking over at once (the old one's requests still land); delete: a
NodeRepair deleted (its finalizer runs `abort`); timeout: 100-2000 s pass at once
(deadlines); burst: nodes turn KernelDeadlock at once (the policy's burst); alerts:
an alert storm for many nodes; drop: a watch breaks, re-listed 1-30 s later; dup:
events delivered twice; late: a watch lags 5-30 s for a while; apierr: requests
fail or lose their answers for a while; churn: a NodeRepair made by hand and
deleted 0-3 s later, while its first passes are in flight."""
FAULT_RATE = 0.03
QUIET_LIMIT = 4 * 3600.0


@dataclass(frozen=True)
class Fault:
    step: int
    kind: str
    arg: int

    def __str__(self) -> str:
        return f"{self.step}:{self.kind}:{self.arg}"

    @classmethod
    def parse(cls, text: str) -> Fault:
        step, kind, arg = text.split(":")
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r} (one of {', '.join(FAULTS)})")
        return cls(int(step), kind, int(arg))


def plan_for(seed: int, steps: int) -> list[Fault]:
    rng = random.Random(f"plan:{seed}")
    return [
        Fault(i, rng.choice(FAULTS), rng.randrange(1000))
        for i in range(steps)
        if rng.random() < FAULT_RATE
    ]


@dataclass
class Result:
    seed: int
    steps: int
    plan: list[Fault]
    breaks: list[Break]
    quiet_steps: int = 0
    sim_seconds: float = 0.0
    repairs: dict[str, int] = field(default_factory=dict)
    """Final phase (or "deleted") → count."""
    evictions: int = 0
    requests: int = 0
    restarts: int = 0
    uncovered: int = 0
    trace: list[str] = field(default_factory=list)

    @property
    def faults(self) -> int:
        """Faults of the plan that the run reached."""
        return sum(1 for f in self.plan if f.step < self.steps)

    @property
    def ok(self) -> bool:
        return not self.breaks

    def summary(self) -> str:
        phases = ", ".join(f"{k} {v}" for k, v in sorted(self.repairs.items()))
        return (
            f"seed {self.seed}: {self.steps} steps (+{self.quiet_steps} quiet),"
            f" {self.sim_seconds / 3600:.1f} h simulated, {self.faults} faults,"
            f" {self.restarts} operator starts, {self.requests} API requests,"
            f" {self.evictions} evictions; repairs: {phases or 'none'}"
        )


@contextlib.contextmanager
def quiet_events() -> Iterator[None]:
    """kopf.event needs a running operator; the simulation records nothing of them,
    nor the log line pitstop.logs makes of each (it would reach stderr through
    logging's last-resort handler)."""
    saved = kopf.event
    kopf.event = lambda *a, **kw: None
    log = logging.getLogger("pitstop")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        kopf.event = saved
        log.setLevel(level)


class Simulation:
    def __init__(
        self, seed: int, steps: int, plan: list[Fault] | None = None, settle: bool = True
    ) -> None:
        self.seed, self.steps, self.settle_after = seed, steps, settle
        self.plan = plan if plan is not None else plan_for(seed, steps)
        self.step = -1
        self._rng = random.Random(f"{seed}:setup")
        rng = self._rng
        self.cluster = Cluster(rng, nodes=rng.randint(4, 8), apps=rng.randint(4, 10))
        self.cluster.log = self.log
        self.checks = Checks(self)
        self.server = ApiServer(self.cluster, self.checks)
        self.net = Network(self.rng)
        self.proc: Process | None = None
        self.generation = 0
        self.starts = 0
        self.jump = 0.0
        self.trace: deque[str] = deque(maxlen=300)
        self.quiet_steps = 0
        self.deleted = 0

    def rng(self) -> random.Random:
        return self._rng

    def log(self, line: str) -> None:
        self.trace.append(f"step {self.step:6d} t={self.cluster.now:9.2f}s  {line}")

    # --- running ---

    def run(self) -> Result:
        loop = VirtualLoop()
        self.cluster.clock = loop.time
        try:
            with patched_clock(), quiet_events():
                loop.run_until_complete(self.main())
                if self.proc is not None:
                    self.proc.kill()
                pending = asyncio.all_tasks(loop)
                for t in pending:
                    t.cancel()
                if pending:  # gather() of nothing would make a future of another loop
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()
        repairs: dict[str, int] = {"deleted": self.deleted} if self.deleted else {}
        for r in self.cluster.repairs.values():
            phase = (r.get("status") or {}).get("phase") or "None"
            repairs[phase] = repairs.get(phase, 0) + 1
        return Result(
            seed=self.seed,
            steps=min(self.step + 1, self.steps),
            plan=self.plan,
            breaks=list(self.checks.breaks),
            quiet_steps=self.quiet_steps,
            sim_seconds=loop.now,
            repairs=repairs,
            evictions=self.checks.evictions,
            requests=self.server.requests,
            restarts=self.starts,
            uncovered=self.checks.uncovered,
            trace=list(self.trace),
        )

    async def main(self) -> None:
        self.cluster.create_policy("pool-a", self.policy_spec(self._rng))
        self.start_process(self.generation)
        faults: dict[int, list[Fault]] = {}
        for f in self.plan:
            faults.setdefault(f.step, []).append(f)
        for i in range(self.steps):
            self.step = i
            self._rng = random.Random(f"{self.seed}:{i}")
            for f in faults.get(i, ()):
                self.inject(f)
            self.world(quiet=False)
            dt, self.jump = self._rng.uniform(0.05, 2.0) + self.jump, 0.0
            await asyncio.sleep(dt)
            self.checks.after_step()
            if self.checks.breaks:
                return
        if self.settle_after:
            await self.settle()

    async def settle(self) -> None:
        self.net.faulty_until = -1.0
        self.log("faults stop; the world turns quiet")
        if self.proc is None or not self.proc.alive:
            self.generation += 1
            self.start_process(self.generation)
        for s in self.proc.streams.values() if self.proc else ():
            s.slow_until = -1.0
        limit = self.cluster.now + QUIET_LIMIT
        while self.cluster.now < limit:
            self.step += 1
            self.quiet_steps += 1
            self._rng = random.Random(f"{self.seed}:{self.step}")
            self.world(quiet=True)
            await asyncio.sleep(self._rng.uniform(1.0, 10.0))
            self.checks.after_step()
            if self.checks.breaks:
                return
            if self.settled():
                break
        self.checks.at_end()

    def settled(self) -> bool:
        c = self.cluster
        if any((r.get("status") or {}).get("phase") not in FINAL for r in c.repairs.values()):
            return False
        if any(c.lock(n) and self.checks.phase(c.lock(n)) != "Failed" for n in c.nodes):
            return False
        return not any(v != float("inf") for v in self.checks.unowned.values())

    def start_process(self, generation: int) -> None:
        if generation != self.generation or (self.proc is not None and self.proc.alive):
            return
        self.starts += 1
        self.proc = Process(self, self.starts)
        self.proc.start()
        self.log(f"operator process {self.starts} starts (listing everything)")

    def kill(self) -> bool:
        if self.proc is None or not self.proc.alive:
            return False
        self.proc.kill()
        self.generation += 1
        return True

    # --- faults ---

    def inject(self, f: Fault) -> None:
        rng, c, now = self._rng, self.cluster, self.cluster.now
        self.log(f"FAULT {f}")
        proc = self.proc if self.proc is not None and self.proc.alive else None
        if f.kind in ("restart", "leader"):
            if self.kill():
                delay = rng.uniform(1, 15) if f.kind == "restart" else rng.uniform(0.05, 0.5)
                asyncio.get_running_loop().call_later(delay, self.start_process, self.generation)
        elif f.kind == "delete":
            live = [
                n
                for n, r in sorted(c.repairs.items())
                if not r["metadata"].get("deletionTimestamp")
            ]
            if live:
                self.delete(live[f.arg % len(live)])
        elif f.kind == "timeout":
            self.jump = rng.uniform(100, 2000)
        elif f.kind == "burst":
            names = sorted(c.nodes)
            for n in rng.sample(names, 1 + f.arg % len(names)):
                c.set_condition(n, "KernelDeadlock", "True")
        elif f.kind == "alerts":
            if proc is not None:
                names = sorted(c.nodes)
                for n in rng.sample(names, 1 + f.arg % len(names)):
                    alerts = proc.registry.pools.alerts
                    alerts.add("NodeDiskFailing", {"node": n}, stamp(now), True)
        elif f.kind == "drop":
            if proc is not None:
                proc.break_stream(RESOURCES[f.arg % len(RESOURCES)], rng.uniform(1, 30))
        elif f.kind == "dup":
            if proc is not None:
                proc.duplicate(RESOURCES[f.arg % len(RESOURCES)], 1 + f.arg % 5)
        elif f.kind == "late":
            if proc is not None:
                proc.streams[RESOURCES[f.arg % len(RESOURCES)]].slow_until = now + rng.uniform(
                    5, 60
                )
        elif f.kind == "apierr":
            self.net.faulty_until = now + rng.uniform(1, 20)
        elif f.kind == "churn":
            name = self.create_by_hand(rng, sorted(c.nodes)[f.arg % len(c.nodes)])
            asyncio.get_running_loop().call_later(rng.uniform(0, 3), self.delete, name)

    def delete(self, name: str) -> None:
        self.log(f"NodeRepair {name} deleted by a user")
        before = name in self.cluster.repairs
        self.cluster.delete_repair(name)
        if before and name not in self.cluster.repairs:
            self.deleted += 1

    # --- the world ---

    def world(self, quiet: bool) -> None:
        rng, c = self._rng, self.cluster
        c.tick(rng, busy=not quiet)
        for n in sorted(c.nodes):
            if c.condition(n, "Ready") == "False":
                if rng.random() < (0.2 if quiet else 0.03):
                    c.set_condition(n, "Ready", "True")
            elif not quiet and rng.random() < 0.001:
                c.set_condition(n, "Ready", "False")
            if not quiet and rng.random() < 0.0005:
                c.set_condition(n, "KernelDeadlock", "True")
        open_ = [r for r in c.repairs.values() if (r.get("status") or {}).get("phase") not in FINAL]
        if not quiet and rng.random() < 0.01 and len(open_) < 4:
            self.create_by_hand(rng, rng.choice(sorted(c.nodes)))
        for name, r in sorted(c.repairs.items()):
            status = r.get("status") or {}
            notes = r["metadata"].setdefault("annotations", {})
            if status.get("phase") == "Repairing" and C.ANNOTATION_REPAIRED not in notes:
                if rng.random() < 0.1:
                    ok = quiet or rng.random() < 0.9
                    notes[C.ANNOTATION_REPAIRED] = "true" if ok else "false"
                    if ok:
                        self.fix(r["spec"]["nodeName"])
                    c.touch_repair(name)
                    self.log(f"a human marks {name} repaired={notes[C.ANNOTATION_REPAIRED]}")
            elif quiet and status.get("phase") == "Failed" and rng.random() < 0.05:
                self.fix(r["spec"]["nodeName"])
                self.delete(name)

    def create_by_hand(self, rng: random.Random, node: str) -> str:
        name = f"manual-{self.step}"
        while name in self.cluster.repairs:
            name += "x"
        spec = {**self.repair_template(rng), "nodeName": node}
        self.cluster.create_repair({"metadata": {"name": name}, "spec": spec})
        self.log(f"NodeRepair {name} created by hand for {node}")
        return name

    def fix(self, node: str) -> None:
        self.cluster.set_condition(node, "KernelDeadlock", "False")
        self.cluster.set_condition(node, "Ready", "True")

    @staticmethod
    def repair_template(rng: random.Random) -> dict[str, Any]:
        drain: dict[str, Any] = {
            "taskTimeoutSeconds": rng.choice([20, 60, 300]),
            "onTaskTimeout": rng.choice(["Evict", "Evict", "Fail"]),
            "evictionTimeoutSeconds": rng.choice([120, 600]),
        }
        if rng.random() < 0.3:
            drain["gracePeriodSeconds"] = rng.choice([0, 2])
        return {
            "reason": "Simulated",
            "drain": drain,
            "repair": {"strategy": "Manual", "timeoutSeconds": rng.choice([600, 3600])},
            "verify": {"stableSeconds": rng.choice([0, 10]), "timeoutSeconds": 600},
            "onFailure": rng.choice(["KeepCordoned", "Uncordon"]),
        }

    def policy_spec(self, rng: random.Random) -> dict[str, Any]:
        return {
            "nodeSelector": {"matchLabels": {"pool": "a"}},
            "unhealthyConditions": [
                {"type": "KernelDeadlock", "status": "True", "duration": "0s"},
                {"type": "Ready", "status": "False", "duration": "2m"},
            ],
            "alerts": {"names": ["NodeDiskFailing"], "nodeLabel": "node"},
            "maxUnhealthy": rng.choice(["40%", "60%"]),
            "maxConcurrentRepairs": rng.choice([1, 2]),
            "minAvailable": rng.choice(["50%", "60%", 2]),
            "repairTemplate": {"spec": self.repair_template(rng)},
        }


def shrink(result: Result, budget: int = 40) -> tuple[Result, int]:
    """A shorter reproduction of result's first break: the steps cut to the break,
    then faults removed (halves, quarters, ... single ones) while the same invariant
    still breaks. Returns the smallest failing result and the replays it took."""
    target = result.breaks[0]
    in_steps = target.step < result.steps
    steps = target.step + 1 if in_steps else result.steps
    best = result
    plan = [f for f in result.plan if f.step < steps]
    runs = 0

    # Without a fault the world runs differently: let it break a little later too.
    limit = steps + max(50, steps // 2) if in_steps else steps

    def fails(candidate: list[Fault]) -> Result | None:
        nonlocal runs
        runs += 1
        r = Simulation(result.seed, limit, candidate, settle=not in_steps).run()
        return r if r.breaks and r.breaks[0].invariant == target.invariant else None

    if plan:  # often the world alone breaks it
        r = fails([])
        if r is not None:
            plan, best = [], r
    chunk = max(1, len(plan) // 2)
    while plan and runs < budget:
        removed = False
        for start in range(0, len(plan), chunk):
            if runs >= budget:
                break
            candidate = plan[:start] + plan[start + chunk :]
            r = fails(candidate)
            if r is not None:
                plan, best, removed = candidate, r, True
                break
        if not removed:
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
    if best is result and runs < budget:  # the cut alone
        r = fails(plan)
        best = r if r is not None else best
    return best, runs


def report(original: Result, shrunk: Result | None = None, tail: int = 40) -> str:
    r = shrunk or original
    b = r.breaks[0]
    faults = ",".join(str(f) for f in r.plan if f.step < r.steps)
    lines = [
        f"SIMULATION BREAK: seed {original.seed}",
        b.line(),
    ]
    if shrunk is not None:
        lines.append(
            f"shrunk: {r.faults} faults (from {original.faults}), {r.steps} steps"
            f" (from {original.steps})"
        )
    lines.append(
        f"reproduce: python -m tests.sim --seed {r.seed} --steps {r.steps}"
        + (f" --faults '{faults}'" if faults else " --faults ''")
    )
    lines.append(f"trace (last {tail} lines):")
    lines.extend("  " + t for t in r.trace[-tail:])
    return "\n".join(lines)
