"""NodeRepairRemediationTemplate and NodeRepairRemediation (pitstop.dev/v1alpha1,
namespaced): pitstop as the external remediator of medik8s NodeHealthCheck and
Cluster API MachineHealthCheck.

A checker copies a template's `spec.template.spec` into a new NodeRepairRemediation
named after the node (NHC) or the Machine (MHC); pitstop turns it into a NodeRepair
and reports its progress in the conditions NHC reads (docs/design.md)."""

from datetime import datetime

from pydantic import ConfigDict, Field

from pitstop.models.common import CONDITIONS_LIST, CamelModel, Condition, cel, validations
from pitstop.models.noderepair import NodeRepairTemplateSpec, Phase


class NodeRepairRemediationSpec(NodeRepairTemplateSpec):
    """The NodeRepair to make, without the node: that comes from the object's name
    (NodeHealthCheck), its remediation.medik8s.io/node-name annotation, or the
    nodeRef of the Cluster API Machine that owns it (MachineHealthCheck). Immutable:
    the NodeRepair is made from it once."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self == oldSelf", "spec is immutable: the NodeRepair was made from it")
        )
    )


class TemplateMetadata(CamelModel):
    """Labels and annotations Cluster API copies onto each remediation object."""

    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class RemediationTemplateBody(CamelModel):
    """What a checker stamps out: `spec` becomes the remediation object's spec."""

    metadata: TemplateMetadata | None = None
    spec: NodeRepairTemplateSpec = Field(
        default_factory=NodeRepairTemplateSpec, json_schema_extra={"default": {}}
    )
    """The NodeRepair each remediation makes, without the node."""


class NodeRepairRemediationTemplateSpec(CamelModel):
    """The shape both checkers expect of a remediation template: spec.template.spec."""

    template: RemediationTemplateBody = Field(
        default_factory=RemediationTemplateBody, json_schema_extra={"default": {}}
    )


class NodeRepairRemediationStatus(CamelModel):
    """Observed state of a remediation object, written by the operator."""

    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    """Processing, Succeeded and PermanentNodeDeletionExpected, as NodeHealthCheck reads them."""
    node_name: str | None = None
    """The node being repaired."""
    node_repair: str | None = None
    """The NodeRepair made for it (cluster-scoped; linked back by its
    pitstop.dev/remediation-uid label)."""
    phase: Phase | None = None
    """The NodeRepair's phase."""
    message: str | None = None
    """One human-readable line on where the repair stands."""
    start_time: datetime | None = None
    """When pitstop made the NodeRepair."""
    observed_generation: int | None = Field(None, ge=0)
    """metadata.generation the status was computed from."""
