"""NodeRepair (pitstop.dev/v1alpha1, cluster-scoped): the repair of one node."""

import base64
from datetime import datetime
from enum import StrEnum
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from pitstop import constants
from pitstop.models.common import (
    CONDITIONS_LIST,
    DNS_SUBDOMAIN_PATTERN,
    CamelModel,
    Condition,
    ConditionStatus,
    ConditionType,
    SecretKeyRef,
    cel,
    validations,
)


class OnTaskTimeout(StrEnum):
    """What to do when in-flight tasks outlive drain.taskTimeoutSeconds."""

    EVICT = "Evict"
    FAIL = "Fail"


class RepairStrategy(StrEnum):
    """How the node is repaired once RepairAllowed=True."""

    MANUAL = "Manual"
    JOB = "Job"
    WEBHOOK = "Webhook"


class OnFailure(StrEnum):
    """What happens to the node when the repair fails."""

    KEEP_CORDONED = "KeepCordoned"
    UNCORDON = "Uncordon"


class Phase(StrEnum):
    """The step a NodeRepair is at."""

    PENDING = "Pending"
    CORDONING = "Cordoning"
    DEREGISTERING = "Deregistering"
    WAITING_FOR_TASKS = "WaitingForTasks"
    EVICTING = "Evicting"
    REPAIRING = "Repairing"
    VERIFYING = "Verifying"
    UNCORDONING = "Uncordoning"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ABORTED = "Aborted"


FINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED})
"""Phases a repair never leaves."""


# --- spec ---


class DrainSpec(CamelModel):
    """How the node's instances are taken offline."""

    task_timeout_seconds: int = Field(1800, ge=1)
    """How long to wait for in-flight tasks to finish."""
    on_task_timeout: OnTaskTimeout = OnTaskTimeout.EVICT
    """Evict the still-busy instances, or fail the repair, when the task timeout passes."""
    eviction_timeout_seconds: int = Field(600, ge=1)
    """How long evictions may stay blocked (by PodDisruptionBudgets) before the repair fails."""
    grace_period_seconds: int | None = Field(None, ge=0)
    """Overrides the pods' termination grace period for evictions; unset keeps each pod's own."""


OPERATOR_SERVICE_ACCOUNT = constants.SERVICE_ACCOUNT
"""The operator's own ServiceAccount (manifests/rbac): never a repair Job's."""
_OWN_SA_MESSAGE = (
    "a repair Job never runs as the operator's own ServiceAccount (pitstop): leave it unset"
    " (pitstop-repair) or name one the platform admin allowed (docs/security.md)"
)

_NOT_THE_OPERATOR = cel(f"self != '{OPERATOR_SERVICE_ACCOUNT}'", _OWN_SA_MESSAGE)


class _Open(CamelModel):
    """A Kubernetes object of which pitstop's schema names only the fields its rules
    read; every other field is kept as given (x-kubernetes-preserve-unknown-fields)."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class JobPodSpec(_Open):
    """A core/v1 PodSpec. The ServiceAccount is checked here (the operator's own is
    refused at admission); what the platform admin allows (other ServiceAccounts,
    privileged and host access, Secrets) is checked by the operator before the Job
    is created."""

    service_account_name: str | None = Field(
        None,
        max_length=253,
        json_schema_extra=validations(
            cel(f"self != '{OPERATOR_SERVICE_ACCOUNT}'", _OWN_SA_MESSAGE)
        ),
    )
    """The pod's ServiceAccount in the operator's namespace; unset: pitstop-repair."""
    service_account: str | None = Field(
        None,
        max_length=253,
        json_schema_extra=validations(
            cel(f"self != '{OPERATOR_SERVICE_ACCOUNT}'", _OWN_SA_MESSAGE)
        ),
    )
    """Deprecated alias of serviceAccountName."""

    @field_validator("service_account_name", "service_account")
    @classmethod
    def _not_the_operator(cls, name: str | None) -> str | None:
        if name == OPERATOR_SERVICE_ACCOUNT:
            raise ValueError(_OWN_SA_MESSAGE)
        return name


class JobPodTemplate(_Open):
    """A core/v1 PodTemplateSpec."""

    spec: JobPodSpec = Field(default_factory=JobPodSpec)
    """The pod of the repair Job."""


class JobSpec(_Open):
    """A batch/v1 JobSpec."""

    template: JobPodTemplate = Field(default_factory=JobPodTemplate)
    """The pod the Job runs."""


class JobTemplate(CamelModel):
    """A batch/v1 JobTemplateSpec (metadata and spec). The Job runs in the operator's
    namespace as the ServiceAccount pitstop-repair unless the template names another
    the platform admin allowed (docs/security.md)."""

    metadata: dict[str, Any] | None = None
    """Labels and annotations for the Job."""
    spec: JobSpec
    """A batch/v1 JobSpec."""


class JobRepair(CamelModel):
    """Repair by a Job run in the operator's namespace."""

    template: JobTemplate
    """The Job to run; it succeeds when the node is repaired."""


