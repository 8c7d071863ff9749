"""Enrollment: an edge introducing itself to its regional."""

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from schemas.base import Message, Name, SiteId


class Enrollment(Message):
    """An edge asking its regional to admit it, with the labels profiles select on."""

    SCHEMA: ClassVar[str] = "fleet.enrollment"

    region: SiteId
    edge: SiteId
    labels: dict[Name, str] = Field(default_factory=dict)
    hostname: str = ""
    software_version: str = ""
    capabilities: list[str] = Field(default_factory=list)
    requested_at: datetime


class EnrollmentReply(Message):
    """The regional's answer to an `Enrollment`: admitted, or why not."""

    SCHEMA: ClassVar[str] = "fleet.enrollment_reply"

    region: SiteId
    edge: SiteId
    accepted: bool
    reason: str = ""
    enrolled_at: datetime | None = None
