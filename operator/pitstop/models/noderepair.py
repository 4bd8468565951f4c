"""NodeRepair (pitstop.dev/v1alpha1, cluster-scoped): the repair of one node."""

import base64
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

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
    REPLACE = "Replace"
    """Delete the node's Cluster API Machine; done when its pool has a new Ready node."""
    EXTERNAL = "External"
    """Create a remediator's CR from its template (NodeHealthCheck's contract); done
    when the CR reports Succeeded or is deleted."""


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
ACTIVE_PHASES = tuple(p for p in Phase if p is not Phase.PENDING and p not in FINAL_PHASES)
"""Phases of an active repair (admitted, its node taken, not finished), in flow order."""


# --- spec ---

AUTO = "Auto"
"""drain.taskTimeoutSeconds: the deadline the node's instances declare (their
InstanceProfile's taskDeadline), capped; see TaskTimeoutStatus."""
DEFAULT_TASK_TIMEOUT = 1800
"""drain.taskTimeoutSeconds when unset; also Auto's fallback and cap."""
_TASK_TIMEOUT_MESSAGE = "must be a whole number of seconds (at least 1) or Auto"


def _task_timeout(value: Any) -> int | str:
    """At least 1 second, or exactly "Auto" (as the CEL rule says; no "60")."""
    if isinstance(value, bool):
        raise ValueError(_TASK_TIMEOUT_MESSAGE)
    if isinstance(value, int):
        if value < 1:
            raise ValueError(_TASK_TIMEOUT_MESSAGE)
        return value
    if value == AUTO:
        return AUTO
    raise ValueError(_TASK_TIMEOUT_MESSAGE)


TaskTimeout = Annotated[
    int | str,
    BeforeValidator(_task_timeout),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "maxLength": len(AUTO),
            "default": DEFAULT_TASK_TIMEOUT,
            "x-kubernetes-validations": [
                cel(f"type(self) == int ? self >= 1 : self == '{AUTO}'", _TASK_TIMEOUT_MESSAGE)
            ],
        }
    ),
]


class DrainSpec(CamelModel):
    """How the node's instances are taken offline."""

    task_timeout_seconds: TaskTimeout = DEFAULT_TASK_TIMEOUT
    """How long to wait for in-flight tasks to finish: seconds, or Auto (the longest
    task deadline the node's instances declare through their InstanceProfile, plus a
    margin, at most 1800; 1800 when none declares one)."""
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
    run_on_node: bool = False
    """Pin the Job's pod to the node under repair (a required node affinity on its
    name; tolerations for the cordon, pitstop's maintenance taint and a not-ready
    node): for a repair that runs on the node itself. Host access still needs the
    admin's grant on the Job's ServiceAccount (docs/security.md)."""


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


class RemediationTemplateRef(CamelModel):
    """A remediator's template object (NodeHealthCheck's contract: kind XTemplate,
    its spec.template.spec is the spec of the X it yields)."""

    api_version: str = Field(
        min_length=3,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\.[a-z]+/v[a-z0-9]+$",
    )
    """group/version of the template, e.g. self-node-remediation.medik8s.io/v1alpha1
    (a custom resource: the group has a dot)."""
    kind: str = Field(
        min_length=9,
        max_length=63,
        pattern=r"^[A-Z][A-Za-z0-9]*Template$",
    )
    """The template's kind, e.g. SelfNodeRemediationTemplate; pitstop creates the kind
    without the suffix (SelfNodeRemediation)."""
    namespace: str = Field(min_length=1, max_length=63, pattern=DNS_SUBDOMAIN_PATTERN)
    """The template's namespace; the remediation CR is created there."""
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """The template's name. The platform admin labels the templates repairs may use
    pitstop.dev/remediator-allowed=true (docs/security.md)."""


class ExternalRepair(CamelModel):
    """Repair by an installed remediator (SelfNodeRemediation, FenceAgentsRemediation, ...):
    pitstop creates the remediation CR, named after the node, from the template, and
    waits for its Succeeded condition (or its deletion)."""

    template_ref: RemediationTemplateRef
    """The remediator's template."""


