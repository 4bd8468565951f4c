"""pitstop's benchmarks, each measuring pitstop against its peers on a local
control plane of its own (see bench/README.md).

cluster   the control plane and the operator, started as processes
watches   what the benchmark's own watch streams saw, with arrival times
workload  nodes, instance pods, PDBs, NodeRepairs and RepairPolicies
peers     the tools pitstop is measured against (`kubectl drain`, kubectl-qps)
report    percentiles, medians and the printed tables
main      the shared entry point: options, JSON, table
drain     drain speed and latency series (`python -m bench drain`)
rounds    the drain rounds, per PDB layout, and the budget's lower bound
latency   the latency series of the drain benchmark
policy    pitstop at scale (`python -m bench policy`)
apimetrics  the operator's API requests by verb, from kube-apiserver's metrics
"""
