"""InstanceProfile (pitstop.dev/v1alpha1, cluster-scoped): how the instances of one
FaaS runtime are classified, where their in-flight count is read and how they are
told to drain. A platform installs one per runtime; its pod templates stay as
they are."""

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from pitstop.models.common import (
    CONDITIONS_LIST,
    CamelModel,
    Condition,
    LabelSelector,
    cel,
    validations,
)

PORT_NAME_PATTERN = r"^[a-z0-9]([a-z0-9]|-[a-z0-9])*$"
"""An IANA service name as a container port name (RFC 6335: lower case letters,
digits and single inner hyphens; also at least one letter and at most 15 long)."""
PATH_PATTERN = r"^/[^\s#]*$"
"""An absolute HTTP path (a query string is allowed, a fragment is not)."""
METRIC_NAME_PATTERN = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
LABEL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
JSON_FIELD_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
"""A dotted path of object keys, e.g. `inflight` or `stats.inFlight`."""

PORT_MESSAGE = "must be a port number (1-65535) or a container port name (IANA service name)"


def check_port(value: int | str) -> int | str:
    """A port number or a container port name, as a Service's targetPort."""
    if isinstance(value, bool):
        raise ValueError(PORT_MESSAGE)
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValueError(PORT_MESSAGE)
        return value
    if (
        not 1 <= len(value) <= 15
        or re.fullmatch(PORT_NAME_PATTERN, value) is None
        or re.search("[a-z]", value) is None
    ):
        raise ValueError(PORT_MESSAGE)
    return value


Port = Annotated[
    int | str,
    AfterValidator(check_port),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "maxLength": 15,
            "x-kubernetes-validations": [
                cel(
                    "type(self) == int ? (self >= 1 && self <= 65535) :"
                    f" (size(self) <= 15 && self.matches('{PORT_NAME_PATTERN}')"
                    " && self.matches('[a-z]'))",
                    PORT_MESSAGE,
                )
            ],
        }
    ),
]
"""A container port: its number, or the name it has in the pod spec."""

HttpPath = Annotated[str, Field(pattern=PATH_PATTERN, min_length=1, max_length=1024)]


class InstanceKind(StrEnum):
    """How the profile's pods are classified."""

    SYNC = "sync"
    ASYNC = "async"
    AUTO = "auto"
    """Today's rule: a pod that declares the pitstop.dev/serving readiness gate or
    backs an EndpointSlice endpoint is sync, any other async."""


class AnnotationTasks(CamelModel):
    """The annotation contract: the runtime keeps pitstop.dev/inflight-tasks on the pod."""


class MatchOperator(StrEnum):
    """A Prometheus label matcher's operator; regular expressions match the whole value."""

    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


class LabelMatcher(CamelModel):
    """One label matcher, as in a PromQL selector."""

    name: str = Field(min_length=1, max_length=128, pattern=LABEL_NAME_PATTERN)
    """The label name."""
    operator: MatchOperator = MatchOperator.EQUAL
    """=, !=, =~ or !~ (regular expressions are anchored at both ends, as in PromQL)."""
    value: str = Field(max_length=1024)
    """The value, or the regular expression."""

    @model_validator(mode="after")
    def _regex_compiles(self) -> Self:
        if self.operator in (MatchOperator.REGEX, MatchOperator.NOT_REGEX):
            try:
                re.compile(self.value)
            except re.error as e:
                raise ValueError(f"value is not a regular expression: {e}") from None
        return self


class PrometheusTasks(CamelModel):
    """A gauge in the instance's own Prometheus text exposition."""

    port: Port
    """The container port (number or name) serving the metrics."""
    path: HttpPath = "/metrics"
    """The metrics path."""
    metric: str = Field(min_length=1, max_length=256, pattern=METRIC_NAME_PATTERN)
    """The sample name; the count is the sum of its series that match `labels`."""
    labels: list[LabelMatcher] = Field(default_factory=list, max_length=16)
    """Label matchers a series must meet, all of them; none: every series of the metric."""


