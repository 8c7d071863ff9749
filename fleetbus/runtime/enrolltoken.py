"""Enrollment tokens: `fbt1.<claims>.<signature>`, signed by an operator's nkey.

`fleetbus edge token create` signs the claims (`fleetbus.core.admission.Claims`: edge,
region, expiry, a random token id, the issuer's public key, the regional's URL) with the
admin operator's key; a regional accepts tokens signed by the keys in its `enroll_issuers`.
The token is a secret of the edge it names until redeemed: whoever holds it may redeem it
once. The regional's answer carries an HMAC keyed by the token (`reply_proof`), so the
enrolling edge can tell the regional's answer from anyone else's.
"""

import base64
import hashlib
import hmac
import json
import secrets
from datetime import datetime

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import ValidationError

from fleetbus.core.admission import Claims
from fleetbus.errors import FleetbusError

PREFIX = "fbt1"


class TokenError(FleetbusError):
    """A token that is malformed or not signed by a trusted issuer."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_token_id() -> str:
    return secrets.token_hex(12)


def create(
    *, edge: str, region: str, expires: datetime, seed: str, url: str = "", hub_keys: tuple[str, ...] = ()
) -> tuple[str, Claims]:
    """A token for `edge` in `region`, signed with the issuer's nkey `seed`, carrying the
    hub's signing keys the edge is to pin."""
    keys = nkeys.from_seed(seed.strip().encode())
    claims = Claims(
        edge=edge,
        region=region,
        expires=expires,
        token_id=new_token_id(),
        issuer=keys.public_key.decode(),
        url=url,
        hub_keys=hub_keys,
    )
    body = f"{PREFIX}.{_b64(claims.model_dump_json().encode())}"
    return f"{body}.{_b64(keys.sign(body.encode()))}", claims


def user_key(public_key: str) -> VerifyKey:
    """The ed25519 key of a user nkey (`U…`); `ValueError` if it is not one (what
    nats-server would refuse in its config)."""
    try:
        raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    except ValueError as exc:
        msg = "not a user public key (base32)"
        raise ValueError(msg) from exc
    if len(raw) != 35 or raw[0] != nkeys.PREFIX_BYTE_USER:  # prefix, 32 key bytes, crc16
        msg = "not a user public key"
        raise ValueError(msg)
    if nkeys.crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        msg = "not a user public key (bad checksum)"
        raise ValueError(msg)
    return VerifyKey(raw[1:33])


def verify(token: str, issuers: frozenset[str] | set[str]) -> Claims:
    """The claims of `token` if a key in `issuers` signed it; `TokenError` otherwise."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        msg = f"not an enrollment token (expected {PREFIX}.<claims>.<signature>)"
        raise TokenError(msg)
    try:
        claims = Claims.model_validate_json(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, ValidationError) as exc:
        msg = f"a malformed enrollment token: {type(exc).__name__}"
        raise TokenError(msg) from exc
    if claims.issuer not in issuers:
        msg = "the token was not issued by an operator this regional trusts (enroll_issuers)"
        raise TokenError(msg)
    try:
        user_key(claims.issuer).verify(f"{parts[0]}.{parts[1]}".encode(), signature)
    except (ValueError, BadSignatureError) as exc:
        msg = "the token's signature does not verify"
        raise TokenError(msg) from exc
    return claims


def unverified_claims(token: str) -> Claims:
    """What `token` says, unchecked: for the edge, to find its regional (the regional checks)."""
    parts = token.strip().split(".")
    shape = f"expected {PREFIX}.<claims>.<signature>"
    if len(parts) != 3 or parts[0] != PREFIX:
        msg = f"not an enrollment token ({shape})"
        raise TokenError(msg)
    try:
        return Claims.model_validate_json(_unb64(parts[1]))
    except (ValueError, ValidationError) as exc:
        msg = f"not an enrollment token ({shape}): {type(exc).__name__}"
        raise TokenError(msg) from exc


def reply_proof(token: str, *fields: str) -> str:
    """An HMAC of an answer's fields keyed by the token: only the token's holders can make it."""
    message = json.dumps(list(fields)).encode()
    return hmac.new(token.strip().encode(), message, hashlib.sha256).hexdigest()


def proof_ok(token: str, proof: str, *fields: str) -> bool:
    return hmac.compare_digest(reply_proof(token, *fields), proof)
