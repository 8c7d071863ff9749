"""Label selectors: which sites a profile (or a rollout's wave) targets, with Kubernetes
label-selector semantics (`fleetbus.core.selector` evaluates them)."""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.base import Name


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelRequirement(BaseModel):
    """One `match_expressions` entry, with Kubernetes label-selector semantics."""

    model_config = ConfigDict(extra="allow")

    key: Name
    operator: SelectorOperator
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> "LabelRequirement":
        needs_values = self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if needs_values and not self.values:
            msg = f"operator {self.operator.value} needs at least one value"
            raise ValueError(msg)
        if not needs_values and self.values:
            msg = f"operator {self.operator.value} takes no values"
            raise ValueError(msg)
        return self


class LabelSelector(BaseModel):
    """Which sites a profile targets; an empty selector matches every site."""

    model_config = ConfigDict(extra="allow")

    match_labels: dict[Name, str] = Field(default_factory=dict)
    match_expressions: list[LabelRequirement] = Field(default_factory=list)