class HttpTasks(CamelModel):
    """An HTTP endpoint of the instance that answers its in-flight count."""

    port: Port
    """The container port (number or name)."""
    path: HttpPath
    """The path answered with the count (GET)."""
    field: str | None = Field(None, max_length=256, pattern=JSON_FIELD_PATTERN)
    """A JSON answer's field holding the count (dotted for nested objects); unset:
    the answer is a plain integer."""


class KnativeTasks(CamelModel):
    """Knative Serving's queue-proxy: the autoscaler stats it serves (a protobuf
    `Stat` of the last 1-second window). The instance is busy while that window saw
    a request in flight or arriving; a window is trusted only if it ended after the
    drain signal took effect."""

    port: Port = 9090
    """The queue-proxy's autoscaler metrics port (9090 in every Knative release)."""
    path: HttpPath = "/metrics"
    """The stats path."""


class TaskSource(CamelModel):
    """Where an instance's in-flight count is read: exactly one of the four."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.annotation) ? 1 : 0) + (has(self.prometheus) ? 1 : 0)"
                " + (has(self.http) ? 1 : 0) + (has(self.knative) ? 1 : 0) == 1",
                "exactly one of annotation, prometheus, http or knative must be set",
            )
        )
    )

    annotation: AnnotationTasks | None = None
    """The pitstop.dev/inflight-tasks annotation (the annotation contract)."""
    prometheus: PrometheusTasks | None = None
    """A Prometheus gauge on the instance."""
    http: HttpTasks | None = None
    """A plain-integer or JSON HTTP answer of the instance."""
    knative: KnativeTasks | None = None
    """Knative Serving's queue-proxy stats."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = (self.annotation, self.prometheus, self.http, self.knative)
        if sum(x is not None for x in given) != 1:
            raise ValueError("exactly one of annotation, prometheus, http or knative must be set")
        return self

    @property
    def type(self) -> str:
        """annotation, prometheus, http or knative."""
        if self.prometheus is not None:
            return "prometheus"
        if self.knative is not None:
            return "knative"
        return "http" if self.http is not None else "annotation"


class AnnotationSignal(CamelModel):
    """The pitstop.dev/draining annotation, read by the runtime (downward API)."""


class HttpPostSignal(CamelModel):
    """A POST to the instance; any 2xx answer acknowledges that it takes no new work."""

    port: Port
    """The container port (number or name)."""
    path: HttpPath
    """The path POSTed to."""


class NoSignal(CamelModel):
    """The runtime is not told: it leaves routing (sync) and is evicted when idle."""


class DrainSignal(CamelModel):
    """How an instance is told to stop taking new work: exactly one of the three."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.annotation) ? 1 : 0) + (has(self.httpPost) ? 1 : 0)"
                " + (has(self.none) ? 1 : 0) == 1",
                "exactly one of annotation, httpPost or none must be set",
            )
        )
    )

    annotation: AnnotationSignal | None = None
    """The pitstop.dev/draining annotation."""
    http_post: HttpPostSignal | None = None
    """A POST to the instance, retried until acknowledged."""
    none: NoSignal | None = None
    """No signal."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if sum(x is not None for x in (self.annotation, self.http_post, self.none)) != 1:
            raise ValueError("exactly one of annotation, httpPost or none must be set")
        return self

    @property
    def type(self) -> str:
        """annotation, httpPost or none."""
        if self.http_post is not None:
            return "httpPost"
        return "none" if self.none is not None else "annotation"


