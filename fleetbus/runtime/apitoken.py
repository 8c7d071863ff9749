"""Tokens for the hub's dashboard and JSON API (docs/security.md#dashboard-and-api).

`fbv1.<claims>.<signature>`: the claims (role, expiry, a random id, who asked for it) as
base64url JSON, signed with the hub's signing key (ed25519, the signed text starting with
`fbv1.` so it can never pass for a desired-state signature). The hub mints them at an
admin's request (`fleetbus token create`, through its desk) and its dashboard checks them:
the signature with its own key, the expiry with its clock.
"""

import base64
import binascii
import secrets
from collections.abc import Collection
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from fleetbus.errors import FleetbusError
from fleetbus.runtime import signing
from fleetbus.runtime.signing import Signer
from schemas.desk import Role

PREFIX = "fbv1"


class TokenError(FleetbusError):
    """A dashboard token that is not one, not the hub's, or expired; the message says which."""


class ApiClaims(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    expires: AwareDatetime
    token_id: str = Field(min_length=8)
    issued_by: str  # the operator who asked for it
    issuer: str  # the hub key that signed it
    regions: tuple[str, ...] = ()  # it shows only these regions' edges; empty: every region


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(
    signer: Signer, *, role: Role, expires: datetime, issued_by: str, regions: Collection[str] = ()
) -> tuple[str, ApiClaims]:
    claims = ApiClaims(
        role=role,
        expires=expires,
        token_id=secrets.token_hex(12),
        issued_by=issued_by,
        issuer=signer.key_id,
        regions=tuple(sorted(regions)),
    )
    body = f"{PREFIX}.{_b64(claims.model_dump_json().encode())}"
    return f"{body}.{_b64(signer.sign(body.encode()))}", claims


def check(token: str, trusted: Collection[str], now: datetime) -> ApiClaims:
    """The claims of `token` if one of `trusted` signed it and it has not expired."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        msg = f"not a dashboard token (expected {PREFIX}.<claims>.<signature>)"
        raise TokenError(msg)
    try:
        claims = ApiClaims.model_validate_json(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, binascii.Error, ValidationError) as exc:
        msg = f"not a dashboard token: {type(exc).__name__}"
        raise TokenError(msg) from exc
    body = f"{parts[0]}.{parts[1]}".encode()
    if claims.issuer not in trusted or not signing.verify(
        claims.issuer, body, base64.b64encode(signature).decode()
    ):
        msg = "the token was not signed by this hub"
        raise TokenError(msg)
    if claims.expires <= now:
        msg = f"the token expired at {claims.expires.isoformat()}: ask an admin for a new one"
        raise TokenError(msg)
    return claims
