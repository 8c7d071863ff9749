"""The regional's streams: replicas of the hub's buckets, and the region's event stream."""

from nats.js.api import StreamConfig

from fleetbus.replication import aggregate_stream, replica_bucket, source
from schemas import subjects
from schemas.subjects import HUB_DOMAIN

DAY = 24 * 3600


def replicas() -> list[StreamConfig]:
    """The region's cache of the hub's buckets: its sites start and apply without the hub."""
    return [
        replica_bucket(bucket, [source(f"KV_{bucket}", HUB_DOMAIN)])
        for bucket in (subjects.PROFILES_BUCKET, subjects.OVERRIDES_BUCKET)
    ]


def events_stream(*, max_age_s: float = 7 * DAY, max_bytes: int = 1024 * 2**20) -> StreamConfig:
    """Events of every edge of the region, sourced from each edge's EVENTS (one source per
    edge, added when the edge is first heard) and sourced in turn by the hub."""
    return aggregate_stream(
        subjects.EVENTS_STREAM,
        "Events of this region's edges, sourced from each edge; sourced by the hub.",
        max_age_s=max_age_s,
        max_bytes=max_bytes,
    )
