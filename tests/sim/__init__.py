"""The deterministic simulation tier: a model cluster, the real repair and pool code
against it at the seam pitstop.cluster.kube offers, faults at random steps, and the
invariants judged after every step (docs/simulation.md)."""
