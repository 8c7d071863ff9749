"""Create or update streams and KV buckets idempotently, on every daemon start."""

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import BadRequestError, NotFoundError

from fleetbus.runtime import log
from schemas import subjects
from schemas.subjects import kv_stream as stream_of_bucket

logger = log.get_logger(__name__)


# Every bucket has a size cap (a stream without one grows until the disk is full). Desired
# state and presence are kilobytes per key; this is far above what a fleet of 20,000 edges
# stores, and writes beyond it are refused, never silently evicting a key.
BUCKET_MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class BucketSpec:
    """A KV bucket as fleetbus wants it; turned into its stream `KV_<name>`."""

    name: str
    history: int = 1
    description: str = ""
    max_bytes: int = BUCKET_MAX_BYTES
    replicas: int = 1  # copies in a clustered site (3 on a 3-node hub)
    ttl: float | None = None  # s a record is kept (leases); None: until replaced

    def config(self) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=self.name,
            history=self.history,
            description=self.description,
            max_bytes=self.max_bytes,
            direct=True,
            replicas=self.replicas,
            ttl=self.ttl,
        )


def kv_stream(
    bucket: str,
    description: str,
    *,
    history: int = 1,
    subjects: list[str] | None = None,
    sources: list[StreamSource] | None = None,
    discard_old: bool = False,
    max_bytes: int | None = None,
    deny_delete: bool = True,
) -> StreamConfig:
    """The stream `KV_<bucket>` as nats-py's KV API reads it, for the buckets nats-py cannot
    create itself: ones with only some keys as subjects, or filled only by sources. A full
    bucket refuses new keys unless `discard_old` (a sourced bucket must take what comes)."""
    return StreamConfig(
        name=stream_of_bucket(bucket),
        description=description,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD if discard_old else DiscardPolicy.NEW,
        max_msgs_per_subject=history,
        max_bytes=BUCKET_MAX_BYTES if max_bytes is None else max_bytes,
        allow_direct=True,
        allow_rollup_hdrs=True,
        deny_delete=deny_delete,
        sources=sources,
    )


def scoped_bucket(bucket: str, scope: str, *, history: int = 1, description: str = "") -> StreamConfig:
    """`KV_<bucket>` taking only the keys under `scope.` (e.g. a regional's `presence` takes
    `r1.*`). Several domains can then each hold a `bucket` without storing one another's
    writes (two streams on one subject both store it: docs/architecture.md#invariants), and the hub can source
    them all into one bucket. Read and write it with nats-py's KV API as usual."""
    scoped = [subjects.kv_subject(bucket, f"{scope}.>")]
    return kv_stream(bucket, description, history=history, subjects=scoped)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> str:
    """Add `config`'s stream, or update it if it exists; return "created"/"updated"."""
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Another daemon of a clustered site created it first with a config of its own
            # (an older release's): make it this one's.
            await js.update_stream(config)
            return "updated"
        logger.info("stream created", stream=config.name)
        return "created"
    await js.update_stream(config)
    return "updated"


async def ensure_bucket(js: JetStreamContext, spec: BucketSpec) -> str:
    """Create the bucket, or update its stream to match `spec` (keeps the data)."""
    try:
        await js.create_key_value(spec.config())
    except BadRequestError as exc:
        # Exists with another config (e.g. history raised in a newer release): update.
        logger.info("bucket exists with other settings; updating", bucket=spec.name, error=str(exc))
        info = await js.stream_info(subjects.kv_stream(spec.name))
        config = info.config
        config.max_msgs_per_subject = spec.history
        config.description = spec.description or config.description
        config.max_bytes = spec.max_bytes
        config.allow_direct = True
        config.num_replicas = spec.replicas
        config.max_age = spec.ttl or 0
        await js.update_stream(config)
        return "updated"
    return "ensured"
