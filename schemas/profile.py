"""Profiles: named, versioned desired state for the sites whose labels match a selector."""

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
)

from schemas.base import TOKEN, Message, Name
from schemas.rollout import RolloutSpec
from schemas.selector import LabelRequirement, LabelSelector, SelectorOperator

__all__ = ["LabelRequirement", "LabelSelector", "SelectorOperator"]  # (their home: schemas.selector)


Namespace = Annotated[str, StringConstraints(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
"""A Kubernetes namespace name (an RFC 1123 label)."""


class DriftPolicy(StrEnum):
    """What a driver does when the live state differs from what it applied."""

    REPORT = "report"
    CORRECT = "correct"


class Port(BaseModel):
    """A port a short-form component listens on; given as a number or as an object."""

    model_config = ConfigDict(extra="allow")

    port: int = Field(ge=1, le=65535)
    name: (
        Annotated[str, StringConstraints(max_length=15, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")] | None
    ) = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    target_port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _from_number(cls, value: Any) -> Any:
        return {"port": value} if isinstance(value, int) and not isinstance(value, bool) else value


class Resources(BaseModel):
    """Kubernetes resource requests and limits, quantities as Kubernetes writes them ("250m", "128Mi")."""

    model_config = ConfigDict(extra="forbid")

    requests: dict[str, str | int | float] = Field(default_factory=dict)
    limits: dict[str, str | int | float] = Field(default_factory=dict)


class Component(BaseModel):
    """One deployable thing on a site.

    Either the short form, an `image` at a `version` (with optional `replicas`, `env`,
    `ports`, `resources` for drivers that run workloads), or `manifests`: a list of
    Kubernetes objects applied as given. `config` values go to the component either way.
    """

    model_config = ConfigDict(extra="allow")

    name: Name
    image: str | None = Field(default=None, min_length=1)
    version: str | None = Field(default=None, min_length=1)
    config: dict[str, JsonValue] = Field(default_factory=dict)
    replicas: int | None = Field(default=None, ge=0)
    env: dict[Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")], str] = Field(
        default_factory=dict
    )
    ports: list[Port] = Field(default_factory=list)
    resources: Resources | None = None
    manifests: list[dict[str, JsonValue]] = Field(default_factory=list)
    namespace: Namespace | None = Field(
        default=None, description="Kubernetes namespace; default fleetbus-<profile>."
    )

    @model_validator(mode="after")
    def _one_form(self) -> "Component":
        if self.manifests:
            if self.image or self.version:
                msg = "give either manifests or image/version, not both"
                raise ValueError(msg)
            for i, manifest in enumerate(self.manifests):
                metadata = manifest.get("metadata")
                if not isinstance(manifest.get("apiVersion"), str) or not isinstance(
                    manifest.get("kind"), str
                ):
                    msg = f"manifests[{i}] needs apiVersion and kind"
                    raise ValueError(msg)  # noqa: TRY004 - pydantic reports ValueErrors, not TypeErrors
                if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
                    msg = f"manifests[{i}] needs metadata.name"
                    raise ValueError(msg)  # noqa: TRY004 - as above
        elif not (self.image and self.version):
            missing = " and ".join(f for f in ("image", "version") if not getattr(self, f))
            msg = f"{missing} required: give image and version (the short form) or manifests"
            raise ValueError(msg)
        return self


class ForwardMode(StrEnum):
    """How a telemetry rule forwards a device's readings upstream."""

    SAMPLE = "sample"  # one reading per device per interval; every one kept until forwarded
    LAST = "last"  # the latest reading per device, at most once per interval; superseded ones never leave


# An MQTT topic filter within the device contract: devices/<device id or +>/<channel or +>,
# or ending in # (devices/#, devices/<id>/#).
_DEVICE_ID = TOKEN.pattern.removeprefix("^").removesuffix("$")
_DEVICE_FILTER = re.compile(rf"^devices/(#|({_DEVICE_ID}|\+)/(telemetry|status|\+|#))$")


class TelemetryRule(BaseModel):
    """Which device readings an edge forwards upstream (as `telemetry` events), and how often."""

    model_config = ConfigDict(extra="allow")

    mode: ForwardMode = ForwardMode.SAMPLE
    interval: float = Field(
        default=60.0,
        ge=1.0,
        le=86400.0,
        description="Seconds: at most one reading per device per interval leaves the edge.",
    )
    fields: list[str] = Field(
        default_factory=list, description="Forward only these fields of a reading; all when empty."
    )


def check_device_filter(topic: str) -> str:
    """`topic` if it is an MQTT filter over the device topics; ValueError saying why not."""
    if not _DEVICE_FILTER.match(topic):
        msg = (
            f"telemetry topic {topic!r} is not a device topic filter: use devices/<device id or +>/"
            "<telemetry, status or +>, or devices/#, or devices/<device id>/#"
        )
        raise ValueError(msg)
    return topic


DeviceTopicFilter = Annotated[str, AfterValidator(check_device_filter)]


class ProfileSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    components: list[Component] = Field(default_factory=list)
    config: dict[str, JsonValue] = Field(default_factory=dict)
    drift_policy: DriftPolicy | None = Field(
        default=None,
        validation_alias=AliasChoices("drift_policy", "driftPolicy"),
        description="report (the default): drift is an event; correct: also re-apply.",
    )
    namespace: Namespace | None = Field(
        default=None,
        description="Kubernetes namespace of this profile's components; default fleetbus-<name>.",
    )
    telemetry: dict[DeviceTopicFilter, TelemetryRule] = Field(
        default_factory=dict,
        description="Device readings to forward upstream, by MQTT topic filter (devices/+/telemetry).",
    )

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
    rollout: RolloutSpec | None = Field(
        default=None,
        description="How a new revision reaches its edges: in waves with health gates (docs/rollouts.md); "
        "without it, every edge at once.",
    )
    description: str = ""
    revision: int | None = Field(default=None, ge=1, description="Set by the hub's KV bucket.")
    updated_by: str | None = None
    updated_at: datetime | None = None

    def stub(self) -> "Profile":
        """This revision without its content: what an edge the profile no longer selects
        receives instead (name, selector, revision; signed by the hub like the profile)."""
        return Profile(name=self.name, selector=self.selector, revision=self.revision)
