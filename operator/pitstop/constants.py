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
INSTANCEPROFILE_PLURAL: Final = "instanceprofiles"

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
ALERTS_PORT: Final = 9095
"""Default port of the Alertmanager receiver, POST /alerts (container port `alerts`)."""
ALERTS_SECRET: Final = "pitstop-alerts/token"
"""NAME/KEY of the Secret in the operator's namespace with the receiver's bearer token."""
ALERTS_RATE: Final = 20.0
"""Default requests per second each client (remote address) of the receiver may send."""
ALERTS_BURST: Final = 200
"""Default requests each client of the receiver may send at once (Alertmanager sends
one per alert group and does not retry a 429: room for a correlated failure's groups)."""

# --- node markers remembered across restarts (invariant 6) ---
ANNOTATION_WAS_UNSCHEDULABLE: Final = f"{GROUP}/was-unschedulable"
"""Node annotation written with the lock: "true" if the node was cordoned before
the repair, so release restores exactly that (set atomically with the cordon)."""

# --- NodeRepair condition types (status.conditions) ---
COND_CORDONED: Final = "Cordoned"
"""The node is unschedulable and tainted, and locked for this repair."""
COND_DEREGISTERED: Final = "Deregistered"
"""No sync instance of the node is a ready endpoint any more."""
COND_TASKS_DRAINED: Final = "TasksDrained"
"""Every instance reports 0 tasks in flight (or is gone)."""
COND_INSTANCES_OFFLINE: Final = "InstancesOffline"
"""Every instance has been evicted and is gone."""
COND_REPAIR_ALLOWED: Final = "RepairAllowed"
"""The node may be touched: the moment the repair hook may start."""
COND_REPAIRED: Final = "Repaired"
COND_VERIFIED: Final = "Verified"
COND_UNCORDONED: Final = "Uncordoned"

# --- condition reasons and Event reasons (CamelCase, naming the step or cause) ---
REASON_NODE_BUSY: Final = "NodeBusy"
"""Another NodeRepair holds the node's lock; this one waits Pending."""
REASON_NODE_NOT_FOUND: Final = "NodeNotFound"
REASON_LOCK_LOST: Final = "LockLost"
"""The node's lock annotation was taken away from this repair."""
REASON_CORDONED: Final = "NodeCordoned"
REASON_DEREGISTERING: Final = "Deregistering"
REASON_DEREGISTERED: Final = "InstancesDeregistered"
REASON_DEREGISTRATION_TIMEOUT: Final = "DeregistrationTimeout"
"""Gated sync instances stayed ready endpoints for taskTimeoutSeconds (e.g. a Service
with publishNotReadyAddresses): they leave routing only when evicted."""
REASON_NO_SERVING_GATE: Final = "NoServingGate"
"""A sync instance without the serving gate cannot leave routing before eviction."""
REASON_WAITING_FOR_TASKS: Final = "WaitingForTasks"
REASON_TASKS_DRAINED: Final = "TasksDrained"
"""No instance left on the node has tasks in flight."""
REASON_DRAINING_IN_TURN: Final = "DrainingInTurn"
"""TasksDrained=False while the repair evicts: the instances out of service are idle,
those their PodDisruptionBudgets keep in service drain, and are waited for, in turn."""
REASON_INVALID_TASK_COUNT: Final = "InvalidTaskCount"
REASON_TASK_TIMEOUT: Final = "TaskTimeout"
REASON_EVICTING: Final = "Evicting"
REASON_EVICTION_BLOCKED: Final = "EvictionBlocked"
"""Evictions wait for a PodDisruptionBudget that allows none with every pod it covers
healthy, or that has paced them for half of evictionTimeoutSeconds (a Warning); also an
eviction refused for another reason. Refused evictions are retried with backoff."""
REASON_EVICTIONS_PACED: Final = "EvictionsPaced"
"""Evictions wait for their PodDisruptionBudget to allow the next, as it was made to
(a Normal Event): a pod of its own is on its way back."""
REASON_EVICTION_TIMEOUT: Final = "EvictionTimeout"
REASON_INSTANCES_OFFLINE: Final = "InstancesOffline"
REASON_REPAIR_ALLOWED: Final = "RepairAllowed"
REASON_DRY_RUN: Final = "DryRun"
REASON_ABORTED: Final = "Aborted"
"""The NodeRepair was deleted; what it changed was undone."""
REASON_NOT_STARTED: Final = "NotStarted"
REASON_REPAIR_STARTED: Final = "RepairStarted"
REASON_REPAIRED: Final = "Repaired"
REASON_REPAIR_ATTEMPT_FAILED: Final = "RepairAttemptFailed"
"""One attempt failed (hook failed, timed out, or the node did not verify); retried."""
REASON_REPAIR_FAILED: Final = "RepairFailed"
"""No attempt left: the repair failed."""
REASON_VERIFIED: Final = "Verified"
REASON_STABILIZING: Final = "Stabilizing"
"""The node looks healthy; it must stay so for verify.stableSeconds."""
REASON_NODE_UNHEALTHY: Final = "NodeUnhealthy"
REASON_VERIFY_TIMEOUT: Final = "VerifyTimeout"
REASON_CANARY_RUNNING: Final = "CanaryRunning"
"""Verified=False: the node's conditions held; verify.canary's pod runs on it (an Event
CanaryStarted when it is created)."""
REASON_CANARY_STARTED: Final = "CanaryStarted"
REASON_CANARY_PASSED: Final = "CanaryPassed"
"""The canary pod reached Succeeded on the node: it may be returned."""
REASON_CANARY_FAILED: Final = "CanaryFailed"
"""The canary pod failed, timed out or could not be created: a failed verification."""
REASON_CANARY_NOT_ALLOWED: Final = "CanaryNotAllowed"
"""The canary pod asks for what the platform admin has not granted (as repair Jobs)."""
LABEL_CANARY: Final = f"{GROUP}/canary"
"""Label ("true") of a verify.canary pod (to find it; it is an ordinary pod to the rest
of pitstop: a label must not let a function's pod escape a drain)."""
REASON_UNCORDONED: Final = "Uncordoned"
REASON_SUCCEEDED: Final = "RepairSucceeded"
REASON_ORPHANED_LOCK_RELEASED: Final = "OrphanedLockReleased"
"""Warning Event on a node: its lock named a NodeRepair that no longer exists (deleted
without its finalizer); pitstop gave the node back as that repair's deletion would have."""
REASON_WAITING_FOR_CAPACITY: Final = "WaitingForCapacity"
"""The pool limits (maxConcurrentRepairs, minAvailable, creation order) hold it Pending."""
REASON_WAITING_FOR_ROOM: Final = "WaitingForRoom"
"""Warning Event and Pending reason: the node's instances fit on no other schedulable
node of its pool (spec.requireRoom; pitstop.pool.room), so evicting them would leave
them Pending."""