ENV_NAME_PATTERN = r"^[!-<>-~]+$"
"""A container environment variable name: printable ASCII but '=' (what the API
server accepts since Kubernetes 1.32; older ones want a C identifier)."""
CONTAINER_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A container name (RFC 1123 label)."""


class DeadlineEnv(CamelModel):
    """One container environment variable that holds how long a task may run."""

    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)
    """The variable's name, e.g. exec_timeout (of-watchdog), REVISION_TIMEOUT_SECONDS
    (Knative's queue-proxy)."""
    container: str | None = Field(None, max_length=63, pattern=CONTAINER_NAME_PATTERN)
    """Only this container's variable; unset: any container of the pod."""


class TaskDeadline(CamelModel):
    """Where the runtime declares the longest a task of its instances may run: the
    deadline `drain.taskTimeoutSeconds: Auto` waits for (docs/runtime-integration.md)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.env) && size(self.env) > 0) || has(self.defaultSeconds)",
                "set env, defaultSeconds or both",
            )
        )
    )

    env: list[DeadlineEnv] = Field(default_factory=list, max_length=8)
    """Container variables read as a Go duration ("60s", "1m30s") or a number of
    seconds; the deadline is the largest set to a positive value (0 means "no limit"
    to most runtimes and is skipped, as is a value that is no duration). Only literal
    values count: one from a ConfigMap or Secret (valueFrom) is not read."""
    default_seconds: int | None = Field(None, ge=1, le=86400)
    """The runtime's own default, when none of `env` is set to a positive duration;
    unset: such a pod declares no deadline."""

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.env and self.default_seconds is None:
            raise ValueError("set env, defaultSeconds or both")
        return self


def _annotation_tasks() -> TaskSource:
    return TaskSource(annotation=AnnotationTasks())


def _annotation_signal() -> DrainSignal:
    return DrainSignal(annotation=AnnotationSignal())


class InstanceProfileSpec(CamelModel):
    """The instances of one runtime: which pods, their kind, their task count and
    their drain signal."""

    pod_selector: LabelSelector
    """The pods described; {} selects every pod (of the selected namespaces)."""
    namespace_selector: LabelSelector | None = None
    """Namespaces (by their labels) whose pods are described; unset: every namespace."""
    kind: InstanceKind = InstanceKind.AUTO
    """sync, async, or auto (a pod backing an EndpointSlice endpoint is sync). A pod's
    own pitstop.dev/instance-type label still wins."""
    tasks: TaskSource = Field(
        default_factory=_annotation_tasks, json_schema_extra={"default": {"annotation": {}}}
    )
    """Where the in-flight count is read."""
    drain_signal: DrainSignal = Field(
        default_factory=_annotation_signal, json_schema_extra={"default": {"annotation": {}}}
    )
    """How an instance is told to stop taking new work."""
    task_deadline: TaskDeadline | None = None
    """Where the runtime declares how long a task may run (for
    `drain.taskTimeoutSeconds: Auto`); unset: its pods declare none."""
    # The CEL rules repeat the bounds: the API server truncates a fractional
    # `minimum` when the value is an integer, so 0 would pass `minimum: 0.1`.
    poll_interval_seconds: float = Field(
        1.0,
        ge=0.1,
        le=60,
        json_schema_extra=validations(
            cel("self >= 0.1 && self <= 60.0", "must be between 0.1 and 60 seconds")
        ),
    )
    """How often a polled source is read while its node is drained."""
    timeout_seconds: float = Field(
        1.0,
        ge=0.05,
        le=60,
        json_schema_extra=validations(
            cel("self >= 0.05 && self <= 60.0", "must be between 0.05 and 60 seconds")
        ),
    )
    """Timeout of one request to an instance (a poll or a drain signal)."""

    @field_validator("poll_interval_seconds", "timeout_seconds")
    @classmethod
    def _finite(cls, value: float) -> float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        return value


class InstanceProfileStatus(CamelModel):
    """Observed state of an InstanceProfile, written by the operator."""

    tasks: str | None = None
    """The task source in one line, e.g. `prometheus :8081/metrics http_requests_in_flight`."""
    drain_signal: str | None = None
    """The drain signal in one line, e.g. `httpPost :9100/drain`."""
    task_deadline: str | None = None
    """Where the task deadline is read, e.g. `env exec_timeout,write_timeout, default
    30s`; unset: the profile declares none."""
    pods: int = Field(0, ge=0)
    """Instances this profile describes now (those it wins for, see Conflict)."""
    conflicts: list[str] = Field(default_factory=list, max_length=64)
    """Other profiles that match some of the same pods."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    """Ready (the profile is in use) and Conflict (another profile matches some of its pods)."""
    last_update_time: datetime | None = None
    """When the operator last computed this status."""
    observed_generation: int | None = Field(None, ge=0)
    """metadata.generation the status was computed from."""
