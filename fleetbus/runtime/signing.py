"""ed25519 for signed desired state (`fleetbus.core.trust` says what is signed and judged).

`Signer` is the hub's: it stamps each record it stores with the headers an edge checks.
`Verifier` is an edge's (or a simulator's): the keys it pinned, the highest revision it took
per key (kept in a file across restarts, so a replay of an older revision is refused after a
restart too), and what it does with a refusal: count it, log it, tell its listener (the edge
daemon reports an alert event upstream), once per distinct record.

Keys are nkeys (the same ed25519 key pairs as NATS identities): a signer's id is its public
key, `U…`.
"""

import base64
import binascii
import hashlib
import json
import os
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping
from functools import lru_cache
from pathlib import Path

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from fleetbus.core import trust
from fleetbus.core.trust import Record, Refusal, Seen
from fleetbus.errors import ConfigError
from fleetbus.runtime import log, sealing
from fleetbus.runtime.enrolltoken import user_key
from fleetbus.runtime.identity import Identity
from fleetbus.runtime.metrics import DaemonMetrics
from schemas.headers import REVISION, SIGNATURE, SIGNER, STUB, STUB_BODY, STUB_SIGNATURE

logger = log.get_logger(__name__)


class Signer:
    """Signs records with one nkey seed (the hub's desired-state key)."""

    def __init__(self, identity: Identity) -> None:
        self.key_id = identity.public_key
        self._seed = identity.seed()
        self._pair = nkeys.from_seed(self._seed.encode())

    def open(self, box: str) -> bytes:
        """A secret sealed to this key (`fleetbus.runtime.sealing`); `SealError` if it is not."""
        return sealing.unseal(box, self._seed)

    def sign(self, data: bytes) -> bytes:
        return bytes(self._pair.sign(data))

    def headers(self, bucket: str, key: str, revision: int, operation: str, body: bytes) -> dict[str, str]:
        return {
            SIGNER: self.key_id,
            REVISION: str(revision),
            SIGNATURE: self._sign(bucket, key, revision, operation, body),
        }

    def stub_headers(self, bucket: str, key: str, revision: int, stub: bytes) -> dict[str, str]:
        """The stub of a revision (`fleetbus.core.trust`: what an edge the profile no longer
        selects receives), carried on the revision's own record."""
        return {
            STUB_BODY: base64.b64encode(stub).decode(),
            STUB_SIGNATURE: self._sign(bucket, key, revision, trust.STUB_OPERATION, stub),
        }

    def _sign(self, bucket: str, key: str, revision: int, operation: str, body: bytes) -> str:
        signature = self._pair.sign(trust.signed_bytes(bucket, key, revision, operation, body))
        return base64.b64encode(signature).decode()


@lru_cache(maxsize=64)
def _public(key: str) -> VerifyKey | None:
    try:
        return user_key(key)
    except ValueError:
        return None


def verify(signer: str, data: bytes, signature: str) -> bool:
    """True if `signature` (base64) is `signer`'s over `data`."""
    key = _public(signer)
    if key is None:
        return False
    try:
        key.verify(data, base64.b64decode(signature, validate=True))
    except (binascii.Error, ValueError, BadSignatureError):
        return False
    return True


def check_keys(keys: Collection[str], *, field: str) -> tuple[str, ...]:
    """`keys` if each is a public nkey, else `ConfigError` naming `field`."""
    for key in keys:
        if _public(key) is None:
            msg = f"{field}: {key!r} is not a public user nkey (U…, 56 characters)"
            raise ConfigError(msg)
    return tuple(keys)


Refused = Callable[[Record, Refusal], None]
MAX_REMEMBERED = 10_000  # refusals remembered (each counted once)
GOOD_KEPT = 4096  # signatures remembered as verified
ALERT_WINDOW = 60.0  # s
ALERTS_PER_MINUTE = 10


