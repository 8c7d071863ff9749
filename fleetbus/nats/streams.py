"""Streams as fleetbus builds and reads them, so that nothing above this package needs nats-py.

- `local_stream`: the one set of defaults for every stream a site keeps (file storage, limits
  retention, oldest dropped first, a two-minute duplicate window); tiers give names, subjects
  and limits.
- `transformed_source`: a source in the same domain whose subjects are rewritten on the way in
  (the hub's `applied` bucket from its EVENTS).
- `follow_stream`: a stream's messages as typed values (undecodable ones skipped and counted).
- `account_summary`: what a server's JetStream holds (`fleetbus info`).
"""

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import NotFoundError

from fleetbus.errors import DecodeError
from fleetbus.nats.delivery import messages
from fleetbus.runtime import log
from fleetbus.runtime.metrics import DaemonMetrics
from schemas import subjects
from schemas.base import Message
from schemas.codec import decode_body
from schemas.headers import open_envelope

logger = log.get_logger(__name__)

M = TypeVar("M", bound=Message)

DUPLICATE_WINDOW_S = 120.0

__all__ = [
    "AccountSummary",
    "StreamConfig",
    "StreamSource",
    "account_summary",
    "follow_stream",
    "last_message",
    "local_stream",
    "transformed_source",
]


def local_stream(
    name: str,
    description: str,
    *,
    max_bytes: int,
    subjects: list[str] | None = None,
    max_age_s: float = 0.0,
    per_subject: int = -1,
    transform: tuple[str, str] | None = None,
    direct_get: bool = False,
) -> StreamConfig:
    """A stream this site keeps: file storage, limits retention, the oldest message dropped
    when a limit is reached (and counted by whoever watches the limits), deduplicated by
    `Nats-Msg-Id` for two minutes. `transform` = (subject, stored as)."""
    return StreamConfig(
        name=name,
        description=description,
        subjects=subjects,
        subject_transform=SubjectTransform(src=transform[0], dest=transform[1]) if transform else None,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        max_bytes=max_bytes,
        max_msgs_per_subject=per_subject,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=direct_get or None,
    )


def transformed_source(stream: str, src: str, dest: str) -> StreamSource:
    """`stream` of this domain, its subjects matching `src` stored as `dest`."""
    return StreamSource(name=stream, subject_transforms=[SubjectTransform(src=src, dest=dest)])


async def follow_stream(
    js: JetStreamContext,
    stream: str,
    subject: str,
    cls: type[M],
    *,
    since: datetime | None = None,
    metrics: DaemonMetrics | None = None,
) -> AsyncGenerator[M, None]:
    """The enveloped `cls` messages of `stream` under `subject`: first the latest per subject
    (or, with `since`, every one from then on), then each new one, until the caller stops.

    With `since`, the follow starts from the stream sequence `since` begins at, not from the
    time: nats-py re-creates an ordered consumer (after a gap, or a server restart) from the
    next sequence but keeps the start time in its request, which the server refuses (error
    10094), and a follow by time would hear nothing more."""
    if since is None:
        policy, config = DeliverPolicy.LAST_PER_SUBJECT, ConsumerConfig()
    else:
        start = await first_seq_since(js, stream, subject, since)
        policy, config = DeliverPolicy.BY_START_SEQUENCE, ConsumerConfig(opt_start_seq=start)
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, deliver_policy=policy, config=config
    )
    try:
        async for msg in messages(sub):
            try:
                yield open_envelope(cls, msg.data, msg.headers, subject=msg.subject)
            except DecodeError as exc:
                if metrics:
                    metrics.decode_errors.labels(kind=cls.SCHEMA).inc()
                logger.warning("undecodable message skipped", subject=msg.subject, reason=exc.reason)
    finally:
        with contextlib.suppress(NatsError):  # the connection may already be closed
            await sub.unsubscribe()


READ_TIMEOUT = 5.0  # s: for the first message of a stream the server says it holds


async def _from_time(
    js: JetStreamContext, stream: str, subject: str, since: datetime
) -> tuple[JetStreamContext.PushSubscription, ConsumerInfo, bool]:
    """An ordered push consumer of `stream` under `subject` from `since`, and whether it has
    nothing to deliver (none pending, none delivered yet: what it holds may be on its way)."""
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_TIME,
        config=ConsumerConfig(opt_start_time=since),
    )
    try:
        info = await sub.consumer_info()
    except BaseException:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()
        raise
    return sub, info, info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq)


async def first_seq_since(js: JetStreamContext, stream: str, subject: str, since: datetime) -> int:
    """The sequence of the first message of `stream` under `subject` stored at or after
    `since` (or the next sequence the stream will use, if there is none yet)."""
    sub, info, empty = await _from_time(js, stream, subject, since)
    try:
        if empty:  # the consumer's position is where `since` begins
            delivered = info.delivered
            return (delivered.stream_seq if delivered and delivered.stream_seq else 0) + 1
        first = await sub.next_msg(timeout=READ_TIMEOUT)
        return first.metadata.sequence.stream
    finally:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()


async def read_stream(
    js: JetStreamContext, stream: str, subject: str, cls: type[M], *, since: datetime
) -> list[M]:
    """Every `cls` stored in `stream` under `subject` from `since` to now (bodies that are
    not one are skipped): a bounded read, not a follow."""
    sub, _info, empty = await _from_time(js, stream, subject, since)
    found: list[M] = []
    try:
        if empty:
            return found
        async for msg in messages(sub):
            try:
                found.append(decode_body(cls, msg.data, subject=msg.subject))
            except DecodeError as exc:
                logger.warning("undecodable message skipped", subject=msg.subject, reason=exc.reason)
            if msg.metadata.num_pending == 0:
                return found
    finally:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()
    return found


async def last_message(js: JetStreamContext, stream: str, subject: str, cls: type[M]) -> M | None:
    """The last enveloped `cls` stored under `subject`; None if there is none or it is not one."""
    try:
        msg = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    try:
        return open_envelope(cls, msg.data or b"", msg.headers, subject=subject)
    except DecodeError:
        return None


@dataclass(frozen=True)
class AccountSummary:
    domain: str | None
    streams: int
    storage_bytes: int
    buckets: tuple[str, ...]


async def account_summary(js: JetStreamContext) -> AccountSummary:
    account = await js.account_info()
    names = [s.config.name or "" for s in await js.streams_info()]
    prefix = subjects.KV_STREAM_PREFIX
    return AccountSummary(
        domain=account.domain,
        streams=account.streams,
        storage_bytes=account.storage,
        buckets=tuple(sorted(n.removeprefix(prefix) for n in names if n.startswith(prefix))),
    )
