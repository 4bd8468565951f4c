"""RepairPolicy (pitstop.dev/v1alpha1, cluster-scoped): turns node conditions and
alerts into NodeRepairs for one node pool, within the pool's limits."""

from datetime import datetime
from typing import Annotated

from pydantic import Field

from pitstop.models.common import (
    CONDITIONS_LIST,
    CamelModel,
    Condition,
    ConditionStatus,
    ConditionType,
    Duration,
    IntOrPercent,
    LabelSelector,
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
    observed_generation: int | None = Field(None, ge=0)
    """metadata.generation the status was computed from."""