class WebhookRepair(CamelModel):
    """Repair by calling an external service."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.url.lowerAscii().startsWith('https://')"
                " || (has(self.allowInsecureHTTP) && self.allowInsecureHTTP)",
                "an http:// URL sends the call (and its token) in the clear:"
                " use https://, or set allowInsecureHTTP: true",
                field_path=".url",
            ),
        )
    )

    url: str = Field(
        min_length=1,
        max_length=2048,
        json_schema_extra=validations(
            cel(
                "isURL(self) && url(self).getScheme() in ['http', 'https']"
                " && url(self).getHostname() != ''",
                "must be an http:// or https:// URL",
            )
        ),
    )
    """http(s) URL of the repair service; http:// only with allowInsecureHTTP."""
    allow_insecure_http: bool = Field(False, alias="allowInsecureHTTP")
    """Allow an http:// URL: the call, and the token of secretRef, travel unencrypted."""
    ca_bundle: str | None = Field(None, max_length=65536, json_schema_extra={"format": "byte"})
    """Base64 of the PEM certificates that verify the service's TLS certificate, in
    place of the system's roots. The certificate is always verified."""
    timeout_seconds: int = Field(30, ge=1)
    """Timeout of one call."""
    secret_ref: SecretKeyRef | None = None
    """Credential sent as a Bearer token: a key of a Secret in the operator's namespace
    that the platform admin labelled pitstop.dev/webhook-secret=true."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return url

    @field_validator("ca_bundle")
    @classmethod
    def _pem(cls, bundle: str | None) -> str | None:
        if bundle is None:
            return None
        try:
            pem = base64.b64decode(bundle, validate=True)
        except ValueError as e:
            raise ValueError("caBundle must be base64 (of PEM certificates)") from e
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise ValueError("caBundle must hold PEM certificates (-----BEGIN CERTIFICATE-----)")
        return bundle

    @model_validator(mode="after")
    def _https_unless_allowed(self) -> Self:
        if not self.url.lower().startswith("https://") and not self.allow_insecure_http:
            raise ValueError(
                "an http:// URL sends the call (and its token) in the clear:"
                " use https://, or set allowInsecureHTTP: true"
            )
        return self


class RepairSpec(CamelModel):
    """How the node is repaired."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.strategy) || self.strategy != 'Job' || has(self.job)",
                "job is required when strategy is Job",
                field_path=".job",
                reason="FieldValueRequired",
            ),
            cel(
                "!has(self.strategy) || self.strategy != 'Webhook' || has(self.webhook)",
                "webhook is required when strategy is Webhook",
                field_path=".webhook",
                reason="FieldValueRequired",
            ),
        )
    )

    strategy: RepairStrategy = RepairStrategy.MANUAL
    """Manual (a human annotates pitstop.dev/repaired), Job or Webhook."""
    job: JobRepair | None = None
    """The repair Job; required for strategy Job."""
    webhook: WebhookRepair | None = None
    """The repair service; required for strategy Webhook."""
    timeout_seconds: int = Field(3600, ge=1)
    """How long one repair attempt may take."""
    max_attempts: int = Field(3, ge=1)
    """Attempts (repair, then verify) before the repair fails."""

    @model_validator(mode="after")
    def _strategy_is_configured(self) -> Self:
        if self.strategy is RepairStrategy.JOB and self.job is None:
            raise ValueError("job is required when strategy is Job")
        if self.strategy is RepairStrategy.WEBHOOK and self.webhook is None:
            raise ValueError("webhook is required when strategy is Webhook")
        return self


class ExpectedCondition(CamelModel):
    """A node condition the repaired node must show."""

    type: ConditionType
    """Node condition type, e.g. Ready."""
    status: ConditionStatus
    """Expected status."""


def _ready() -> list[ExpectedCondition]:
    return [ExpectedCondition(type="Ready", status=ConditionStatus.TRUE)]


