"""Signed desired state: what the hub signs, and whether an edge takes a record
(docs/security.md#signed-desired-state).

The hub signs each value and each delete it stores in `profiles` and `overrides` with
ed25519 over `signed_bytes`: the bucket, the key, the revision it claims, the operation and
the SHA-256 of the body, so a signature moved to another key, bucket, revision or body fails.
An edge takes a record only if its signer is a key it pinned, the signature holds, and its
revision is not lower than the highest it took for that key (a replayed older revision is
refused; the same record seen again is not a replay).

A *stub* (operation `STUB`) is a profile revision without its content, signed by the hub
beside the profile: a regional hands it to an edge the profile stopped selecting
(`fleetbus.core.assignment`). An edge takes it as "this revision is not for you" only if
the stub's selector indeed does not select it: otherwise the regional is withholding the
profile, and the stub is refused (`WITHHELD`), so leaving something out never deletes it.

Pure: the signature check itself is passed in (`fleetbus.runtime.signing.verify`).
"""

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from schemas.headers import KV_DELETES, KV_OPERATION, REVISION, SIGNATURE, SIGNER, STUB

DOMAIN = b"fleetbus-desired-state/1"
PUT = "PUT"
DELETE = "DEL"
STUB_OPERATION = "STUB"


class Refusal(StrEnum):
    """Why an edge refused a record (the `reason` label of `fleetbus_desired_refused_total`)."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"  # signature headers present but unreadable
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    REPLAYED = "replayed"
    WITHHELD = "withheld"  # a stub of a profile that selects this edge


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
    operation: str = PUT


def operation_of(headers: Mapping[str, str]) -> str:
    """PUT, DEL (a delete or purge) or STUB, as a record's headers say."""
    if headers.get(KV_OPERATION, "") in KV_DELETES:
        return DELETE
    return STUB_OPERATION if headers.get(STUB) else PUT


def signed_bytes(bucket: str, key: str, revision: int, operation: str, body: bytes) -> bytes:
    """What the hub signs for one record."""
    fields = (DOMAIN, bucket.encode(), key.encode(), str(revision).encode(), operation.encode())
    return b"\n".join((*fields, hashlib.sha256(body).hexdigest().encode()))


def revision_of(headers: Mapping[str, str]) -> int | None:
    """The revision a record claims; None if it claims none or an unreadable one."""
    raw = headers.get(REVISION, "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


Verify = Callable[[str, bytes, str], bool]  # (signer's public key, signed bytes, signature)


def _signature_refusal(record: Record, trusted: Collection[str], verify: Verify) -> Refusal | None:
    signer, signature = record.headers.get(SIGNER), record.headers.get(SIGNATURE)
    if signer is None and signature is None and REVISION not in record.headers:
        return Refusal.UNSIGNED
    revision = revision_of(record.headers)
    if not signer or not signature or revision is None:
        return Refusal.MALFORMED
    if signer not in trusted:
        return Refusal.UNKNOWN_KEY
    signed = signed_bytes(record.bucket, record.key, revision, record.operation, record.body)
    return None if verify(signer, signed, signature) else Refusal.BAD_SIGNATURE


def judge(
    record: Record,
    *,
    trusted: Collection[str],
    seen: Seen | None,
    verify: Verify,
    selects: Callable[[Record], bool] | None = None,
) -> Refusal | None:
    """None if an edge may take `record`, else why not. `selects`: whether a stub's profile
    selects this edge (then the stub is refused); without it, stubs are refused."""
    if (refusal := _signature_refusal(record, trusted, verify)) is not None:
        return refusal
    revision = revision_of(record.headers) or 0
    if seen is not None and (
        revision < seen.revision
        # The hub signs one record per revision, and beside a profile revision its stub.
        or (
            revision == seen.revision
            and record.digest != seen.digest
            and {record.operation, seen.operation} != {PUT, STUB_OPERATION}
        )
    ):
        return Refusal.REPLAYED
    if record.operation == STUB_OPERATION and (selects is None or selects(record)):
        return Refusal.WITHHELD
    return None
