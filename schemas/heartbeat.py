"""Heartbeats: core NATS, never stored; a stale heartbeat means nothing."""

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from schemas.base import Message, SiteId


class Tier(StrEnum):
    HUB = "hub"
    REGIONAL = "regional"
    EDGE = "edge"


class Heartbeat(Message):
    """A site saying it is alive, sent to the tier above every `interval_seconds`."""

    SCHEMA: ClassVar[str] = "fleet.heartbeat"

    tier: Tier
    site: SiteId
    region: SiteId
    seq: int = Field(ge=0, description="Restarts at 0 when the daemon restarts.")
    sent_at: datetime
    interval_seconds: float = Field(gt=0)
    uptime_seconds: float = Field(ge=0)
    uplink_returns: int = Field(
        default=0,
        ge=0,
        description=(
            "How often this site's link to the tier above came back (its upstream answered again "
            "after failing) since the daemon started. The receiver kicks this site's sources when "
            "it changes, so catch-up starts at once rather than on the server's retry back-off."
        ),
    )
    thin: bool = Field(
        default=False,
        description=(
            "A thin edge: no nats-server of its own, it publishes into its regional's streams "
            "directly, so the regional has no sources to add or kick for it."
        ),
    )
