"""Presence changes: written only when a site's state changes, never per heartbeat.

A regional writes one per change of one of its edges (`edge` set); the hub writes one per
change of a regional (`edge` is None). An edge whose regional is not `online` at the hub is
shown `unreachable`: it may be fine, the hub just cannot see it.
"""

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from schemas.base import Message, SiteId


class PresenceState(StrEnum):
    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"
    UNREACHABLE = "unreachable"  # behind a regional the hub cannot see; not the same as offline


class PresenceChange(Message):
    """One site moving from one presence state to another, as the tier above it saw it."""

    SCHEMA: ClassVar[str] = "fleet.presence"

    region: SiteId
    edge: SiteId | None = Field(default=None, description="None: the regional itself, as the hub sees it.")
    state: PresenceState
    previous: PresenceState | None = None
    changed_at: datetime
    last_seen: datetime | None = None
    reason: str = ""
