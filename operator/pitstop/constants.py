"""Every name pitstop shares with the cluster: API group, label, annotation,
taint, condition and Event reason keys. One place, so code, tests and docs agree."""

from typing import Final

GROUP: Final = "pitstop.dev"
"""API group of the pitstop resources."""
VERSION: Final = "v1alpha1"
"""The only served and stored version."""
API_VERSION: Final = f"{GROUP}/{VERSION}"

NODEREPAIR_PLURAL: Final = "noderepairs"
REPAIRPOLICY_PLURAL: Final = "repairpolicies"

OPERATOR_NAMESPACE: Final = "pitstop-system"
"""Namespace of the operator's Deployment, repair Jobs and referenced Secrets."""
SERVICE_ACCOUNT: Final = "pitstop"
"""ServiceAccount the operator runs as (RBAC in manifests/rbac)."""

# --- labels and annotations (the instance contract and node markers) ---
LABEL_INSTANCE_TYPE: Final = f"{GROUP}/instance-type"
"""Pod label set by the FaaS platform: `sync` or `async`."""
LABEL_POLICY: Final = f"{GROUP}/policy"
"""NodeRepair label naming the RepairPolicy that created it."""
ANNOTATION_DRAINING: Final = f"{GROUP}/draining"
"""Pod annotation (RFC 3339 time): the runtime stops taking new tasks."""
ANNOTATION_INFLIGHT: Final = f"{GROUP}/inflight-tasks"
"""Pod annotation kept by the runtime: tasks in flight, a non-negative integer."""
ANNOTATION_REPAIR: Final = f"{GROUP}/repair"
"""Node annotation naming the active NodeRepair: the per-node lock."""
ANNOTATION_REPAIRED: Final = f"{GROUP}/repaired"
"""NodeRepair annotation set by a human for Manual repairs: "true" or "false"."""
CONDITION_SERVING: Final = f"{GROUP}/serving"
"""Pod readiness gate / condition type that keeps a sync instance in routing."""
TAINT_MAINTENANCE: Final = f"{GROUP}/maintenance"
"""NoSchedule taint on a node under repair."""

INSTANCE_SYNC: Final = "sync"
INSTANCE_ASYNC: Final = "async"

# --- kopf bookkeeping (persistence of handler progress on pitstop's own objects) ---
FINALIZER: Final = f"{GROUP}/finalizer"
"""Finalizer kopf puts on NodeRepairs so a deleted repair still uncordons its node."""
KOPF_ANNOTATIONS_PREFIX: Final = GROUP
"""Prefix of the annotations where kopf keeps handler progress and the last-handled spec."""

# --- the operator process (kept in step with manifests/operator/deployment.yaml) ---
HEALTH_PORT: Final = 8080
"""Default port of kopf's liveness endpoint (container port `health`)."""
HEALTH_PATH: Final = "/healthz"
"""Path of the liveness/readiness endpoint."""
METRICS_PORT: Final = 9090
"""Default port of the Prometheus `/metrics` endpoint (container port `metrics`)."""
