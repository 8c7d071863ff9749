"""The hub's streams: the fleet's events; per edge its last ApplyResult, latest inventory and
presence, all filled by sourcing (no Python in those paths)."""

from fleetbus.nats.provisioning import kv_stream
from fleetbus.nats.replication import aggregate_stream, source
from fleetbus.nats.streams import StreamConfig, StreamSource, transformed_source
from schemas import subjects

DAY = 24 * 3600


def events_stream(*, max_age_s: float = 30 * DAY, max_bytes: int = 4 * 2**30) -> StreamConfig:
    """Every edge's events, sourced from each regional's EVENTS (one source per region, added
    when the regional is first heard); deduplicated by `Nats-Msg-Id`."""
    config = aggregate_stream(
        subjects.EVENTS_STREAM,
        "Events of the whole fleet, sourced from every regional.",
        max_age_s=max_age_s,
        max_bytes=max_bytes,
    )
    config.sources = [null_source()]
    return config


def null_source() -> StreamSource:
    """A source that can never copy anything, so that a stream only sources fill binds no
    subject even before its first real source is added. nats-server gives a stream created
    with neither subjects nor sources one subject, its own name (`EVENTS`), and stores what
    anyone publishes there. The hub's `regions` bucket binds only `$KV.regions.>`, so it
    never holds the one subject this source takes."""
    return StreamSource(
        name=subjects.kv_stream(subjects.REGIONS_BUCKET),
        filter_subject=subjects.kv_subject(subjects.PROFILES_BUCKET, "none"),
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
        transformed_source(
            subjects.EVENTS_STREAM,
            src=subjects.apply_results(),
            dest=subjects.kv_subject(subjects.APPLIED_BUCKET, "{{wildcard(1)}}.{{wildcard(2)}}"),
        )
    ]
    return config


def inventory_bucket(*, max_bytes: int = 1 * 2**30) -> StreamConfig:
    """KV `inventory`: per `<region>.<edge>` key, that edge's latest snapshot, sourced from
    each regional's INVENTORY (whose subjects already are this bucket's keys)."""
    description = "Latest inventory snapshot per edge, sourced."
    return sourced_bucket(subjects.INVENTORY_BUCKET, description, max_bytes)


def region_deliver(region: str) -> str:
    """Where a region's sourced messages cross its link: inside its own subjects."""
    return subjects.deliver_up(subjects.region_base(region))


def inventory_source(region: str) -> StreamSource:
    """Region `region`'s INVENTORY, only that region's keys: a regional cannot write another
    region's edges."""
    return replay_from_start(
        source(
            subjects.INVENTORY_STREAM,
            region,
            deliver=region_deliver(region),
            filters=[subjects.inventories(region, ">")],
        )
    )


def presence_bucket(*, max_bytes: int = 64 * 2**20) -> StreamConfig:
    """KV `presence`: every edge's latest presence record, sourced from each regional's."""
    return sourced_bucket(
        subjects.PRESENCE_BUCKET, "Presence of every edge, sourced from the regionals.", max_bytes
    )


def presence_source(region: str) -> StreamSource:
    bucket = subjects.kv_stream(subjects.PRESENCE_BUCKET)
    return replay_from_start(
        source(
            bucket,
            region,
            deliver=region_deliver(region),
            filters=[subjects.kv_subject(subjects.PRESENCE_BUCKET, f"{region}.>")],
        )
    )


def replay_from_start(item: StreamSource) -> StreamSource:
    """Start this source at the origin's first message, always (also when kicked).

    Without it, a source added to a bucket that already holds another region's values
    sometimes started past the new region's messages (nats-server 2.15.1 logs "Sourcing state
    is outdated; attempting to recover using backward scan" and then took nothing from that
    region: about 1 fleet start in 10 here), and a kick did not repair it. Replaying is
    harmless for these buckets: one value per key, the newest wins."""
    item.opt_start_seq = 1
    return item


def sourced_bucket(bucket: str, description: str, max_bytes: int) -> StreamConfig:
    """A hub bucket with no subjects of its own: only its sources write it (`null_source`
    until the first region's is added)."""
    return kv_stream(
        bucket,
        description,
        discard_old=True,
        max_bytes=max_bytes,
        deny_delete=False,
        sources=[null_source()],
    )
