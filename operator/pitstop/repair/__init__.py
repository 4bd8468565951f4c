"""The NodeRepair state machine and the daemon that drives it.

Pure steps (no kopf, no Kubernetes client, no aiohttp; they may import
pitstop.models, the shared helpers at the top of pitstop/, pitstop.cluster.nodes
and pitstop.instances.contract):
  machine    the entry: decide(), what every phase needs (admission, lock, cordon),
             and which half goes on
  flow       the vocabulary both halves share: Observation, Decision, Event, phases
  drain      Pending → Cordoning → Deregistering → WaitingForTasks → Evicting
  recovery   Repairing → Verifying → Uncordoning → Succeeded / Failed

Effects (may import kopf and pitstop.cluster), one module per step of a pass:
  daemon     the kopf daemon and deletion handler of a NodeRepair; Driver.step is
             one pass: observe, decide (machine.decide), act, report
  state      RepairState: all the daemon remembers between passes, each field
             documented (who writes it; nothing survives a restart), and PassGuard
  observe    the node's instances from the indexes; what the poller watches
  act_node   Cordoning / Uncordoning: the lock, the cordon, giving the node back
  act_pods   Deregistering / WaitingForTasks / Evicting: drain signal, gate, evictions
  orphans    the sweep of orphaned locks (a repair deleted without its finalizer)
  act_hooks  Repairing: the Job and the webhook of the current attempt
  hooks      the repair hooks' calls themselves (Job bodies, the webhook request)
  report     status writes, Events, the repair metrics
"""