class Verifier:
    """Judges every desired-state record a site reads (`fleetbus.nats.kv.Bucket(guard=…)`),
    and keeps the last record it took per key: a replica holds one record per key, so a
    refused record pushes the good one out of it, and a purge removes both; the kept record
    is what stands then (only a signed delete removes a key). Kept in `state` (JSON) so a
    restart does not lose it."""

    def __init__(
        self,
        trusted: Collection[str],
        *,
        state: Path | None = None,
        metrics: DaemonMetrics | None = None,
        on_refused: Refused | None = None,
        clock: Callable[[], float] = time.monotonic,
        track: bool = True,
    ) -> None:
        """`track`: keep the last record taken per key and refuse older revisions (an edge);
        without, only signatures are checked (the hub reading its own buckets, whose history
        it serves)."""
        if not trusted:
            msg = (
                "no trusted hub key to verify desired state with: set trusted_keys "
                "(FLEETBUS_TRUSTED_KEYS) or enroll with a token that carries them"
            )
            raise ConfigError(msg)
        self.trusted = frozenset(trusted)
        self.state = state
        self.metrics = metrics
        self.on_refused = on_refused
        # Whether a stub's profile selects this site (set by its reconciler, which knows its
        # labels); without it every stub is refused (`trust.judge`).
        self.selects: Callable[[Record], bool] | None = None
        self.clock = clock
        self.track = track
        # How a record was signed, if not as it is stored (`fleetbus.core.assignment.origin`:
        # a copy in `assigned` read as such); kept and counted as stored.
        self.signed_as: Callable[[Record], Record] | None = None
        # Signatures that verified (signer, digest of what was signed, signature): one record
        # copied to many keys (`assigned`, read by a process of hollow edges) verifies once.
        self._good: OrderedDict[tuple[str, bytes, str], None] = OrderedDict()
        self.kept: dict[str, Record] = self._load()
        self._dirty = False
        self._told: set[tuple[str, str, str]] = set()  # refusals already counted
        self._alerts: deque[float] = deque()  # when the last refusals were reported

    @property
    def seen(self) -> dict[str, Seen]:
        return {k: _seen(r) for k, r in self.kept.items()}

    @staticmethod
    def _id(bucket: str, key: str) -> str:
        return f"{bucket}/{key}"

    def _load(self) -> dict[str, Record]:
        if self.state is None or not self.state.exists():
            return {}
        try:
            raw = json.loads(self.state.read_text())
            return {
                k: Record(
                    v["bucket"], v["key"], v["operation"], base64.b64decode(v["body"]), dict(v["headers"])
                )
                for k, v in raw.items()
            }
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            # Losing it only weakens replay protection until the next revision: say so.
            logger.warning(
                "kept revisions unreadable; starting afresh", file=str(self.state), error=repr(exc)
            )
            return {}

    def _save(self) -> None:
        if self.state is None:
            return
        self.state.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state.with_name(f".{self.state.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        records = {
            k: {
                "bucket": r.bucket,
                "key": r.key,
                "operation": r.operation,
                "body": base64.b64encode(r.body).decode(),
                "headers": dict(r.headers),
            }
            for k, r in self.kept.items()
        }
        tmp.write_text(json.dumps(records))
        tmp.replace(self.state)

    def accept(self, record: Record, *, quiet: bool = False) -> bool:
        """Whether `record` may be taken. Taking it makes it the key's kept record, unless
        `quiet` (a record of the past read while looking for the last good one)."""
        ident = self._id(record.bucket, record.key)
        kept = self.kept.get(ident) if self.track else None
        seen = _seen(kept) if kept else None
        judged = self.signed_as(record) if self.signed_as is not None else record
        refusal = trust.judge(
            judged, trusted=self.trusted, seen=seen, verify=self._verify, selects=self.selects
        )
        if refusal is Refusal.WITHHELD and kept is not None and kept.digest == record.digest:
            # The stub it took, read again after its labels changed: what stands is that stub
            # until the regional hands the profile, and nobody withheld anything.
            return True
        if refusal is not None:
            if not quiet:
                self._refused(record, refusal)
            return False
        revision = trust.revision_of(record.headers) or 0
        # A higher revision, or the other record of the same one (a profile's and its stub:
        # the last taken says whether this revision is for this edge).
        if (
            self.track
            and not quiet
            and (seen is None or revision > seen.revision or record.digest != seen.digest)
        ):
            self.kept[ident] = Record(
                record.bucket, record.key, record.operation, record.body, _signature(record)
            )
            self._dirty = True
        return True

    def _verify(self, signer: str, data: bytes, signature: str) -> bool:
        known = (signer, hashlib.sha256(data).digest(), signature)
        if known in self._good:
            self._good.move_to_end(known)
            return True
        if not verify(signer, data, signature):
            return False
        self._good[known] = None
        if len(self._good) > GOOD_KEPT:
            self._good.popitem(last=False)
        return True

    def flush(self) -> None:
        """Write what was taken since the last flush to `state` (a reader calls it once per
        burst of records, not once per record)."""
        if self._dirty:
            self._save()
            self._dirty = False

    def last_taken(self, bucket: str, key: str) -> Record | None:
        """The last record taken for `key` of `bucket` (a delete, too), if any."""
        return self.kept.get(self._id(bucket, key))

    def taken_keys(self, bucket: str) -> list[str]:
        return sorted(r.key for r in self.kept.values() if r.bucket == bucket)

    def _refused(self, record: Record, refusal: Refusal) -> None:
        told = (self._id(record.bucket, record.key), record.digest, refusal.value)
        if told in self._told:
            return
        if len(self._told) >= MAX_REMEMBERED:
            self._told.clear()  # bounded: a flood of distinct junk may then be counted twice
        self._told.add(told)
        if self.metrics:
            self.metrics.desired_refused.labels(bucket=record.bucket, reason=refusal.value).inc()
        logger.warning(
            "desired state refused; the last good value stands",
            bucket=record.bucket,
            key=record.key,
            reason=refusal.value,
            revision=record.headers.get(REVISION),
            signer=record.headers.get(SIGNER),
        )
        if self.on_refused and self._may_alert():
            self.on_refused(record, refusal)

    def _may_alert(self) -> bool:
        """At most `ALERTS_PER_MINUTE` alerts: a flood of junk is counted, not echoed upstream."""
        now = self.clock()
        while self._alerts and now - self._alerts[0] > ALERT_WINDOW:
            self._alerts.popleft()
        if len(self._alerts) >= ALERTS_PER_MINUTE:
            return False
        self._alerts.append(now)
        return True


def _seen(kept: Record) -> Seen:
    return Seen(trust.revision_of(kept.headers) or 0, kept.digest, kept.operation)


def _signature(record: Record) -> dict[str, str]:
    """The headers a kept record needs to be judged again: its signature's."""
    return {k: v for k, v in record.headers.items() if k in (SIGNER, REVISION, SIGNATURE, STUB)}


def stub_record(headers: Mapping[str, str]) -> tuple[bytes, dict[str, str]] | None:
    """The stub a signed profile record carries, as the record a regional hands an edge
    (body, headers); None if it carries none or an unreadable one."""
    body, signature = headers.get(STUB_BODY), headers.get(STUB_SIGNATURE)
    if not body or not signature:
        return None
    try:
        stub = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    return stub, {
        SIGNER: headers.get(SIGNER, ""),
        REVISION: headers.get(REVISION, ""),
        SIGNATURE: signature,
        STUB: "1",
    }


def describe(headers: Mapping[str, str]) -> str:
    """`revision N signed by U…` for messages and logs."""
    return f"revision {headers.get(REVISION, '?')} signed by {headers.get(SIGNER, 'nobody')}"
