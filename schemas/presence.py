"""Presence changes: written by a regional only when an edge's state changes."""

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from schemas.base import Message, SiteId


class PresenceState(StrEnum):
    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"
    UNREACHABLE = "unreachable"  # behind a regional the hub cannot see; not the same as offline


class PresenceChange(Message):
    """One edge moving from one presence state to another, as its regional saw it."""

    SCHEMA: ClassVar[str] = "fleet.presence"

    region: SiteId
    edge: SiteId
    state: PresenceState
    previous: PresenceState | None = None
    changed_at: datetime
    last_seen: datetime | None = None
    reason: str = ""
