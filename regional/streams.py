"""The regional's streams: replicas of the hub's buckets, the region's events and inventory,
its edges' presence and enrollments."""

from fleetbus.nats.provisioning import kv_stream, scoped_bucket
from fleetbus.nats.replication import aggregate_stream, replica_bucket, source
from fleetbus.nats.streams import StreamConfig
from schemas import subjects
from schemas.subjects import HUB_DOMAIN

DAY = 24 * 3600


def replicas(region: str) -> list[StreamConfig]:
    """The region's cache of the hub's buckets: its sites start and apply without the hub."""
    deliver = subjects.deliver_down(subjects.region_base(region))
    return [
        replica_bucket(bucket, [source(subjects.kv_stream(bucket), HUB_DOMAIN, deliver=deliver)])
        for bucket in (
            subjects.PROFILES_BUCKET,
            subjects.OVERRIDES_BUCKET,
            subjects.SEALED_BUCKET,
            subjects.ROLLOUTS_BUCKET,
        )
    ]


def assigned_bucket(*, max_bytes: int = 2 * 2**30) -> StreamConfig:
    """KV `assigned`, keys `<edge>.profile.<name>` and `<edge>.group.<group>`: copies of the
    signed records that concern each edge (`regional.assigner`), which its replicas source.
    One copy per edge and profile: 5,000 edges with 10 profiles of 5 KB are 250 MB; a full
    bucket refuses writes (counted, retried), it never evicts what an edge holds."""
    return kv_stream(
        subjects.ASSIGNED_BUCKET,
        "The signed profiles and group overrides that concern each edge of this region.",
        subjects=[subjects.kv_subject(subjects.ASSIGNED_BUCKET)],
        max_bytes=max_bytes,
    )


def events_stream(region: str, *, max_age_s: float = 7 * DAY, max_bytes: int = 1024 * 2**20) -> StreamConfig:
    """Events of every edge of the region, which each edge pushes here on its outbox subjects
    (a full edge's forwarder from its own EVENTS, a thin edge directly), and sourced in turn by
    the hub."""
    return aggregate_stream(
        subjects.EVENTS_STREAM,
        "Events of this region's edges, pushed by each edge; sourced by the hub.",
        max_age_s=max_age_s,
        max_bytes=max_bytes,
        direct=subjects.outbox_events_transform(region),
    )


def inventory_stream(region: str, *, max_bytes: int = 256 * 2**20) -> StreamConfig:
    """The latest inventory snapshot of each edge (one per subject), pushed by each edge and
    sourced in turn by the hub into its `inventory` bucket: after a partition of the edge or of
    the regional, the hub receives only each edge's latest snapshot."""
    return aggregate_stream(
        subjects.INVENTORY_STREAM,
        "Latest inventory snapshot of each of this region's edges, pushed by each edge; sourced by the hub.",
        max_bytes=max_bytes,
        per_subject=1,
        direct=subjects.outbox_inventory_transform(region),
    )


def presence_bucket(region: str) -> StreamConfig:
    """KV `presence`, keys `<region>.<edge>`: one record per state change of an edge."""
    return scoped_bucket(
        subjects.PRESENCE_BUCKET, region, description="Presence state changes of this region's edges."
    )


def edges_bucket(region: str) -> StreamConfig:
    """KV `edges`, keys `<region>.<edge>`: the enrollment of each edge admitted here."""
    return scoped_bucket(subjects.EDGES_BUCKET, region, description="Edges enrolled in this region.")
