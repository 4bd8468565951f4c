"""Everything one operator run keeps in memory across its handlers, made new for
each run by the first startup handler and reached through kopf's memo.

kopf hands every handler a `memo`: for startup and cleanup the operator's own, for
an object a shallow copy of it made when the object is first seen (after the
startup handlers ran), so the objects put in it here are shared by every handler of
the run, and by no other run. Nothing of it lives in module globals: two runs in
one process (the simulation restarts the operator in-process) or two tests never
see each other's waiters, admissions, alerts, counts or locks.

Each piece is owned, typed and read by the module that uses it (its accessor takes
any handler's memo):

- `cluster.indexes.wakeups(memo)` (`Wakeups`): the repairs waiting on their
  nodes' watch events, the repairs waiting for room in their pool, the policy
  daemons, the InstanceProfile status writer, and the nodes this run holds;
- `pool.daemon.pools(memo)` (`Pools`): the admission gate and its admitted
  repairs, the node views the pool logic caches, the inbox of received alerts;
- `metrics.repair_phases(memo)` (`RepairPhases`): each repair's phase and its
  deadline, which pitstop_repairs and pitstop_repairs_past_deadline count;
- `instances.serving.gate_states(memo)` (`GateStates`): each gated pod's gate
  state, which pitstop_gated_pods counts;
- `remediation.daemon.remediations(memo)` (`Remediations`): the remediation
  daemons' wake-ups and their per-object pass locks.

The Prometheus registry stays process-wide (one `/metrics` per process): this
run's startup points the gauges read when scraped at its own pieces, so `/metrics`
shows the run in progress (as the task poller's startup does for its own gauge).

Per-object state stays in that object's memo (a repair's `PassGuard`,
pitstop.repair.state), the task poller in the run's (pitstop.instances.sources.daemon).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import kopf

from pitstop import metrics
from pitstop.cluster import indexes
from pitstop.instances import serving
from pitstop.pool import daemon as pool_daemon
from pitstop.remediation import daemon as remediation_daemon


@dataclass(frozen=True)
class Registry:
    """The run's shared state, one field per owner module (see the module's doc)."""

    wakeups: indexes.Wakeups
    pools: pool_daemon.Pools
    phases: metrics.RepairPhases
    gates: serving.GateStates
    remediations: remediation_daemon.Remediations

    @classmethod
    def fresh(cls) -> Registry:
        wakeups = indexes.Wakeups()
        return cls(
            wakeups,
            pool_daemon.Pools.waking(wakeups),
            metrics.RepairPhases(),
            serving.GateStates(),
            remediation_daemon.Remediations(),
        )

    def install(self, memo: MutableMapping[str, Any]) -> None:
        """Puts each piece where its owner's accessor reads it, and points the
        gauges read when scraped at this run's."""
        memo[indexes.MEMO_WAKEUPS] = self.wakeups
        memo[pool_daemon.MEMO_POOLS] = self.pools
        memo[metrics.MEMO_REPAIR_PHASES] = self.phases
        memo[serving.MEMO_GATE_STATES] = self.gates
        memo[remediation_daemon.MEMO_REMEDIATIONS] = self.remediations
        metrics.PAST_DEADLINE.read = self.phases.past_deadline
        metrics.GATED_PODS.read = self.gates.counts

    @classmethod
    def of(cls, memo: Mapping[str, Any]) -> Registry:
        """The registry a memo holds (an object's memo holds its run's)."""
        return cls(
            indexes.wakeups(memo),
            pool_daemon.pools(memo),
            metrics.repair_phases(memo),
            serving.gate_states(memo),
            remediation_daemon.remediations(memo),
        )


@kopf.on.startup()
def fresh_registry(memo: kopf.Memo, **_: Any) -> None:
    """Registered before every other startup handler (pitstop.handlers imports this
    module first), which kopf runs in that order: the task poller's startup handler
    already wakes repairs through it."""
    Registry.fresh().install(memo)
