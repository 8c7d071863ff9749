"""The hub's streams: the fleet's events; per edge its last ApplyResult, latest inventory and
presence, all filled by sourcing (no Python in those paths)."""

from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)

from fleetbus.replication import aggregate_stream, source
from schemas import subjects

DAY = 24 * 3600


def events_stream(*, max_age_s: float = 30 * DAY, max_bytes: int = 4 * 2**30) -> StreamConfig:
    """Every edge's events, sourced from each regional's EVENTS (one source per region, added
    when the regional is first heard); deduplicated by `Nats-Msg-Id`."""
    return aggregate_stream(
        subjects.EVENTS_STREAM,
        "Events of the whole fleet, sourced from every regional.",
        max_age_s=max_age_s,
        max_bytes=max_bytes,
    )


def applied_bucket(*, max_bytes: int = 256 * 2**20) -> StreamConfig:
    """KV `applied`: per `<region>.<edge>` key, that edge's last ApplyResult event. Filled by the
    server, sourcing the hub's EVENTS with a subject transform: no Python in that path."""
    config = sourced_bucket(
        subjects.APPLIED_BUCKET,
        "Last ApplyResult event per edge (key <region>.<edge>), sourced from EVENTS.",
        max_bytes,
    )
    config.sources = [
        StreamSource(
            name=subjects.EVENTS_STREAM,
            subject_transforms=[
                SubjectTransform(
                    src=subjects.apply_results(),
                    dest=subjects.kv_subject(subjects.APPLIED_BUCKET, "{{wildcard(1)}}.{{wildcard(2)}}"),
                )
            ],
        )
    ]
    return config


def inventory_bucket(*, max_bytes: int = 1 * 2**30) -> StreamConfig:
    """KV `inventory`: per `<region>.<edge>` key, that edge's latest snapshot, sourced from
    each regional's INVENTORY with a subject transform (`inventory_source`)."""
    return sourced_bucket(
        subjects.INVENTORY_BUCKET, "Latest inventory snapshot per edge, sourced.", max_bytes
    )


def inventory_source(region: str) -> StreamSource:
    """Region `region`'s INVENTORY, its subjects rewritten to this bucket's keys; only that
    region's edges, so a regional cannot write another region's keys."""
    return source(
        subjects.INVENTORY_STREAM,
        region,
        transforms=[
            (
                subjects.inventories(region),
                subjects.kv_subject(subjects.INVENTORY_BUCKET, f"{region}.{{{{wildcard(1)}}}}"),
            )
        ],
    )


def presence_bucket(*, max_bytes: int = 64 * 2**20) -> StreamConfig:
    """KV `presence`: every edge's latest presence record, sourced from each regional's."""
    return sourced_bucket(
        subjects.PRESENCE_BUCKET, "Presence of every edge, sourced from the regionals.", max_bytes
    )


def presence_source(region: str) -> StreamSource:
    bucket = f"KV_{subjects.PRESENCE_BUCKET}"
    return source(bucket, region, filters=[subjects.kv_subject(subjects.PRESENCE_BUCKET, f"{region}.>")])


def sourced_bucket(bucket: str, description: str, max_bytes: int) -> StreamConfig:
    """A hub bucket with no subjects of its own: only its sources write it."""
    return StreamConfig(
        name=f"KV_{bucket}",
        description=description,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=1,
        max_bytes=max_bytes,
        allow_direct=True,
        allow_rollup_hdrs=True,
    )
