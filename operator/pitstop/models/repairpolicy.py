"""RepairPolicy (pitstop.dev/v1alpha1, cluster-scoped): turns node conditions and
alerts into NodeRepairs for one node pool, within the pool's limits."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Self

from pydantic import ConfigDict, Field, model_validator

from pitstop.models.common import (
    CONDITIONS_LIST,
    CamelModel,
    Condition,
    ConditionStatus,
    ConditionType,
    Duration,
    IntOrPercent,
    LabelSelector,
    SecretKeyRef,
    cel,
    validations,
)
from pitstop.models.noderepair import NodeRepairTemplateSpec

PROMETHEUS_LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
"""A Prometheus label name, as Alertmanager sends them."""


class UnhealthyCondition(CamelModel):
    """A node condition that makes the node unhealthy once it has held for `duration`."""

    type: ConditionType
    """Node condition type, e.g. Ready or KernelDeadlock."""
    status: ConditionStatus
    """The status that counts as unhealthy."""
    duration: Duration
    """How long the condition must hold, e.g. 5m; 0s acts at once."""


def _not_ready() -> list[UnhealthyCondition]:
    return [
        UnhealthyCondition(type="Ready", status=ConditionStatus.FALSE, duration="5m"),
        UnhealthyCondition(type="Ready", status=ConditionStatus.UNKNOWN, duration="5m"),
    ]


class AlertSource(CamelModel):
    """Alertmanager alerts (sent to the operator's webhook receiver) that mark a node unhealthy."""

    names: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        min_length=1, max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Alert names (the alertname label) acted on, each once."""
    node_label: str = Field("node", min_length=1, max_length=317, pattern=PROMETHEUS_LABEL)
    """The alert label that holds the node name (a Prometheus label name)."""


class RepairTemplate(CamelModel):
    """The NodeRepair a policy creates for an unhealthy node."""

    spec: NodeRepairTemplateSpec = Field(
        default_factory=NodeRepairTemplateSpec, json_schema_extra={"default": {}}
    )
    """A NodeRepair spec without nodeName; an empty reason is filled with the cause."""


class Weekday(StrEnum):
    """A day of the week, as kured's --reboot-days names them."""

    MON = "Mon"
    TUE = "Tue"
    WED = "Wed"
    THU = "Thu"
    FRI = "Fri"
    SAT = "Sat"
    SUN = "Sun"


CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
"""A wall-clock time of day, HH:MM (24-hour)."""
TIME_ZONE_PATTERN = r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$"
"""The shape of an IANA time zone name (Europe/Berlin, UTC, Etc/GMT+5); whether the
zone exists is checked by the operator (policy condition Stalled, reason
InvalidMaintenanceWindow): the API server knows no zone database."""


class MaintenanceWindow(CamelModel):
    """When automatic repairs may start: on `days`, from `start` to `end` in `timeZone`.
    An `end` at or before `start` closes on the next day (22:00-04:00 spans midnight)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.start != self.end", "start and end must differ", field_path=".end")
        )
    )

    days: list[Weekday] = Field(
        default_factory=lambda: list(Weekday),
        min_length=1,
        max_length=7,
        json_schema_extra={
            "default": [d.value for d in Weekday],
            "x-kubernetes-list-type": "set",
        },
    )
    """Days the window opens on (a window over midnight closes the day after)."""
    start: str = Field(pattern=CLOCK_PATTERN, max_length=5)
    """Opening time, HH:MM in timeZone."""
    end: str = Field(pattern=CLOCK_PATTERN, max_length=5)
    """Closing time, HH:MM in timeZone; at or before start: on the next day."""
    time_zone: str = Field("UTC", min_length=1, max_length=64, pattern=TIME_ZONE_PATTERN)
    """IANA time zone name, e.g. Europe/Berlin; daylight saving time follows it."""

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self


class NotificationEvent(StrEnum):
    """What a notification reports about a repair."""

    STARTED = "Started"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TEMPLATE_FIELDS = ("event", "repair", "node", "policy", "reason", "phase", "message")
"""The placeholders a notification template may use, each as {name}."""


class NotificationWebhook(CamelModel):
    """Where notifications are posted: the URL is the value of a Secret key, since
    chat webhooks (Slack's incoming webhooks) carry their credential in the URL."""

    secret_ref: SecretKeyRef
    """A Secret in pitstop-system labelled pitstop.dev/notification-secret=true by the
    platform admin (docs/security.md); its key holds the URL."""
    timeout_seconds: int = Field(10, ge=1, le=60)
    """Timeout of one POST."""


class Notifications(CamelModel):
    """A webhook told when the pool's repairs start, succeed and fail."""

    webhook: NotificationWebhook
    """The receiver; the body is {"text": <template rendered>, "pitstop": {fields}},
    which Slack, Mattermost and most chat webhooks read as a message."""
    events: list[NotificationEvent] = Field(
        default_factory=lambda: list(NotificationEvent),
        min_length=1,
        max_length=3,
        json_schema_extra={
            "default": [e.value for e in NotificationEvent],
            "x-kubernetes-list-type": "set",
        },
    )
    """Which events are posted."""
    template: str = Field(
        "pitstop: repair {repair} of {node} {event}: {message}",
        min_length=1,
        max_length=1024,
        json_schema_extra=validations(
            cel(
                "self.findAll('[{][^{}]*[}]').all(p, p in ["
                + ", ".join(f"'{{{f}}}'" for f in TEMPLATE_FIELDS)
                + "])",
                "unknown placeholder: the template may use "
                + ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS),
            )
        ),
    )
    """The message text; placeholders {event}, {repair}, {node}, {policy}, {reason},
    {phase} and {message} are replaced, nothing else is."""


class RepairPolicySpec(CamelModel):
    """A node pool and when and how its nodes are repaired."""

    node_selector: LabelSelector
    """The node pool; {} selects every node."""
    unhealthy_conditions: list[UnhealthyCondition] = Field(
        default_factory=_not_ready,
        max_length=32,
        json_schema_extra={
            "default": [
                {"type": "Ready", "status": "False", "duration": "5m"},
                {"type": "Ready", "status": "Unknown", "duration": "5m"},
            ],
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type", "status"],
        },
    )
    """Node conditions that make a node unhealthy; [] leaves only alerts."""
    alerts: AlertSource | None = None
    """Alerts that make a node unhealthy."""
    max_unhealthy: IntOrPercent = "40%"
    """Storm guard: with more unhealthy nodes than this (percentages round down), no new
    automatic repairs start."""
    max_concurrent_repairs: int = Field(1, ge=1)
    """Active repairs in the pool at once."""
    min_available: IntOrPercent = "80%"
    """Available (Ready and schedulable) nodes the pool keeps; percentages round up."""
    paused: bool = False
    """Start no new automatic repairs; running ones continue."""
    require_room: bool = True
    """The policy's repairs wait (WaitingForRoom) until the pool's other schedulable
    nodes can hold the instances they would evict; stamped on each NodeRepair it
    makes as spec.requireRoom."""
    autoscaled: bool = False
    """An autoscaler adds nodes to this pool when pods cannot be scheduled, so a
    repair of its nodes need not wait for room (pitstop does not know the
    autoscaler's maximum size: say true only if it can grow)."""
    maintenance_windows: list[MaintenanceWindow] = Field(
        default_factory=list, max_length=32, json_schema_extra={"default": []}
    )
    """When automatic repairs may start (any window); [] is any time. A repair that
    has started finishes outside its window."""
    notifications: Notifications | None = None
    """A webhook told when repairs of the pool start, succeed and fail."""
    repair_template: RepairTemplate = Field(
        default_factory=RepairTemplate, json_schema_extra={"default": {}}
    )
    """The NodeRepair created for an unhealthy node."""


class Suppression(CamelModel):
    """Whether and why the policy is holding back repairs."""

    active: bool = False
    """Unhealthy nodes are waiting for a repair the policy does not start."""
    reason: str | None = None
    """CamelCase cause, e.g. Paused, MaxUnhealthyExceeded, MinAvailable, MaxConcurrentRepairs."""
    message: str | None = None
    """Human-readable detail with the counts."""
    nodes: list[str] = Field(default_factory=list)
    """Unhealthy nodes left without a repair."""


class AlertFault(CamelModel):
    """A firing alert that marks a node of the pool unhealthy. Kept in status, so a
    restarted or new leader knows it without waiting for Alertmanager's next repeat."""

    node: str
    """The node the alert names (its alerts.nodeLabel)."""
    alertname: str
    starts_at: str
    """The alert's startsAt, as Alertmanager sent it: with the name, the fault's identity."""
    ends_at: datetime | None = None
    """The alert's endsAt, when the sender gave one in the future: the fault ends then."""
    last_received: datetime
    """The last firing notice; with none for 3h (Alertmanager repeats every
    repeat_interval while the alert fires) the fault is dropped."""


class PolicyRepair(CamelModel):
    """A NodeRepair the policy made for a fault that still holds."""

    node: str
    repair: str
    """The NodeRepair's name (derived from the node and the fault)."""
    cause: str
    """The condition or alert that made the node unhealthy."""
    declined_until: datetime | None = None
    """Set once the repair was deleted: no new repair for this fault (the same condition
    transition or alert episode) before this time."""


class WindowStatus(CamelModel):
    """Where the policy stands against its maintenance windows."""

    open: bool
    """Automatic repairs may start now."""
    closes_at: datetime | None = None
    """While open: when the window (or windows that overlap it) closes."""
    next_open_time: datetime | None = None
    """While closed: when the next window opens."""


class RepairPolicyStatus(CamelModel):
    """Observed state of a RepairPolicy, written by the operator."""

    nodes: int = Field(0, ge=0)
    """Nodes in the pool."""
    available_nodes: int = Field(0, ge=0)
    """Ready and schedulable nodes in the pool."""
    unhealthy_nodes: int = Field(0, ge=0)
    """Nodes one of unhealthyConditions (or an alert) marks unhealthy."""
    active_repairs: int = Field(0, ge=0)
    """The pool's NodeRepairs past Pending and not finished."""
    suppressed: Suppression | None = None
    """Whether and why repairs are held back."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    """Kubernetes-style conditions of the policy."""
    last_repair_time: datetime | None = None
    """When the policy last created a NodeRepair."""
    alerts: list[AlertFault] = Field(default_factory=list)
    """Firing alerts that mark nodes of the pool unhealthy, until resolved."""
    repairs: list[PolicyRepair] = Field(default_factory=list)
    """The NodeRepairs the policy made for faults that still hold, and which of those
    were deleted (declined faults)."""
    maintenance_window: WindowStatus | None = None
    """Set when spec.maintenanceWindows is: open now, or when the next one opens."""
    observed_generation: int | None = Field(None, ge=0)
    """metadata.generation the status was computed from."""