def _needs_config(strategy: str, field: str) -> dict[str, str]:
    return cel(
        f"!has(self.strategy) || self.strategy != '{strategy}' || has(self.{field})",
        f"{field} is required when strategy is {strategy}",
        field_path=f".{field}",
        reason="FieldValueRequired",
    )


_CONFIG_RULES = (
    _needs_config("Job", "job"),
    _needs_config("Webhook", "webhook"),
    _needs_config("External", "external"),
)


def _check_config(
    strategy: RepairStrategy | None,
    job: JobRepair | None,
    webhook: WebhookRepair | None,
    external: ExternalRepair | None,
) -> None:
    given: dict[RepairStrategy, object] = {
        RepairStrategy.JOB: job,
        RepairStrategy.WEBHOOK: webhook,
        RepairStrategy.EXTERNAL: external,
    }
    if strategy in given and given[strategy] is None:
        field = strategy.value.lower() if strategy else ""
        raise ValueError(f"{field} is required when strategy is {strategy}")


class RepairStep(CamelModel):
    """One rung of the repair ladder: a strategy with its own timeout and attempts.
    When its attempts are used up (each failed or timed out, or the node did not
    verify after it), the next step starts."""

    model_config = ConfigDict(json_schema_extra=validations(*_CONFIG_RULES))

    name: str | None = Field(None, max_length=63, pattern=DNS_SUBDOMAIN_PATTERN)
    """A name for the step, shown in status and Events (default: its strategy)."""
    strategy: RepairStrategy
    """Manual, Job, Webhook, Replace or External."""
    job: JobRepair | None = None
    """The repair Job; required for strategy Job."""
    webhook: WebhookRepair | None = None
    """The repair service; required for strategy Webhook."""
    external: ExternalRepair | None = None
    """The remediator; required for strategy External."""
    timeout_seconds: int = Field(3600, ge=1)
    """How long one attempt of this step may take."""
    max_attempts: int = Field(1, ge=1)
    """Attempts of this step (repair, then verify) before the next step starts
    (Manual: always one)."""

    @model_validator(mode="after")
    def _strategy_is_configured(self) -> Self:
        _check_config(self.strategy, self.job, self.webhook, self.external)
        return self


class RepairSpec(CamelModel):
    """How the node is repaired: one strategy (with job, webhook or external), or an
    ordered ladder of `steps`, never both."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            *_CONFIG_RULES,
            cel(
                "!has(self.steps) || (!has(self.strategy) && !has(self.job)"
                " && !has(self.webhook) && !has(self.external))",
                "steps and strategy (with job, webhook, external) are exclusive:"
                " put each strategy into a step",
                field_path=".steps",
            ),
        )
    )

    strategy: RepairStrategy | None = None
    """Manual (a human annotates pitstop.dev/repaired), Job, Webhook, Replace or
    External: a one-step ladder; unset and without steps: Manual."""
    job: JobRepair | None = None
    """The repair Job; required for strategy Job."""
    webhook: WebhookRepair | None = None
    """The repair service; required for strategy Webhook."""
    external: ExternalRepair | None = None
    """The remediator; required for strategy External."""
    steps: list[RepairStep] | None = Field(None, min_length=1, max_length=16)
    """The repair ladder: tried in order, each with its own timeoutSeconds and
    maxAttempts; the next starts when one fails or times out."""
    timeout_seconds: int = Field(3600, ge=1)
    """How long one repair attempt may take (strategy; each step has its own)."""
    max_attempts: int = Field(3, ge=1)
    """Attempts (repair, then verify) before the repair fails (strategy; each step
    has its own)."""

    @model_validator(mode="after")
    def _strategy_is_configured(self) -> Self:
        if self.steps is not None and (
            self.strategy is not None
            or self.job is not None
            or self.webhook is not None
            or self.external is not None
        ):
            raise ValueError(
                "steps and strategy (with job, webhook, external) are exclusive:"
                " put each strategy into a step"
            )
        _check_config(self.strategy, self.job, self.webhook, self.external)
        return self


class ExpectedCondition(CamelModel):
    """A node condition the repaired node must show."""

    type: ConditionType
    """Node condition type, e.g. Ready."""
    status: ConditionStatus
    """Expected status."""


def _ready() -> list[ExpectedCondition]:
    return [ExpectedCondition(type="Ready", status=ConditionStatus.TRUE)]


class CanaryPodSpec(JobPodSpec):
    """A core/v1 PodSpec for the canary. pitstop sets nodeName (the node under
    repair: the pod bypasses the scheduler, and so the cordon); the ServiceAccount
    and what the pod may reach are granted as for repair Jobs (docs/security.md)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-preserve-unknown-fields": True,
            **validations(
                cel(
                    "!has(self.nodeName)",
                    "pitstop runs the canary on the node under repair: leave nodeName unset",
                    field_path=".nodeName",
                )
            ),
        }
    )

    node_name: str | None = Field(None, max_length=253)
    """Set by pitstop; must be unset."""
    restart_policy: Literal["Never", "OnFailure"] = "Never"
    """Never (default) or OnFailure: a canary must be able to finish (Always cannot)."""

    @field_validator("node_name")
    @classmethod
    def _no_node(cls, name: str | None) -> str | None:
        if name is not None:
            raise ValueError(
                "pitstop runs the canary on the node under repair: leave nodeName unset"
            )
        return name


