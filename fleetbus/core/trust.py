"""Signed desired state: what the hub signs, and whether an edge takes a record
(docs/security.md#signed-desired-state).

The hub signs each value and each delete it stores in `profiles` and `overrides` with
ed25519 over `signed_bytes`: the bucket, the key, the revision it claims, the operation and
the SHA-256 of the body, so a signature moved to another key, bucket, revision or body fails.
An edge takes a record only if its signer is a key it pinned, the signature holds, and its
revision is not lower than the highest it took for that key (a replayed older revision is
refused; the same record seen again is not a replay).

Pure: the signature check itself is passed in (`fleetbus.runtime.signing.verify`).
"""

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from schemas.headers import REVISION, SIGNATURE, SIGNER

DOMAIN = b"fleetbus-desired-state/1"
PUT = "PUT"
DELETE = "DEL"


class Refusal(StrEnum):
    """Why an edge refused a record (the `reason` label of `fleetbus_desired_refused_total`)."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"  # signature headers present but unreadable
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    REPLAYED = "replayed"


@dataclass(frozen=True)
class Record:
    """One stored record of a desired-state bucket, as a replica holds it."""

    bucket: str
    key: str
    operation: str  # PUT or DEL (a purge counts as a delete)
    body: bytes
    headers: Mapping[str, str]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.operation.encode() + b"\n" + self.body).hexdigest()


@dataclass(frozen=True)
class Seen:
    """The highest revision an edge took for a key, and which record that was."""

    revision: int
    digest: str


def signed_bytes(bucket: str, key: str, revision: int, operation: str, body: bytes) -> bytes:
    """What the hub signs for one record."""
    fields = (DOMAIN, bucket.encode(), key.encode(), str(revision).encode(), operation.encode())
    return b"\n".join((*fields, hashlib.sha256(body).hexdigest().encode()))


def revision_of(headers: Mapping[str, str]) -> int | None:
    """The revision a record claims; None if it claims none or an unreadable one."""
    raw = headers.get(REVISION, "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


Verify = Callable[[str, bytes, str], bool]  # (signer's public key, signed bytes, signature)


def judge(record: Record, *, trusted: Collection[str], seen: Seen | None, verify: Verify) -> Refusal | None:
    """None if an edge may take `record`, else why not."""
    signer, signature = record.headers.get(SIGNER), record.headers.get(SIGNATURE)
    if signer is None and signature is None and REVISION not in record.headers:
        return Refusal.UNSIGNED
    revision = revision_of(record.headers)
    if not signer or not signature or revision is None:
        return Refusal.MALFORMED
    if signer not in trusted:
        return Refusal.UNKNOWN_KEY
    if not verify(
        signer, signed_bytes(record.bucket, record.key, revision, record.operation, record.body), signature
    ):
        return Refusal.BAD_SIGNATURE
    if seen is not None and (
        revision < seen.revision or (revision == seen.revision and record.digest != seen.digest)
    ):
        return Refusal.REPLAYED
    return None
