"""Read a bucket as "current values, then live changes".

    records, seen = await snapshot(js, "inventory", "r1.*")     # every current value
    async for record in changes(js, "inventory", "r1.*", after=seen):   # then each change
        ...

or both at once with `watch()`. Works on any `KV_<bucket>` stream, including the hub's
sourced ones that nats-py's own KV API cannot create, and gives what `KeyValue.watch` does
not: the time a value was stored here (for a sourced bucket, when the hub received it) and a
reliable end of the current values (nats-py 2.16's watcher can signal that end before the
values arrive). `changes()` starts right after the sequence `snapshot()` read up to, so a
change made in between is delivered (possibly twice; `watch()` drops the repeat).
"""

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from schemas import subjects

DELETE_OPERATIONS = ("DEL", "PURGE")


@dataclass(frozen=True)
class KvRecord:
    key: str
    value: bytes
    revision: int  # the stream sequence in this bucket
    stored_at: datetime
    deleted: bool


def _record(bucket: str, msg: Msg) -> KvRecord:
    operation = (msg.headers or {}).get("KV-Operation", "")
    return KvRecord(
        key=msg.subject.removeprefix(subjects.kv_subject(bucket, "")),
        value=msg.data,
        revision=msg.metadata.sequence.stream,
        stored_at=msg.metadata.timestamp,
        deleted=operation in DELETE_OPERATIONS,
    )


async def snapshot(js: JetStreamContext, bucket: str, key: str = ">") -> tuple[list[KvRecord], int]:
    """The last record of every key under `key` (wildcards allowed; delete markers included),
    and the bucket's last sequence before reading: pass it to `changes(after=...)`."""
    filter_ = subjects.kv_subject(bucket, key)
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=filter_)
    seen = info.state.last_seq
    if not info.state.subjects:
        return [], seen
    records = []
    sub = await js.subscribe(
        filter_, stream=f"KV_{bucket}", ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
    )
    try:
        async for msg in sub.messages:
            records.append(_record(bucket, msg))
            if msg.metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(NatsError):  # the connection may already be closed
            await sub.unsubscribe()
    return records, seen


async def changes(
    js: JetStreamContext, bucket: str, key: str = ">", *, after: int
) -> AsyncGenerator[KvRecord, None]:
    """Every record written under `key` after sequence `after`, until the caller stops."""
    sub = await js.subscribe(
        subjects.kv_subject(bucket, key),
        stream=f"KV_{bucket}",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=after + 1),
    )
    try:
        async for msg in sub.messages:
            yield _record(bucket, msg)
    finally:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()


async def watch(js: JetStreamContext, bucket: str, key: str = ">") -> AsyncGenerator[KvRecord, None]:
    """Every current record under `key`, then every change, each revision once."""
    records, seen = await snapshot(js, bucket, key)
    latest: dict[str, int] = {}
    for record in records:
        latest[record.key] = record.revision
        yield record
    async for record in changes(js, bucket, key, after=seen):
        if record.revision > latest.get(record.key, 0):
            latest[record.key] = record.revision
            yield record


async def current(js: JetStreamContext, bucket: str, key: str = ">") -> list[KvRecord]:
    """The last value of every key under `key`, deleted keys left out."""
    records, _ = await snapshot(js, bucket, key)
    return [r for r in records if not r.deleted]