class CanaryPod(CamelModel):
    """A core/v1 PodTemplateSpec: the canary pod."""

    metadata: dict[str, Any] | None = None
    """Labels and annotations for the pod."""
    spec: CanaryPodSpec
    """The pod; it must reach phase Succeeded on the repaired node."""


CANARY_MAX_SECONDS = 3600
"""A canary is a quick probe: an hour is already generous."""
_CANARY_TIMEOUT_MESSAGE = f"canary.timeoutSeconds must be between 1 and {CANARY_MAX_SECONDS}"


class CanarySpec(CamelModel):
    """A probe the platform defines that must succeed on the repaired node before it
    is returned: a pod run on the node, in the operator's namespace, as a repair Job
    would be (the ServiceAccount pitstop-repair unless it names another the admin
    allowed). A failed, timed-out or refused canary is a failed verification."""

    pod: CanaryPod
    """The canary pod; pitstop sets its name, namespace, nodeName and owner."""
    timeout_seconds: int = Field(
        300,
        json_schema_extra=validations(
            cel(
                f"self >= 1 && self <= {CANARY_MAX_SECONDS}",
                _CANARY_TIMEOUT_MESSAGE,
                reason="FieldValueInvalid",
            )
        ),
    )
    """How long the pod may take to reach Succeeded, from its creation (1 to 3600)."""

    @field_validator("timeout_seconds")
    @classmethod
    def _bounded(cls, seconds: int) -> int:
        if not 1 <= seconds <= CANARY_MAX_SECONDS:
            raise ValueError(_CANARY_TIMEOUT_MESSAGE)
        return seconds


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
    canary: CanarySpec | None = None
    """A pod that must succeed on the node once the conditions held for stableSeconds,
    before it is uncordoned (its own timeoutSeconds)."""


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
    require_room: bool = True
    """Wait in Pending (WaitingForRoom) until the other schedulable nodes can hold
    the node's instances, or an autoscaler adds room (its pool's policy says
    `autoscaled`). A policy's repairs carry the policy's requireRoom; false skips
    the check (docs/policies.md "Room before the drain"). Read only before the
    cordon: changing it later changes nothing."""


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


class TaskTimeoutSource(StrEnum):
    """Where the task timeout of a repair with `taskTimeoutSeconds: Auto` comes from."""

    RUNTIME = "Runtime"
    """The longest deadline its instances declare, plus the margin."""
    CAPPED = "Capped"
    """That is above the cap: the cap (the default)."""
    DEFAULT = "Default"
    """No instance declares one: the default."""