# --- task sources and InstanceProfiles ---
COND_PROFILE_READY: Final = "Ready"
"""InstanceProfile condition: the profile is valid and applies to the pods it selects."""
COND_PROFILE_CONFLICT: Final = "Conflict"
"""InstanceProfile condition: another profile matches some of the same pods."""
REASON_PROFILE_VALID: Final = "Valid"
REASON_PROFILE_INVALID: Final = "InvalidSpec"
"""The stored profile fails the model's checks (e.g. a regular expression): it describes no pod."""
REASON_OVERLAPPING_PROFILES: Final = "OverlappingProfiles"
"""Two profiles match one pod: the oldest describes it (Condition reason)."""
REASON_NO_OVERLAP: Final = "NoOverlap"
REASON_CONFLICTING_PROFILES: Final = "ConflictingInstanceProfiles"
"""Warning Event on a repair: an instance of its node is matched by several profiles."""
REASON_TASK_SOURCE_UNREACHABLE: Final = "TaskSourceUnreachable"
"""Warning Event: an instance's task source gave no count (no answer, an HTTP error,
a wrong metric name, an answer that is no count); it counts as busy."""
REASON_DRAIN_SIGNAL_UNACKNOWLEDGED: Final = "DrainSignalUnacknowledged"
"""Warning Event: an httpPost drain signal was not acknowledged after several attempts;
it is still retried, and the instance's count is used as with drainSignal none."""
REASON_GRACE_PERIOD_TOO_SHORT: Final = "GracePeriodTooShort"
"""`pitstop plan`: an of-watchdog pod's terminationGracePeriodSeconds is below what the
watchdog needs on SIGTERM (healthcheck_interval + write_timeout)."""

