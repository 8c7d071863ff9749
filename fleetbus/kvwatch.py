"""Read a bucket as "current values, then live changes", from one ordered consumer.

    async with contextlib.aclosing(watch(js, "inventory", "r1.*")) as records:
        async for record in records:      # every current value (record.initial), then changes
            ...

Works on any `KV_<bucket>` stream, including the hub's sourced ones that nats-py's own KV
API cannot create, and gives what `KeyValue.watch` does not: the time the value was stored
here (for a sourced bucket, when the hub received it) and a reliable end of the initial
values (nats-py 2.16's watcher can signal that end before the values; DESIGN §8 notes).
"""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from schemas import subjects

DELETE_OPERATIONS = ("DEL", "PURGE")


@dataclass(frozen=True)
class KvRecord:
    key: str
    value: bytes
    revision: int  # the stream sequence in this bucket
    stored_at: datetime
    deleted: bool
    initial: bool  # part of the values current when the watch started


async def count(js: JetStreamContext, bucket: str, key: str = ">") -> int:
    """How many keys under `key` hold a value or a delete marker now."""
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=subjects.kv_subject(bucket, key))
    return len(info.state.subjects or {})


async def watch(
    js: JetStreamContext, bucket: str, key: str = ">", *, live: bool = True
) -> AsyncIterator[KvRecord]:
    """The last value of every key under `key` (wildcards allowed), then every change until
    the caller stops iterating; with `live=False`, stop after the current values."""
    prefix = subjects.kv_subject(bucket, "")
    pending = await count(js, bucket, key)
    if pending == 0 and not live:
        return
    sub = await js.subscribe(
        subjects.kv_subject(bucket, key),
        stream=f"KV_{bucket}",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )
    initial = pending > 0
    try:
        async for msg in sub.messages:
            meta = msg.metadata
            operation = (msg.headers or {}).get("KV-Operation", "")
            yield KvRecord(
                key=msg.subject.removeprefix(prefix),
                value=msg.data,
                revision=meta.sequence.stream,
                stored_at=meta.timestamp,
                deleted=operation in DELETE_OPERATIONS,
                initial=initial,
            )
            if initial and meta.num_pending == 0:
                initial = False
                if not live:
                    return
    finally:
        with contextlib.suppress(NatsError):  # the connection may already be closed
            await sub.unsubscribe()


async def current(js: JetStreamContext, bucket: str, key: str = ">") -> list[KvRecord]:
    """The last value of every key under `key`, deleted keys left out."""
    return [r async for r in watch(js, bucket, key, live=False) if not r.deleted]
