"""Node pools of RepairPolicies: which nodes are unhealthy, and which repairs may start.

  arithmetic  pure pool arithmetic: membership, faults and when they are due,
              maxUnhealthy / minAvailable / maxConcurrentRepairs, admission
              (no kopf, no Kubernetes client, no aiohttp)
  ledger      what a policy keeps in its status for the next leader: firing alerts,
              the repairs it made, the faults whose repair was deleted (pure too)
  daemon      the kopf daemon of each RepairPolicy, and the admission gate every
              NodeRepair passes (Admission, in the run's Pools)
  alerts      the Alertmanager receiver (aiohttp), feeding the policy daemons

May import pitstop.models, the shared helpers at the top of pitstop/ and
pitstop.cluster; never pitstop.repair (the repair daemon imports this package).
"""
