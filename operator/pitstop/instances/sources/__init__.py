"""Task sources: where an instance's in-flight count is read and how it is told to
drain, as an InstanceProfile describes its runtime (docs/runtime-integration.md).

Pure (no kopf, no Kubernetes client, no aiohttp), one concern each:

  profiles    a stored profile parsed (or why it cannot be used), its source and
              signal types, the words its status shows for them
  matching    which profile describes a pod (the oldest wins) and the pod's kind
  addressing  ports, URLs, the requests that poll a source and send a signal
  answers     what an answer means: Prometheus text, plain integer, JSON field
  errors      SourceError: no answer, or no count in it (counted busy)
  trust       the trust rule (a count counts only if read after the drain signal
              took effect) and the progress of httpPost drain signals
  census      each profile's status: the instances it describes, its overlaps
  durations   Go durations, as runtimes read them from their environment
  deadlines   the task deadline a pod's runtime declares (taskDeadline)
  watchdog    the grace period the OpenFaaS of-watchdog needs on SIGTERM

And the two with I/O:

  poller      the HTTP side: polls the sources of nodes being drained and sends
              httpPost drain signals (aiohttp, one shared session)
  daemon      the kopf side: the profile and namespace indexes, the poller's
              lifetime, the writer of the profiles' status
"""
