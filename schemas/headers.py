"""Header conventions: CloudEvents attribute names, and `Nats-Msg-Id` = `ce-id` for dedupe.

Any NATS client in any language can produce and read these; no CloudEvents SDK needed.
"""

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TypeVar

from schemas.base import Message, utcnow
from schemas.codec import MSGPACK, decode_body, encode_body
from schemas.errors import DecodeError

CE_ID = "ce-id"
CE_SOURCE = "ce-source"
CE_TYPE = "ce-type"
CE_TIME = "ce-time"
CE_SPECVERSION = "ce-specversion"
CE_DATASCHEMA = "ce-dataschema"
CONTENT_TYPE = "Content-Type"
NATS_MSG_ID = "Nats-Msg-Id"
KV_OPERATION = "KV-Operation"  # what a NATS KV delete or purge carries
KV_DELETES = ("DEL", "PURGE")

SPEC_VERSION = "1.0"

M = TypeVar("M", bound=Message)


def dataschema(cls: type[Message]) -> str:
    """Where a consumer finds the JSON Schema: the file `fleetbus schema export` writes."""
    return f"schemas/{cls.schema_id()}.json"


def envelope(
    message: Message,
    *,
    source: str,
    message_id: str | None = None,
    time: datetime | None = None,
    content_type: str = MSGPACK,
) -> tuple[bytes, dict[str, str]]:
    """Encode `message` and build its headers. The id doubles as the JetStream dedupe key."""
    ident = message_id or uuid.uuid4().hex
    headers = {
        CE_SPECVERSION: SPEC_VERSION,
        CE_ID: ident,
        CE_SOURCE: source,
        CE_TYPE: message.schema_id(),
        CE_TIME: (time or utcnow()).isoformat(),
        CE_DATASCHEMA: dataschema(type(message)),
        CONTENT_TYPE: content_type,
        NATS_MSG_ID: ident,
    }
    return encode_body(message, content_type), headers


def open_envelope(cls: type[M], body: bytes, headers: Mapping[str, str] | None, *, subject: str) -> M:
    """Decode a message of type `cls`; refuse one whose `ce-type` names another type."""
    headers = headers or {}
    ce_type = headers.get(CE_TYPE)
    if ce_type is not None and ce_type != cls.schema_id():
        raise DecodeError(subject, f"ce-type is {ce_type!r}, expected {cls.schema_id()!r}")
    return decode_body(cls, body, subject=subject, content_type=headers.get(CONTENT_TYPE))


# Signed desired state (docs/security.md#signed-desired-state): every value and delete the hub
# stores in `profiles` and `overrides` carries who signed it, the revision it claims, and an
# ed25519 signature over `fleetbus.core.trust.signed_bytes` (base64).
SIGNER = "Fleetbus-Signer"
REVISION = "Fleetbus-Revision"
SIGNATURE = "Fleetbus-Signature"
# A profile's stub (docs/security.md#edges-receive-only-what-concerns-them): the hub signs, beside
# each profile revision, a copy without its spec (`Profile.stub`), carried on the stored record
# as `STUB_BODY` (base64) and `STUB_SIGNATURE`. A regional hands an edge that revision's stub,
# marked `STUB` and signed by `STUB_SIGNATURE`, where the profile stopped selecting that edge.
STUB_BODY = "Fleetbus-Stub-Body"
STUB_SIGNATURE = "Fleetbus-Stub-Signature"
STUB = "Fleetbus-Stub"
