"""Task sources: where an instance's in-flight count is read and how it is told to
drain, as an InstanceProfile describes its runtime (docs/runtime-integration.md).

  rules    pure: profile precedence and conflicts, ports and URLs, what an answer
           means (Prometheus text, plain integer, JSON field), the trust rule
           (no kopf, no Kubernetes client, no aiohttp)
  poller   the HTTP side: polls the sources of nodes being drained and sends
           httpPost drain signals (aiohttp, one shared session)
  daemon   the kopf side: the profile and namespace indexes, the poller's
           lifetime, the writer of the profiles' status
"""