class VerifySpec(CamelModel):
    """How a repaired node is judged healthy."""

    conditions: list[ExpectedCondition] = Field(
        default_factory=_ready,
        max_length=32,
        json_schema_extra={
            "default": [{"type": "Ready", "status": "True"}],
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    """Node conditions that must all hold, each at most once per type."""
    stable_seconds: int = Field(30, ge=0)
    """How long the conditions must hold without a break."""
    timeout_seconds: int = Field(900, ge=1)
    """How long verification may take before the attempt counts as failed."""


class NodeRepairTemplateSpec(CamelModel):
    """Everything of a NodeRepair spec but the node: what a RepairPolicy stamps out."""

    reason: str | None = Field(None, max_length=1024)
    """Why the node is repaired; free text shown in Events and columns."""
    dry_run: bool = Field(
        False,
        json_schema_extra=validations(
            cel("self == oldSelf", "dryRun is immutable: create a new NodeRepair instead")
        ),
    )
    """Report the plan in status.plan and change nothing; immutable (a repair that
    is already under way cannot turn into a plan, nor a plan into a repair)."""
    drain: DrainSpec = Field(default_factory=DrainSpec, json_schema_extra={"default": {}})
    """How instances are taken offline."""
    repair: RepairSpec = Field(default_factory=RepairSpec, json_schema_extra={"default": {}})
    """How the node is repaired."""
    verify: VerifySpec = Field(default_factory=VerifySpec, json_schema_extra={"default": {}})
    """How the repaired node is judged healthy."""
    on_failure: OnFailure = OnFailure.KEEP_CORDONED
    """After a failed repair, leave the node cordoned or uncordon it."""


class NodeRepairSpec(NodeRepairTemplateSpec):
    """The repair of one node."""

    node_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        json_schema_extra=validations(cel("self == oldSelf", "nodeName is immutable")),
    )
    """The node to repair; immutable."""


# --- status ---


class InstanceCounts(CamelModel):
    """The node's instances (pods `kubectl drain` would evict), by state."""

    total: int = Field(0, ge=0)
    """Instances on the node when the drain began."""
    sync: int = Field(0, ge=0)
    """Request-serving instances."""
    async_: int = Field(0, ge=0, alias="async")
    """Task-processing instances."""
    deregistered: int = Field(0, ge=0)
    """Sync instances confirmed out of routing."""
    inflight_tasks: int = Field(0, ge=0)
    """Tasks still running on the node's instances."""
    remaining: int = Field(0, ge=0)
    """Instances still on the node."""
    no_serving_gate: int = Field(0, ge=0)
    """Sync instances without the pitstop.dev/serving readiness gate (Event NoServingGate)."""
    invalid_task_counts: int = Field(0, ge=0)
    """Instances whose pitstop.dev/inflight-tasks annotation is not a non-negative integer."""
    unreachable: int = Field(0, ge=0)
    """Instances on the node now whose task source (an InstanceProfile's prometheus or
    http) gave no count: no answer, or no count in it (Event TaskSourceUnreachable);
    counted busy. 0 once none is left; pods on their way out are not polled."""


class DryRunPlan(CamelModel):
    """What the repair would do, reported instead of doing it when spec.dryRun is true."""

    sync: list[str] = Field(default_factory=list)
    """Sync instances (namespace/name) that would be deregistered, then evicted."""
    async_: list[str] = Field(default_factory=list, alias="async")
    """Async instances (namespace/name) that would be evicted once their tasks finish."""
    no_serving_gate: list[str] = Field(default_factory=list)
    """Sync instances without the serving gate: they leave routing only when evicted."""
    inflight_tasks: int = Field(0, ge=0)
    """Tasks in flight on the node now."""
    blocking_pdbs: list[str] = Field(default_factory=list, alias="blockingPDBs")
    """PodDisruptionBudgets (namespace/name) that allow no disruption now."""


class RepairStatus(CamelModel):
    """Progress of the repair step."""

    attempts: int = Field(0, ge=0)
    """Repair attempts started."""
    job_name: str | None = None
    """The current attempt's Job (strategy Job), in the operator's namespace."""
    last_error: str | None = None
    """Why the last attempt failed."""
    attempt_start_time: datetime | None = None
    """When the current attempt began: the base of repair.timeoutSeconds."""
    next_attempt_time: datetime | None = None
    """Set after a failed attempt: when the next one starts (backoff)."""
    webhook_started: int | None = Field(None, ge=1)
    """The attempt whose webhook call was sent: after a restart it is polled, not re-sent."""


class VerifyStatus(CamelModel):
    """Progress of verification."""

    healthy_since: datetime | None = None
    """Since when all verify.conditions have held (unset while they do not)."""


class NodeRecord(CamelModel):
    """What pitstop found on the node before changing it, to restore exactly that."""

    was_unschedulable: bool | None = None
    """The node was already cordoned before the repair: it is left cordoned after it."""


class NodeRepairStatus(CamelModel):
    """Observed state of a NodeRepair, written by the operator."""

    phase: Phase | None = None
    """The current step."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    """Cordoned, Deregistered, TasksDrained, InstancesOffline, RepairAllowed, Repaired,
    Verified, Uncordoned."""
    instances: InstanceCounts | None = None
    """The node's instances, by state."""
    plan: DryRunPlan | None = None
    """The plan (spec.dryRun only)."""
    repair: RepairStatus | None = None
    """Progress of the repair step."""
    verify: VerifyStatus | None = None
    """Progress of verification."""
    node: NodeRecord | None = None
    """The node's state before the repair."""
    start_time: datetime | None = None
    """When the operator started the repair."""
    phase_start_time: datetime | None = None
    """When the current phase began: the base of that phase's timeout."""
    completion_time: datetime | None = None
    """When the repair reached Succeeded, Failed or Aborted."""
    observed_generation: int | None = Field(None, ge=0)
    """metadata.generation the status was computed from."""
    message: str | None = None
    """One human-readable line on where the repair stands."""
