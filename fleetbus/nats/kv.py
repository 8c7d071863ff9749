"""One typed way to read and write a KV bucket: `Bucket[M]`, and `Mirror[M]`, its live local copy.

    profiles = Bucket(js, subjects.PROFILES_BUCKET, Profile, metrics=metrics)
    entry = await profiles.get("base")                  # Entry[Profile] | None
    await profiles.update("base", new, last=entry.revision)   # compare-and-set
    entries, seen = await profiles.snapshot()           # every current value, and where it ends
    async for entry in profiles.changes(after=seen):    # then each change
    async for entry in profiles.watch():                # both, each revision once

Works on any `KV_<bucket>` stream, including the sourced ones nats-py's KeyValue cannot create
(the hub's view of every region, an edge's replicas), and gives what `KeyValue.watch` does not:
the time a value was stored here (for a sourced bucket, when this site received it) and a
reliable end of the current values. nats-py 2.16's KV watcher can signal that end before the
values arrive (`keys()` found no keys in a full bucket ~1 call in 100), so nothing here uses it:
current values are read with a last-per-subject ordered consumer until nothing is pending, keys
from the stream's per-subject state, a key's history message by message. That workaround is
written here once.

Decoding is written here once too: a value that is not an `M` (written by something other than
fleetbus, or by a newer one gone wrong) is skipped, counted in
`fleetbus_decode_errors_total{kind}` and logged, and the last good value stands, exactly as on
the edges. `Entry.value` is None only for a delete.
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Generic, TypeVar

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import APIError
from nats.js.errors import NotFoundError as NatsNotFoundError

from fleetbus.core import trust
from fleetbus.core.trust import Record
from fleetbus.errors import ConfigError, ConflictError, DecodeError, MissingError
from fleetbus.nats.delivery import messages as delivered
from fleetbus.nats.errors import is_transient
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.signing import Signer, Verifier
from schemas import subjects
from schemas.base import Message
from schemas.codec import JSON, decode_body, encode_body
from schemas.headers import KV_OPERATION

logger = log.get_logger(__name__)

M = TypeVar("M", bound=Message)

# JSStreamWrongLastSequenceErrF, JSStreamWrongLastSequenceConstantErr
WRONG_LAST_SEQUENCE = (10071, 10164)
STREAM_NOT_FOUND = 10059
READ_STALL = 5.0  # s without a record before a read of current values starts again
QUIET = 0.25  # s without a record after which a burst the server says goes on is told anyway
NEVER = datetime.min.replace(tzinfo=UTC)  # a stored time nats-server did not give


@dataclass(frozen=True)
class Entry(Generic[M]):
    """One stored revision of a key: its value (None for a delete), where and when it was stored,
    and how many later records the read this came from still had pending."""

    key: str
    value: M | None
    revision: int  # the stream sequence in this bucket (a replica's differ from the origin's)
    stored_at: datetime
    pending: int = 0
    signed_revision: int | None = None  # the revision its signature claims (signed buckets)
    record: Record | None = None  # as stored (body and headers), for a copy that keeps its signature

    @property
    def deleted(self) -> bool:
        return self.value is None


class Bucket(Generic[M]):
    """The `name` bucket, its values `model`s; written as JSON, read as JSON or msgpack."""

    def __init__(
        self,
        js: JetStreamContext,
        name: str,
        model: type[M],
        *,
        metrics: DaemonMetrics | None = None,
        on_undecodable: Callable[[str, DecodeError], None] | None = None,
        signer: Signer | None = None,
        guard: Verifier | None = None,
        stub: Callable[[M], Message] | None = None,
    ) -> None:
        """`signer`: sign every write (the hub's desired-state buckets), and with `stub` the
        stub of each value too (`Profile.stub`); `guard`: take only records it accepts, the
        others are skipped like undecodable ones (an edge's replicas)."""
        self.js = js
        self.signer = signer
        self.stub = stub
        self.guard = guard
        self.name = name
        self.model = model
        self.stream = subjects.kv_stream(name)
        self.metrics = metrics
        self.on_undecodable = on_undecodable
        self.undecodable: dict[str, str] = {}  # key -> why its latest value was skipped

    def subject(self, key: str = ">") -> str:
        return subjects.kv_subject(self.name, key)

    def _exact(self, key: str) -> str:
        """The subject of one key; `ConfigError` for a wildcard or an empty token (a single-key
        read or write of `*` would otherwise match, or write, something else)."""
        tokens = key.split(".")
        if not key or any(
            not tok or tok in ("*", ">") or not tok.isprintable() or " " in tok for tok in tokens
        ):
            msg = f"{key!r} is not a key of bucket {self.name!r}: dot-separated names, no wildcards"
            raise ConfigError(msg)
        return self.subject(key)

    def _missing(self, exc: NatsNotFoundError) -> MissingError | None:
        """`MissingError` if `exc` says there is no such stream (not: no such message)."""
        if exc.err_code != STREAM_NOT_FOUND:
            return None
        msg = f"there is no {self.name!r} bucket here (yet): is the daemon that creates it running?"
        return MissingError(msg)

    async def _info(self, key: str) -> StreamInfo:
        try:
            return await self.js.stream_info(self.stream, subjects_filter=self.subject(key))
        except NatsNotFoundError as exc:
            raise self._missing(exc) or exc from exc

    # Reading

    def _decode(self, key: str, data: bytes, *, quiet: bool = False) -> M | None:
        """`data` as an `M`; None if it is not one, counted and logged unless `quiet` (a
        value of the past, read again while looking for the last good one)."""
        try:
            value = decode_body(self.model, data, subject=self.subject(key))
        except DecodeError as exc:
            if quiet:
                return None
            self.undecodable[key] = exc.reason
            if self.metrics:
                self.metrics.decode_errors.labels(kind=self.model.SCHEMA).inc()
            logger.warning("undecodable value skipped", bucket=self.name, key=key, reason=exc.reason)
            if self.on_undecodable:
                self.on_undecodable(key, exc)
            return None
        if quiet:
            return value
        self.undecodable.pop(key, None)
        if self.metrics:
            self.metrics.messages_in.labels(kind=self.model.SCHEMA).inc()
        return value

    def _guarded(self, record: Record, *, quiet: bool = False) -> bool:
        """Whether the guard (if any) takes this record."""
        return self.guard is None or self.guard.accept(record, quiet=quiet)

    def _record(self, key: str, data: bytes | None, headers: dict[str, str] | None) -> Record:
        headers = headers or {}
        return Record(self.name, key, trust.operation_of(headers), data or b"", headers)

    def _entry(self, msg: Msg) -> Entry[M] | None:
        """The entry `msg` holds; None if its value cannot be decoded or the guard refuses it."""
        key = msg.subject.removeprefix(self.subject(""))
        record = self._record(key, msg.data, msg.headers)
        if not self._guarded(record):
            return None
        stored = Entry[M](
            key,
            None,
            msg.metadata.sequence.stream,
            msg.metadata.timestamp,
            msg.metadata.num_pending,
            trust.revision_of(record.headers),
            record,
        )
        if _absent(record):
            return stored
        value = self._decode(key, msg.data)
        return None if value is None else replace(stored, value=value)

    async def _latest(self, key: str, *, headers_only: bool = False) -> tuple[list[Msg], int]:
        """The last record of every key under `key`, and the bucket's last sequence before
        reading. Read with a last-per-subject consumer until nothing is pending: the end of
        the current values is known for sure (nats-py's KV watcher can announce it early).
        Keys purged between the count and the read (`fleetbus edge forget`) would leave it
        waiting: a read that stalls for `READ_STALL` s starts again, three times at most."""
        for _ in range(2):
            with contextlib.suppress(TimeoutError):
                return await self._read_latest(key, headers_only)
        return await self._read_latest(key, headers_only)

    async def _read_latest(self, key: str, headers_only: bool = False) -> tuple[list[Msg], int]:
        info = await self._info(key)
        seen = info.state.last_seq
        if not info.state.subjects:
            return [], seen
        found: list[Msg] = []
        sub = await self.js.subscribe(
            self.subject(key),
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            headers_only=headers_only or None,
        )
        try:
            messages = aiter(delivered(sub))
            while True:
                msg = await asyncio.wait_for(anext(messages), READ_STALL)
                found.append(msg)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(NatsError):  # the connection may already be closed
                await sub.unsubscribe()
        return found, seen

    async def snapshot(self, key: str = ">") -> tuple[list[Entry[M]], int]:
        """The last good entry of every key under `key` (wildcards allowed; deletes included),
        and the bucket's last sequence before reading: pass it to `changes(after=...)`."""
        key_filter = key
        messages, seen = await self._latest(key)
        found: list[Entry[M]] = []
        undecodable: list[str] = []
        for msg in messages:
            if (entry := self._entry(msg)) is not None:
                found.append(entry)
            else:
                undecodable.append(msg.subject.removeprefix(self.subject("")))
        # A key whose latest value is bad keeps its last good one, as every reader does.
        lasts = [await self._last_good(bad) for bad in undecodable]
        found += [good for good in lasts if good is not None]
        if self.guard is not None and self.guard.track:
            # A key the replica lost (a refused record pushed it out, or it was purged) keeps
            # what the guard last took for it: only a signed delete removes a key.
            have = {e.key for e in found} | set(undecodable)
            lost = [
                k
                for k in self.guard.taken_keys(self.name)
                if k not in have and subject_matches(key_filter, k)
            ]
            found += [taken for k in lost if (taken := self._taken(k)) is not None]
        return found, seen

    async def records(self, key: str = ">", *, headers_only: bool = False) -> list[Record]:
        """The latest record of every key under `key`, as stored (neither decoded nor judged;
        with `headers_only`, bodies empty: the server sends none)."""
        messages, _ = await self._latest(key, headers_only=headers_only)
        prefix = self.subject("")
        return [self._record(m.subject.removeprefix(prefix), m.data, m.headers) for m in messages]

    async def live_keys(self, key: str = ">") -> list[str]:
        """Keys under `key` whose latest record is not a delete (values not decoded)."""
        messages, _ = await self._latest(key)
        prefix = self.subject("")
        return sorted(
            m.subject.removeprefix(prefix)
            for m in messages
            if trust.operation_of(m.headers or {}) == trust.PUT
        )

    async def current(self, key: str = ">") -> list[Entry[M]]:
        """The last good value of every key under `key`, deleted keys left out."""
        entries, _ = await self.snapshot(key)
        return [e for e in entries if not e.deleted]

    async def values(self, key: str = ">") -> list[M]:
        return [e.value for e in await self.current(key) if e.value is not None]

    async def get(self, key: str) -> Entry[M] | None:
        """The key's last good entry; None if it was never written or is deleted."""
        try:
            raw = await self.js.get_last_msg(self.stream, self._exact(key))
        except NatsNotFoundError as exc:
            if missing := self._missing(exc):
                raise missing from exc
            return None
        record = self._record(key, raw.data, raw.headers)
        if not self._guarded(record):
            good = await self._last_good(key)
            return None if good is None or good.deleted else good
        if _absent(record):
            return None
        if (value := self._decode(key, raw.data or b"")) is not None:
            return Entry(key, value, raw.seq or 0, raw.time or NEVER, 0, trust.revision_of(raw.headers or {}))
        good = await self._last_good(key)
        return None if good is None or good.deleted else good

    async def last_revision(self, key: str) -> int:
        """The bucket sequence of the key's latest record, good, bad or delete (0: never written);
        what a compare-and-set `update` must name."""
        try:
            msg = await self.js.get_last_msg(self.stream, self._exact(key))
        except NatsNotFoundError as exc:
            if missing := self._missing(exc):
                raise missing from exc
            return 0
        return msg.seq or 0

    async def keys(self, key: str = ">") -> list[str]:
        """Keys ever written under `key` (deleted ones included), from the stream's state."""
        info = await self._info(key)
        return sorted(s.removeprefix(self.subject("")) for s in (info.state.subjects or {}))

    async def history(self, key: str) -> list[Entry[M]]:
        """Every record kept for `key`, oldest first (deletes included, undecodable ones skipped),
        read message by message: nats-py's `KeyValue.history()` uses the racy watcher."""
        found: list[Entry[M]] = []
        seq = 1
        while True:
            try:
                raw = await self.js.get_msg(self.stream, seq=seq, subject=self._exact(key), next=True)
            except NatsNotFoundError as exc:
                if missing := self._missing(exc):
                    raise missing from exc
                return found
            seq = (raw.seq or seq) + 1
            stored, signed = raw.time or NEVER, trust.revision_of(raw.headers or {})
            record = self._record(key, raw.data, raw.headers)
            if not self._guarded(record, quiet=True):
                continue
            if _absent(record):
                found.append(Entry(key, None, raw.seq or 0, stored, 0, signed))
            elif (value := self._decode(key, raw.data or b"", quiet=True)) is not None:
                found.append(Entry(key, value, raw.seq or 0, stored, 0, signed))

    async def _last_good(self, key: str) -> Entry[M] | None:
        if self.guard is not None and self.guard.track:  # a replica keeps one record per key
            return self._taken(key)
        entries = await self.history(key)
        return entries[-1] if entries else None

    def _taken(self, key: str) -> Entry[M] | None:
        """The entry of the record the guard last took for `key` (None if none, or if it does
        not decode)."""
        record = self.guard.last_taken(self.name, key) if self.guard else None
        if record is None:
            return None
        signed = trust.revision_of(record.headers)
        if _absent(record):
            return Entry(key, None, 0, NEVER, 0, signed)
        value = self._decode(key, record.body, quiet=True)
        return None if value is None else Entry(key, value, 0, NEVER, 0, signed)

    async def changes(self, key: str = ">", *, after: int) -> AsyncGenerator[Entry[M], None]:
        """Every entry written under `key` after sequence `after`, until the caller stops
        (undecodable ones skipped and counted)."""
        async for entry, _pending in self._changes(key, after=after):
            if entry is not None:
                yield entry

    async def _changes(self, key: str, *, after: int) -> AsyncGenerator[tuple[Entry[M] | None, int], None]:
        """Each record after `after`: its entry (None if undecodable) and how many more the
        consumer had pending when it came (0: the end of a burst)."""
        sub = await self.js.subscribe(
            self.subject(key),
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=ConsumerConfig(opt_start_seq=after + 1),
        )
        try:
            async for msg in delivered(sub):
                yield self._entry(msg), msg.metadata.num_pending
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def watch(self, key: str = ">") -> AsyncGenerator[Entry[M], None]:
        """Every current entry under `key`, then every change, each revision once."""
        entries, seen = await self.snapshot(key)
        latest: dict[str, int] = {}
        for entry in entries:
            latest[entry.key] = entry.revision
            yield entry
        async for entry in self.changes(key, after=seen):
            if entry.revision > latest.get(entry.key, 0):
                latest[entry.key] = entry.revision
                yield entry

    # Writing (a bucket the caller's server holds, not a sourced replica)

    def _stamp(
        self, key: str, operation: str, body: bytes, revision: int | None, value: M | None = None
    ) -> dict[str, str]:
        """The signature headers of a write, if this bucket signs (then `revision` is required),
        and of its stub if this bucket has stubs."""
        if self.signer is None:
            return {}
        if revision is None:
            msg = f"a write to the signed bucket {self.name!r} must name its revision"
            raise ValueError(msg)
        headers = self.signer.headers(self.name, key, revision, operation, body)
        if value is not None and self.stub is not None:
            stub = encode_body(self.stub(value), JSON)
            headers |= self.signer.stub_headers(self.name, key, revision, stub)
        return headers

    async def put(self, key: str, value: M, *, revision: int | None = None) -> int:
        """Store `value` under `key`; returns its bucket sequence. `revision`: what a
        signed bucket's signature claims."""
        body = encode_body(value, JSON)
        headers = self._stamp(key, trust.PUT, body, revision, value) or None
        ack = await self.js.publish(self._exact(key), body, stream=self.stream, headers=headers)
        return ack.seq

    async def update(self, key: str, value: M, *, last: int, revision: int | None = None) -> int:
        """Store `value` only if the key's latest record is revision `last` (0: the key was
        never written); else `ConflictError`. Returns the new revision."""
        body = encode_body(value, JSON)
        try:
            ack = await self.js.publish(
                self._exact(key),
                body,
                stream=self.stream,
                headers={
                    "Nats-Expected-Last-Subject-Sequence": str(last),
                    **self._stamp(key, trust.PUT, body, revision, value),
                },
            )
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
            msg = f"{self.name}/{key} changed since revision {last}"
            raise ConflictError(msg) from exc
        return ack.seq

    async def delete(self, key: str, *, revision: int | None = None) -> None:
        """Mark `key` deleted (its history stays, as `nats kv del` leaves it)."""
        headers = {KV_OPERATION: "DEL", **self._stamp(key, trust.DELETE, b"", revision)}
        await self.js.publish(self._exact(key), b"", stream=self.stream, headers=headers)

    async def put_record(self, key: str, body: bytes, headers: dict[str, str]) -> None:
        """Store a record as it is: a copy of a signed one keeps its signature headers."""
        await self.js.publish(self._exact(key), body, stream=self.stream, headers=headers or None)

    async def purge(self, key: str) -> None:
        """Remove every record of the keys under `key` (wildcards allowed)."""
        await self.js.purge_stream(self.stream, subject=self.subject(key))

    async def require(self, key: str, what: str) -> Entry[M]:
        """`get`, or `MissingError(what)`."""
        entry = await self.get(key)
        if entry is None:
            raise MissingError(what)
        return entry


def _absent(record: Record) -> bool:
    """Whether a record says its key holds nothing: a delete, a purge, or a profile's stub
    (`fleetbus.core.trust`: the revision is not for this edge)."""
    return record.operation != trust.PUT


def subject_matches(pattern: str, key: str) -> bool:
    """Whether the key `key` is under `pattern` (NATS wildcards: `*` one token, `>` the rest)."""
    want, have = pattern.split("."), key.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or part not in ("*", have[i]):
            return False
    return len(want) == len(have)


Changed = list[Entry[M]]


class Mirror(Generic[M]):
    """A live local copy of a bucket (or the keys under `key`): `values`, kept equal to the
    bucket by `run()`, which reads the current values, then follows each change, and reads
    again from the start after a transient failure (a server restarting), so it never stops.

    `loaded` is set once the current values are in. Each listener hears the entries of one
    burst (the whole snapshot, then runs of changes that arrived together), after `values`
    took them: one notice per burst, never a half state."""

    def __init__(self, bucket: Bucket[M], key: str = ">", *, retry: Backoff | None = None) -> None:
        self.bucket = bucket
        self.key = key
        self.values: dict[str, M] = {}
        self.loaded = asyncio.Event()
        self._listeners: list[Callable[[Changed[M]], None]] = []
        self._retry = retry or Backoff(0.2, cap=5.0)

    def listen(self, listener: Callable[[Changed[M]], None]) -> None:
        self._listeners.append(listener)

    async def run(self) -> None:
        """Follow the bucket until cancelled; raise what is not worth retrying."""
        while True:
            try:
                await self._follow()
            except Exception as exc:
                if not (is_transient(exc) or isinstance(exc, MissingError)):
                    raise
                logger.warning(
                    "bucket watch broke; reading it again", bucket=self.bucket.name, error=repr(exc)
                )
            await self._retry.wait()

    async def _follow(self) -> None:
        entries, seen = await self.bucket.snapshot(self.key)
        # Read again after a break: a key gone meanwhile without a delete marker (purged) is
        # told to listeners as a delete, like any other.
        gone = set(self.values) - {e.key for e in entries}
        self.values = {}
        self._take([*entries, *(Entry[M](key, None, 0, NEVER) for key in sorted(gone))])
        self.loaded.set()
        self._retry.reset()
        changes: asyncio.Queue[tuple[Entry[M] | None, int]] = asyncio.Queue()
        reader = asyncio.create_task(self._read(seen, changes), name=f"changes-{self.bucket.name}")
        try:
            await self._bursts(changes, reader)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, after: int, changes: "asyncio.Queue[tuple[Entry[M] | None, int]]") -> None:
        async for item in self.bucket._changes(self.key, after=after):
            changes.put_nowait(item)

    async def _bursts(
        self, changes: "asyncio.Queue[tuple[Entry[M] | None, int]]", reader: "asyncio.Task[None]"
    ) -> None:
        """Tell each burst: the records up to one the server says nothing follows (pending
        0), or, when it says more follows but nothing comes for `QUIET` seconds, what came.
        nats-server can count as pending a record the bucket's per-key limit already removed
        (a key written twice in quick succession): without the quiet rule, the last value
        would wait for the next write (measured: 2 bursts in 30 on a replica catching up)."""
        burst: Changed[M] = []
        while True:
            if changes.empty():  # wait for the next record, the quiet end of a burst, or the end
                getter = asyncio.ensure_future(changes.get())
                done, _ = await asyncio.wait(
                    {getter, reader}, timeout=QUIET if burst else None, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()  # the record, if one came meanwhile, stays queued
                    if reader in done:
                        reader.result()  # raise what ended the read
                        msg = f"the read of bucket {self.bucket.name!r} ended"
                        raise MissingError(msg)
                    self._take(burst)
                    burst = []
                    continue
                entry, pending = getter.result()
            else:
                entry, pending = changes.get_nowait()
            if entry is not None:
                burst.append(entry)
            if pending == 0 and burst:  # the end of a burst, even if its last value was bad
                self._take(burst)
                burst = []

    def _take(self, entries: Iterable[Entry[M]]) -> None:
        entries = list(entries)
        if self.bucket.guard is not None:
            self.bucket.guard.flush()  # what it took is kept before anything acts on it
        for entry in entries:
            if entry.value is None:
                self.values.pop(entry.key, None)
            else:
                self.values[entry.key] = entry.value
        for listener in self._listeners:
            listener(entries)
