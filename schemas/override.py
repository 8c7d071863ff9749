"""Overrides: a JSON merge patch for one site or one group, with an owner and a reason."""

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from schemas.base import Message, SiteId


class OverrideScope(StrEnum):
    EDGE = "edge"
    GROUP = "group"


class OverrideTarget(BaseModel):
    model_config = ConfigDict(extra="allow")

    scope: OverrideScope
    name: SiteId


class Override(Message):
    """An exception to the profiles; stops applying by itself once `expires_at` has passed."""

    SCHEMA: ClassVar[str] = "fleet.override"

    target: OverrideTarget
    patch: dict[str, JsonValue]
    owner: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    created_at: datetime
    expires_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at
