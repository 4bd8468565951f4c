"""Everything that knows how the Kubernetes API is reached.

  kube        the asyncio JSON client (aiohttp) and every call the operator makes
  indexes     the kopf indexes (pods by node, endpoints by pod, ...) and wake-ups
  kubeconfig  where the credentials come from (kubeconfig, in-cluster, env)
  nodes       the node markers (lock, cordon, taint): pure patch builders, which
              is why the pure repair steps may import this one module

May import pitstop.models and the shared helpers at the top of pitstop/; never
pitstop.repair, pitstop.pool, pitstop.instances or pitstop.cli.
"""