# --- trust: what the platform admin allows a repair to use (docs/security.md) ---
REPAIR_SERVICE_ACCOUNT: Final = "pitstop-repair"
"""ServiceAccount of repair Jobs that name none: shipped in manifests/rbac with no rights."""
LABEL_REPAIR_ALLOWED: Final = f"{GROUP}/repair-allowed"
"""ServiceAccount label ("true") in the operator's namespace: repair Jobs may run as it."""
LABEL_REPAIR_HOST_ACCESS: Final = f"{GROUP}/repair-host-access"
"""ServiceAccount label ("true"): Jobs running as it may be privileged, add
capabilities, mount hostPath volumes, use host ports and the host's network, PID
or IPC namespaces."""
ANNOTATION_REPAIR_SECRETS: Final = f"{GROUP}/repair-secrets"
"""ServiceAccount annotation: the Secrets (comma-separated names) Jobs running as it
may mount or read into their environment."""
LABEL_WEBHOOK_SECRET: Final = f"{GROUP}/webhook-secret"
"""Secret label ("true") in the operator's namespace: a webhook's secretRef may name it."""
ANNOTATION_WEBHOOK_URLS: Final = f"{GROUP}/webhook-url-prefixes"
"""Secret annotation: the URL prefixes (comma-separated) its token may be sent to."""
REASON_REPAIR_JOB_NOT_ALLOWED: Final = "RepairJobNotAllowed"
"""The Job template asks for what the platform admin has not allowed: nothing is run."""
REASON_WEBHOOK_NOT_ALLOWED: Final = "WebhookNotAllowed"
"""The webhook names a Secret not marked for webhooks (or a URL its marks exclude):
nothing is sent."""

# --- summary conditions (kstatus; pitstop.kstatus) ---
COND_READY: Final = "Ready"
"""Summary condition: the object is done (a repair that succeeded) or working as meant."""
COND_RECONCILING: Final = "Reconciling"
"""Summary condition (kstatus, abnormal-true): the operator is still moving the object."""
COND_STALLED: Final = "Stalled"
"""Summary condition (kstatus, abnormal-true): it cannot progress without a person."""
REASON_POOL_CONFLICT: Final = "PoolConflict"
"""Nodes selected by several RepairPolicies: neither repairs them automatically."""
REASON_MAX_UNHEALTHY: Final = "MaxUnhealthyExceeded"
"""The storm guard holds: more unhealthy nodes than maxUnhealthy."""
REASON_WATCHING: Final = "Watching"
"""Summary reason of a RepairPolicy that can repair its pool."""

