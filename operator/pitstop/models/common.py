"""Building blocks shared by the pitstop resources: the camelCase base model,
Kubernetes conditions and label selectors, durations and int-or-percent values."""

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from pitstop.quantities import (
    DURATION_PATTERN,
    INT_OR_PERCENT_PATTERN,
    check_int_or_percent,
)

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A Kubernetes object name (RFC 1123 subdomain), as node and Secret names are."""

_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + (
    _LABEL_NAME + "$"
)
"""A label key: an optional DNS-subdomain prefix and "/", then a name of at most 63
characters (alphanumerics, '-', '_', '.', starting and ending alphanumeric)."""
LABEL_VALUE_PATTERN = r"^(" + _LABEL_NAME + r")?$"
"""A label value: empty, or a name as in a label key."""
_CEL_LABEL_KEY = LABEL_KEY_PATTERN.replace("\\.", "[.]")
"""LABEL_KEY_PATTERN for a CEL string literal, where "\\." is no escape: the dot as [.]."""
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
"""A key of a Secret's data."""

LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry (a CEL rule the API server enforces)."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, str]) -> JsonDict:
    """`json_schema_extra` carrying CEL rules, for a Field or a model_config."""
    return {"x-kubernetes-validations": [dict(rule) for rule in rules]}


class CamelModel(BaseModel):
    """Base of every pitstop model: snake_case in Python, camelCase on the wire.

    Unknown keys are ignored (the API server prunes them before they get here)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready camelCase form, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=64)]
"""A duration such as "5m", "1h30m" or "0s" (see pitstop.quantities.parse_duration)."""

IntOrPercent = Annotated[
    int | str,
    AfterValidator(check_int_or_percent),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "minimum": 0,
            "pattern": INT_OR_PERCENT_PATTERN,
        }
    ),
]
"""A node count (3) or a percentage of the pool ("40%"), as in a PodDisruptionBudget."""

ConditionType = Annotated[str, Field(min_length=1, max_length=316)]


class ConditionStatus(StrEnum):
    """Status of a Kubernetes condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(CamelModel):
    """A Kubernetes-style status condition."""

    type: ConditionType
    """CamelCase kind of the condition, e.g. Cordoned or RepairAllowed."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str | None = None
    """CamelCase cause of the last transition."""
    message: str | None = None
    """Human-readable detail: counts and names."""
    last_transition_time: datetime | None = None
    """When the status last changed."""
    observed_generation: int | None = Field(None, ge=0)
    """metadata.generation the condition was computed from."""


CONDITIONS_LIST: JsonDict = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
"""Schema markers for a list of conditions: one entry per type (server-side apply merges)."""


class SelectorOperator(StrEnum):
    """Operator of a label selector requirement."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(CamelModel):
    """A label key, an operator and values, as in a Kubernetes LabelSelector."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0)"
                " : (!has(self.values) || size(self.values) == 0)",
                "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
                field_path=".values",
            )
        )
    )

    key: str = Field(min_length=1, max_length=317, pattern=LABEL_KEY_PATTERN)
    """The label key."""
    operator: SelectorOperator
    """In, NotIn, Exists or DoesNotExist."""
    values: list[LabelValue] | None = Field(None, max_length=64)
    """Values for In and NotIn; empty for Exists and DoesNotExist."""

    @model_validator(mode="after")
    def _values_match_operator(self) -> Self:
        wants_values = self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if wants_values != bool(self.values):
            raise ValueError(
                "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist"
            )
        return self


class LabelSelector(CamelModel):
    """A Kubernetes label selector; the empty selector matches everything."""

    match_labels: dict[str, LabelValue] | None = Field(
        None,
        max_length=64,
        json_schema_extra=validations(
            cel(
                f"self.all(k, size(k) <= 317 && k.matches('{_CEL_LABEL_KEY}'))",
                "keys must be label keys: [prefix/]name, the name at most 63 alphanumerics,"
                " '-', '_' or '.', starting and ending alphanumeric",
            )
        ),
    )
    """Labels an object must carry, all of them."""

    @field_validator("match_labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        bad = [k for k in labels or {} if len(k) > 317 or not re.match(LABEL_KEY_PATTERN, k)]
        if bad:
            raise ValueError(f"keys must be label keys, not {bad[0]!r}")
        return labels

    match_expressions: list[LabelSelectorRequirement] | None = Field(None, max_length=32)
    """Requirements an object must meet, all of them."""


class SecretKeyRef(CamelModel):
    """A key of a Secret in the operator's namespace (pitstop-system)."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)
    """Key within the Secret."""
