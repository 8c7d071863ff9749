"""Sealed secrets (docs/security.md#sealed-secrets): no bucket or stream holds a plaintext.

A profile or override names a secret in a config value, `{"secretRef": "<name>"}`. The
operator's client seals the value to the hub's key before it leaves the operator's machine;
the hub keeps it so (`SecretRecord`, bucket `secrets`, never replicated), and for each edge
whose desired state references it seals it again to that edge's own key (`SealedBundle`,
bucket `sealed`, one signed key per edge, which only that edge's link may read). Only the
edge opens it, for its driver.
"""

from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import Message, SiteId


class SecretRecord(Message):
    """A secret as the hub keeps it (bucket `secrets`, key = its name): sealed to the hub."""

    SCHEMA: ClassVar[str] = "fleet.secret"

    name: SiteId
    version: int = Field(ge=1, description="1 for the first value; each `secret set` adds one.")
    sealed: str = Field(description="base64 libsodium sealed box of the value, to the hub's X25519 key.")
    sealed_to: str = Field(description="The hub signing key (U…) whose X25519 form opens `sealed`.")
    updated_by: str = ""
    updated_at: datetime | None = None


class SealedSecret(BaseModel):
    """One secret's current version, sealed to one edge's key."""

    model_config = ConfigDict(extra="allow")

    version: int = Field(ge=1)
    box: str = Field(description="base64 libsodium sealed box, to the edge's X25519 key.")


class SealedBundle(Message):
    """The secrets one edge's desired state references (bucket `sealed`, key = the edge id),
    each sealed to that edge's key. Signed by the hub like profiles and overrides."""

    SCHEMA: ClassVar[str] = "fleet.sealed"

    edge: SiteId
    key: str = Field(description="The edge's public nkey (U…) whose X25519 form opens the boxes.")
    secrets: dict[str, SealedSecret] = Field(default_factory=dict)
