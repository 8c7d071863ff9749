"""The hub's desk: signed write requests from operators, and the audit trail they leave.

Every profile, override and operator write goes through the hub (docs/architecture.md#one-writer):
an operator's client sends a `DeskRequest` on `fleet.hub.desk`, signed with the operator's
nkey (the `Fleetbus-Signature` header, base64 ed25519 over the body bytes as sent). The hub
checks the signature against the key it registered for that operator, that the request is
fresh and not seen before, and that the operator's role allows it, then does it and answers
a `DeskReply`. Every request, allowed or refused, leaves an `AuditRecord` in the hub's AUDIT.
"""

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import AwareDatetime, Field, JsonValue

from schemas.base import Message, SiteId


class Role(StrEnum):
    ADMIN = "admin"  # everything
    OPERATOR = "operator"  # profiles, overrides (of its regions only, if it has any)
    VIEWER = "viewer"  # reads


class DeskRequest(Message):
    """An operator's write request to the hub's desk, signed in the `Fleetbus-Signature` header."""

    SCHEMA: ClassVar[str] = "fleet.desk.request"

    op: str = Field(min_length=1, max_length=64, description="e.g. profile.apply, override.set, operator.add")
    args: dict[str, JsonValue] = Field(default_factory=dict)
    operator: str = Field(default="", description="The signer's public nkey (U…); empty if unsigned.")
    issued_at: AwareDatetime
    nonce: str = Field(min_length=8, max_length=64, description="Random; the hub refuses a nonce seen twice.")
    reason: str = Field(default="", max_length=1000, description="Why (`--reason`); kept in the audit trail.")


class DeskNonce(Message):
    """A desk request's nonce, seen: in the hub's `nonces` bucket under the nonce's SHA-256
    (hex), kept for twice the time a request stays fresh. Stored with create-only semantics,
    so a request replayed at any daemon of a clustered hub, even after a failover, is refused."""

    SCHEMA: ClassVar[str] = "fleet.desk.nonce"

    operator: str = Field(default="", description="The public nkey (U…) that signed the request.")
    seen_at: AwareDatetime = Field(description="When the hub first saw it (the hub's clock).")


class DeskReply(Message):
    """The hub desk's answer: done (with its result) or why not."""

    SCHEMA: ClassVar[str] = "fleet.desk.reply"

    ok: bool
    error_kind: str | None = Field(default=None, description="config, missing, conflict, forbidden")
    error: str | None = None
    actor: str = Field(default="", description="Who the hub took the caller for.")
    result: dict[str, JsonValue] = Field(default_factory=dict)


class OperatorRecord(Message):
    """One operator the hub knows (bucket `operators`, key: name)."""

    SCHEMA: ClassVar[str] = "fleet.operator"

    name: SiteId
    public_key: str
    role: Role
    regions: list[SiteId] = Field(default_factory=list, description="Empty: every region.")
    added_by: str
    added_at: datetime
    revoked_at: datetime | None = None


class AuditRecord(Message):
    """One request the desk handled (stream AUDIT, subject `fleet.hub.audit.<op>`)."""

    SCHEMA: ClassVar[str] = "fleet.audit"

    at: datetime
    actor: str = Field(
        description="The verified operator's name; `unverified:<why>` when the signature failed."
    )
    role: str = ""
    op: str
    target: str = ""
    revision: int | None = None
    outcome: str = Field(description="ok, refused, failed")
    detail: str = Field(default="", description="A summary of the change, or why it was refused.")
    reason: str = ""
