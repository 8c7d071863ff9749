"""Events: apply results, drift, alerts and audit records, every one delivered at least once."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator

from schemas.base import Message, SiteId

EventKindName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]


class EventKind(StrEnum):
    """Kinds fleetbus itself emits; other kinds are allowed (they are one subject token)."""

    APPLY_RESULT = "apply_result"
    DRIFT = "drift"
    ALERT = "alert"
    AUDIT = "audit"
    TELEMETRY = "telemetry"  # device readings a profile's telemetry rules forward (data: device, values)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ApplyStatus(StrEnum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    FAILED = "failed"


class ObjectOutcome(StrEnum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    PRUNED = "pruned"
    FAILED = "failed"


class ObjectResult(BaseModel):
    """What an apply did to one object a driver manages (Kubernetes: one API object)."""

    model_config = ConfigDict(extra="allow")

    api_version: str
    kind: str
    name: str
    namespace: str | None = None
    component: str | None = None
    outcome: ObjectOutcome
    message: str | None = Field(default=None, description="Why it failed, in the API's words.")


class ApplyResult(BaseModel):
    """What happened when an edge applied its effective desired state."""

    model_config = ConfigDict(extra="allow")

    desired_hash: str = Field(min_length=1)
    profile_revisions: dict[str, int] = Field(default_factory=dict)
    status: ApplyStatus
    driver: str
    duration_seconds: float = Field(ge=0)
    error: str | None = None
    # What the edge computed from: lets the hub recompute its desired state (compliance, explain).
    labels: dict[str, str] = Field(default_factory=dict)
    groups: list[str] = Field(default_factory=list)
    objects: list[ObjectResult] = Field(
        default_factory=list, description="Per object, for drivers that manage objects (kubernetes)."
    )


class Event(Message):
    """One event from one edge. `id` is also the `ce-id` and `Nats-Msg-Id` (dedupe key)."""

    SCHEMA: ClassVar[str] = "fleet.event"

    id: str = Field(min_length=1, max_length=128)
    kind: EventKindName
    region: SiteId
    edge: SiteId
    observed_at: datetime
    severity: Severity = Severity.INFO
    message: str = ""
    data: dict[str, JsonValue] = Field(default_factory=dict)
    apply_result: ApplyResult | None = None

    @model_validator(mode="after")
    def _apply_result_matches_kind(self) -> "Event":
        if (self.kind == EventKind.APPLY_RESULT) != (self.apply_result is not None):
            msg = "apply_result is required for kind 'apply_result' and only for it"
            raise ValueError(msg)
        return self
