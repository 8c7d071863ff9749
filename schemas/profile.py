"""Profiles: named, versioned desired state for the sites whose labels match a selector."""

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from schemas.base import Message, Name


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


class Component(BaseModel):
    """One deployable thing on a site: an image at a version, with config values."""

    model_config = ConfigDict(extra="allow")

    name: Name
    image: str = Field(min_length=1)
    version: str = Field(min_length=1)
    config: dict[str, JsonValue] = Field(default_factory=dict)


class ProfileSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    components: list[Component] = Field(default_factory=list)
    config: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _component_names_unique(self) -> "ProfileSpec":
        seen: set[str] = set()
        for component in self.components:
            if component.name in seen:
                msg = f"component {component.name!r} appears twice; names must be unique"
                raise ValueError(msg)
            seen.add(component.name)
        return self


class Profile(Message):
    """A named, versioned desired-state document. Higher `priority` wins when merging."""

    SCHEMA: ClassVar[str] = "fleet.profile"

    name: Name
    selector: LabelSelector = Field(default_factory=LabelSelector)
    priority: int = 0
    spec: ProfileSpec = Field(default_factory=ProfileSpec)
    description: str = ""
    revision: int | None = Field(default=None, ge=1, description="Set by the hub's KV bucket.")
    updated_by: str | None = None
    updated_at: datetime | None = None
