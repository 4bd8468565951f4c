"""The instance contract: what a FaaS runtime may rely on (docs/runtime-integration.md).

  contract  pure: which pods are instances, their kind (sync / async), their
            in-flight task count, the serving gate, blocking PDBs
            (no kopf, no Kubernetes client, no aiohttp)
  serving   the kopf handlers that keep the serving gate open on pods whose
            node is not under repair

Task sources that read in-flight counts elsewhere (a metric, an HTTP endpoint)
belong in a subpackage here, beside the annotation contract of `contract`.
May import pitstop.models, the shared helpers at the top of pitstop/ and, for
`serving` only, pitstop.cluster.
"""
