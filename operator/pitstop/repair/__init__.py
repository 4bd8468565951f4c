"""The NodeRepair state machine and the daemon that drives it.

Pure steps (no kopf, no Kubernetes client, no aiohttp; they may import
pitstop.models, the shared helpers at the top of pitstop/, pitstop.cluster.nodes
and pitstop.instances.contract):
  flow       the vocabulary both halves share: Observation, Decision, Event, phases
  drain      Pending → Cordoning → Deregistering → WaitingForTasks → Evicting
  recovery   Repairing → Verifying → Uncordoning → Succeeded / Failed

Effects (may import kopf and pitstop.cluster):
  hooks      the repair hooks that reach outside: the Job and the webhook call
  daemon     the kopf daemon of one NodeRepair: observe, decide (drain.decide), act
"""