# --- controls users ask for (docs/policies.md) ---
LABEL_EXCLUDE_FROM_REPAIR: Final = f"{GROUP}/exclude-from-repair"
"""Node label ("true"): policies make no automatic repair for the node (manual ones run)."""
REASON_NODE_EXCLUDED: Final = "NodeExcluded"
"""A faulty node carries LABEL_EXCLUDE_FROM_REPAIR: no automatic repair (status, Event)."""
REASON_OUTSIDE_WINDOW: Final = "OutsideMaintenanceWindow"
"""Automatic repairs wait for the policy's next maintenance window (status, Event,
and the Pending message of a policy's repair not yet admitted)."""
REASON_INVALID_WINDOW: Final = "InvalidMaintenanceWindow"
"""A maintenance window names a time zone the zone database does not know: the
policy starts no automatic repair (it cannot tell when it may)."""
LABEL_NOTIFICATION_SECRET: Final = f"{GROUP}/notification-secret"
"""Secret label ("true") in the operator's namespace: a policy's notifications may
post to the URL it holds."""
ANNOTATION_NOTIFICATION_URLS: Final = f"{GROUP}/notification-url-prefixes"
"""Secret annotation: the URL prefixes (comma-separated) its URL must start with."""
REASON_NOTIFICATION_FAILED: Final = "NotificationFailed"
"""Warning Event on a policy: a notification was not delivered (or not allowed)."""
# --- the repair ladder (repair.steps) and its Replace and External steps ---
REASON_STEP_STARTED: Final = "RepairStepStarted"
"""Event: a step of the repair ladder begins (its first attempt)."""
REASON_STEP_FAILED: Final = "RepairStepFailed"
"""Event: a step used up its attempts (failed or timed out); the ladder moves on."""
REASON_STEP_SKIPPED: Final = "RepairStepSkipped"
"""Event: a step cannot run on this node (a Replace without a Machine, an External
step whose kind is not installed): the ladder moves on without retrying it."""
REASON_NODE_REPLACED: Final = "NodeReplaced"
"""Replace: the node's Machine was deleted and the pool has a new Ready node."""
REASON_REPLACE_NOT_ALLOWED: Final = "ReplaceNotAllowed"
"""Replace: the Machine lacks the admin's grant (label pitstop.dev/replace-allowed)
or pitstop holds no right on it (the aggregated ClusterRole is not bound there)."""
REASON_EXTERNAL_NOT_ALLOWED: Final = "ExternalRemediationNotAllowed"
"""External: pitstop holds no right to create the remediator's CR there (the admin
aggregates that right into pitstop-remediators and binds it)."""
LABEL_REPLACE_ALLOWED: Final = f"{GROUP}/replace-allowed"
"""Machine label ("true"), set by the admin (in a MachineDeployment's template): a
repair's Replace step may delete it."""
ANNOTATION_ATTEMPT: Final = f"{GROUP}/attempt"
"""On an External step's CR: the ladder step and attempt that created it ("2/1")."""
CAPI_GROUP: Final = "cluster.x-k8s.io"
CAPI_VERSION: Final = "v1beta1"
"""The Cluster API version pitstop reads Machines in (served by CAPI v1.x)."""
ANNOTATION_CAPI_MACHINE: Final = "cluster.x-k8s.io/machine"
"""Node annotation set by Cluster API: the name of the node's Machine."""
ANNOTATION_CAPI_NAMESPACE: Final = "cluster.x-k8s.io/cluster-namespace"
"""Node annotation set by Cluster API: the namespace of its Machine and Cluster."""
LABEL_CAPI_SET: Final = "cluster.x-k8s.io/set-name"
"""Machine label: its MachineSet (the pool a replacement Machine joins)."""
LABEL_CAPI_CLUSTER: Final = "cluster.x-k8s.io/cluster-name"
"""Machine label: its Cluster (the pool where a Machine has no MachineSet)."""
ENV_NODE_NAME: Final = "PITSTOP_NODE_NAME"
"""Env of every container of a repair Job: the node under repair (also NODE_NAME)."""
LABEL_REMEDIATOR_ALLOWED: Final = f"{GROUP}/remediator-allowed"
"""Remediation template label ("true"), set by the admin: a repair's External step may
create remediation CRs from it."""
# --- pitstop as an external remediator (NodeHealthCheck, MachineHealthCheck) ---
REMEDIATION_PLURAL: Final = "noderepairremediations"
"""Namespaced: what a health checker creates for an unhealthy node (or Machine)."""
REMEDIATION_TEMPLATE_PLURAL: Final = "noderepairremediationtemplates"
"""Namespaced: the template a NodeHealthCheck or MachineHealthCheck references."""
LABEL_REMEDIATION_ALLOWED: Final = f"{GROUP}/remediation-allowed"
"""Namespace label set by the platform admin: "true" lets the remediation objects of
that namespace repair nodes (a namespace without it gets none)."""
LABEL_REMEDIATION_UID: Final = f"{GROUP}/remediation-uid"
"""NodeRepair label: the uid of the remediation object that made it and waits on it."""
ANNOTATION_REMEDIATION: Final = f"{GROUP}/remediation"
"""NodeRepair annotation: `<namespace>/<name>` of the remediation object that made it."""
ANNOTATION_NHC_NODE_NAME: Final = "remediation.medik8s.io/node-name"
"""The medik8s convention for the node a remediation object is for: set by
NodeHealthCheck on pitstop's (when the name is not the node's), and by pitstop on an
External step's CR (whose name is the node's too)."""
ANNOTATION_NHC_TIMED_OUT: Final = "remediation.medik8s.io/nhc-timed-out"
"""Set by NodeHealthCheck when it escalates past this remediator: stop."""
COND_PROCESSING: Final = "Processing"
"""Remediation condition NodeHealthCheck reads: True while the repair runs."""
COND_SUCCEEDED: Final = "Succeeded"
"""Remediation condition NodeHealthCheck reads: True repaired, False failed, Unknown
while it runs (False makes NHC escalate to its next remediator)."""
COND_PERMANENT_NODE_DELETION: Final = "PermanentNodeDeletionExpected"
"""Remediation condition NodeHealthCheck reads: always False, pitstop keeps the node."""
REASON_NAMESPACE_NOT_ALLOWED: Final = "NamespaceNotAllowed"
"""The remediation's namespace lacks the admin's pitstop.dev/remediation-allowed label."""
REASON_NO_NODE: Final = "NoNode"
"""The remediation names no node pitstop can find (its Machine has no nodeRef)."""
REASON_NODE_REPAIR_CREATED: Final = "NodeRepairCreated"
REASON_NODE_REPAIR_DELETED: Final = "NodeRepairDeleted"
"""Someone deleted the remediation's NodeRepair: it is not made again."""
REASON_TIMED_OUT: Final = "TimedOut"
"""NodeHealthCheck escalated past pitstop (nhc-timed-out): the repair was stopped."""
REASON_NODE_KEPT: Final = "NodeKept"
"""PermanentNodeDeletionExpected=False: pitstop repairs the node, never deletes it."""
