"""Which edges a regional admits on its leaf port: enrollment tokens, approval, revocation.

Pure: a registry and a request in, the next registry and an answer out; the clock is an
argument. The regional daemon keeps the registry (`fleetbus.runtime.admission`), verifies
token signatures (`fleetbus.runtime.enrolltoken`) before asking here, and makes its server
admit exactly the registry's admitted keys.

Rules (docs/security.md#enrollment):
- a token names one edge and one region, expires, and is redeemed once: the key and machine
  id it was redeemed with are bound to the edge; asking again with the same ones is answered
  as before (a lost reply), with another key or machine id it is refused (a new token is
  needed, which replaces the binding);
- policy `token` admits on a valid token, `approve` holds the edge as pending until an
  operator approves it;
- a revoked edge's key is no longer admitted; only a new token brings the edge back.
"""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Policy = Literal["token", "approve"]


class Status(StrEnum):
    ADMITTED = "admitted"
    PENDING = "pending"
    REFUSED = "refused"


class Claims(BaseModel):
    """What an enrollment token says, once its signature is verified."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    edge: str
    region: str
    expires: AwareDatetime
    token_id: str = Field(min_length=8)
    issuer: str  # the public key that signed it
    url: str = ""  # where the edge reaches its regional to redeem it (may be empty)
    # The hub's desired-state signing keys the edge pins: the trust anchor comes with the
    # token the operator hands the edge, never from the regional (docs/security.md).
    hub_keys: tuple[str, ...] = ()


class Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    nkey: str
    machine_id: str = ""
    token_id: str = ""
    at: datetime


class Registry(BaseModel):
    """A region's edges by id: admitted (their keys linked), pending approval, revoked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    admitted: dict[str, Entry] = Field(default_factory=dict)
    pending: dict[str, Entry] = Field(default_factory=dict)
    revoked: dict[str, Entry] = Field(default_factory=dict)
    used_tokens: tuple[str, ...] = ()

    def status(self, edge: str) -> str:
        for status, entries in (
            ("admitted", self.admitted),
            ("pending", self.pending),
            ("revoked", self.revoked),
        ):
            if edge in entries:
                return status
        return "unknown"


class Answer(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Status
    reason: str = ""


def _without(entries: dict[str, Entry], edge: str) -> dict[str, Entry]:
    return {k: v for k, v in entries.items() if k != edge}


HOW_TO_RENEW = "create a new one with `fleetbus edge token create`"


def _refusal(
    registry: Registry, claims: Claims, *, region: str, edge: str, nkey: str, max_edges: int, now: datetime
) -> str:
    """Why the request cannot be granted, in the order an operator would check; "" if it can."""
    others = {
        e.nkey for entries in (registry.admitted, registry.pending) for k, e in entries.items() if k != edge
    }
    known = edge in registry.admitted or edge in registry.pending
    expired = f"{claims.expires.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    checks = (
        (nkey in others, "that key is another edge's: each edge generates its own"),
        (claims.region != region, f"the token is for region {claims.region!r}, this is {region!r}"),
        (claims.edge != edge, f"the token is for edge {claims.edge!r}, not {edge!r}"),
        (
            claims.token_id in registry.used_tokens,
            f"the token was used already (with another key or machine id); {HOW_TO_RENEW}",
        ),
        (now >= claims.expires, f"the token expired at {expired}; {HOW_TO_RENEW}"),
        (
            not known and len(registry.admitted) + len(registry.pending) >= max_edges,
            f"region {region!r} enrolls at most {max_edges:,} edges (max_edges)",
        ),
    )
    return next((reason for failed, reason in checks if failed), "")


def redeem(
    registry: Registry,
    claims: Claims,
    *,
    region: str,
    edge: str,
    nkey: str,
    machine_id: str,
    policy: Policy,
    max_edges: int,
    now: datetime,
) -> tuple[Registry, Answer]:
    """An edge presents a verified token with the key and machine id it wants bound."""

    if claims.token_id in registry.used_tokens:
        for status, entries in ((Status.ADMITTED, registry.admitted), (Status.PENDING, registry.pending)):
            entry = entries.get(edge)
            same = entry is not None and (entry.token_id, entry.nkey, entry.machine_id) == (
                claims.token_id,
                nkey,
                machine_id,
            )
            if same:
                return registry, Answer(status=status)  # asked again: the reply was lost
    reason = _refusal(registry, claims, region=region, edge=edge, nkey=nkey, max_edges=max_edges, now=now)
    if reason:
        return registry, Answer(status=Status.REFUSED, reason=reason)
    entry = Entry(nkey=nkey, machine_id=machine_id, token_id=claims.token_id, at=now)
    admitted, pending = _without(registry.admitted, edge), _without(registry.pending, edge)
    status = Status.ADMITTED if policy == "token" else Status.PENDING
    (admitted if status is Status.ADMITTED else pending)[edge] = entry
    updated = Registry(
        admitted=admitted,
        pending=pending,
        revoked=_without(registry.revoked, edge),
        used_tokens=(*registry.used_tokens, claims.token_id),
    )
    return updated, Answer(status=status)


class AdmissionError(ValueError):
    """An approve or revoke that does not fit the registry (the message says why)."""


def approve(registry: Registry, edge: str) -> Registry:
    entry = registry.pending.get(edge)
    if entry is None:
        msg = f"edge {edge!r} is not pending approval here (it is {registry.status(edge)})"
        raise AdmissionError(msg)
    return registry.model_copy(
        update={"pending": _without(registry.pending, edge), "admitted": {**registry.admitted, edge: entry}}
    )


def revoke(registry: Registry, edge: str, now: datetime) -> tuple[Registry, Entry]:
    """`edge` admitted no more (nor pending); returns the entry whose key is now refused."""
    entry = registry.admitted.get(edge) or registry.pending.get(edge)
    if entry is None:
        msg = f"edge {edge!r} is not admitted here (it is {registry.status(edge)})"
        raise AdmissionError(msg)
    updated = registry.model_copy(
        update={
            "admitted": _without(registry.admitted, edge),
            "pending": _without(registry.pending, edge),
            "revoked": {**registry.revoked, edge: entry.model_copy(update={"at": now})},
        }
    )
    return updated, entry