class TaskTimeoutStatus(CamelModel):
    """The task timeout `taskTimeoutSeconds: Auto` resolved to, and why."""

    seconds: int = Field(ge=1)
    """The timeout the drain uses."""
    source: TaskTimeoutSource
    """Runtime, Capped or Default."""
    runtime_seconds: int | None = Field(None, ge=1)
    """The longest task deadline the node's instances declared; unset: none declared
    one. The timeout never decreases once resolved (a wait under way is not cut)."""
    instance: str | None = None
    """The instance (namespace/name) that declares it."""
    message: str = ""
    """One line: the deadline, who declares it and where it is read."""


class InstanceDeadline(CamelModel):
    """The task deadline one instance's runtime declares."""

    instance: str
    """namespace/name"""
    seconds: float = Field(ge=0)
    """The deadline."""
    source: str
    """Where it was read, e.g. `exec_timeout=60s` or `default` (of InstanceProfile X)."""


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
    task_deadlines: list[InstanceDeadline] = Field(default_factory=list)
    """The task deadline each instance's runtime declares (InstanceProfile taskDeadline)."""
    auto_task_timeout: TaskTimeoutStatus | None = None
    """What `drain.taskTimeoutSeconds: Auto` would wait for tasks."""


class ReplaceStatus(CamelModel):
    """What a Replace step deleted, recorded before it is deleted (a restarted
    operator waits for its replacement instead of looking for it again)."""

    machine: str
    """namespace/name of the node's Machine."""
    machine_uid: str
    """Its uid: the only Machine a retried delete may remove."""
    pool: str
    """The label (key=value) of the Machines that replace it: its MachineSet, else
    its Cluster."""
    replacement: str | None = None
    """The new Ready node."""


class RemediationRef(CamelModel):
    """A remediation CR an External step created."""

    api_version: str
    kind: str
    resource: str
    """Its resource (plural), as the API server's discovery names it."""
    namespace: str
    name: str


class RepairStatus(CamelModel):
    """Progress of the repair step."""

    step: int | None = Field(None, ge=1)
    """The ladder step that runs (1-based; unset: 1)."""
    steps: int | None = Field(None, ge=1)
    """How many steps the ladder has."""
    step_name: str | None = None
    """The running step's name and strategy, e.g. "reboot (Job)"."""
    step_start_time: datetime | None = None
    """When the running step began."""
    moved_on: str | None = None
    """Why the ladder left the previous step (its last error)."""
    attempts: int = Field(0, ge=0)
    """Attempts of the running step started."""
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
    replace: ReplaceStatus | None = None
    """The Machine a Replace step deleted."""
    external: RemediationRef | None = None
    """The remediation CR of the running External step, once created."""


class CanaryResult(StrEnum):
    """Where the attempt's canary stands."""

    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"


class CanaryStatus(CamelModel):
    """The canary pod of the current attempt (verify.canary)."""

    pod: str
    """Its name, in the operator's namespace: deterministic per repair (uid), ladder
    step and attempt, so a restarted operator finds it and never makes a second."""
    start_time: datetime
    """When it was started: the base of canary.timeoutSeconds."""
    result: CanaryResult = CanaryResult.RUNNING
    """Running, Passed or Failed."""
    reason: str | None = None
    """CanaryRunning, CanaryPassed or CanaryFailed."""
    message: str | None = None
    """What the pod did (its phase, exit codes, a refusal)."""


class VerifyStatus(CamelModel):
    """Progress of verification."""

    healthy_since: datetime | None = None
    """Since when all verify.conditions have held (unset while they do not)."""
    canary: CanaryStatus | None = None
    """The current attempt's canary (verify.canary), once started."""


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
    task_timeout: TaskTimeoutStatus | None = None
    """What `drain.taskTimeoutSeconds: Auto` resolved to (Auto only)."""
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
