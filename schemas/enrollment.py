"""Enrollment: an edge introducing itself to its regional."""

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class JoinRequest(Message):
    """A new edge redeeming its one-time enrollment token at its regional, before its leaf link
    is admitted (docs/security.md#enrollment): the key and machine id it asks to have bound."""

    SCHEMA: ClassVar[str] = "fleet.join"

    region: SiteId
    edge: SiteId
    token: str = Field(max_length=4096)
    public_key: str = Field(max_length=64, description="The edge's nkey (public), generated at the edge.")
    machine_id: str = Field(default="", max_length=128)
    requested_at: datetime


class JoinReply(Message):
    """The regional's answer to a `JoinRequest`; `proof` is an HMAC keyed by the token, so the
    edge can tell this answer from anyone else's."""

    SCHEMA: ClassVar[str] = "fleet.join_reply"

    region: SiteId
    edge: SiteId
    status: Literal["admitted", "pending", "refused"]
    reason: str = ""
    proof: str = ""

    def proof_fields(self, request: "JoinRequest") -> tuple[str, ...]:
        """What the proof covers: this answer, and the request it answers (its key, machine
        and time), so an answer to one request cannot be replayed for another."""
        return (
            self.region,
            self.edge,
            self.status,
            self.reason,
            request.public_key,
            request.machine_id,
            request.requested_at.isoformat(),
        )


class AdmittedEdge(BaseModel):
    """One edge in a regional's admission registry."""

    model_config = ConfigDict(extra="ignore")

    edge: SiteId
    status: Literal["admitted", "pending", "revoked"]
    machine_id: str = ""
    public_key: str = ""
    since: datetime | None = None


class AdmissionCommand(Message):
    """An operator's call to a regional: approve or revoke an edge, list the registry, or
    record that a token was issued (the regional stores an audit event for each)."""

    SCHEMA: ClassVar[str] = "fleet.admission_command"

    region: SiteId
    action: Literal["approve", "revoke", "list", "issued"]
    edge: SiteId | None = None
    sent_by: str = ""
    token_id: str = ""
    expires: datetime | None = None


class AdmissionReply(Message):
    """A regional's answer to an `AdmissionCommand`."""

    SCHEMA: ClassVar[str] = "fleet.admission_reply"

    region: SiteId
    ok: bool
    reason: str = ""
    edges: list[AdmittedEdge] = Field(default_factory=list)
    enroll_url: str = Field(default="", description="Where new edges of the region redeem tokens.")
