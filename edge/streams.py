"""The edge's local streams (where events and inventory wait for the uplink) and replicas."""

from fleetbus.nats.replication import replica_bucket, source
from fleetbus.nats.streams import StreamConfig, local_stream
from schemas import subjects
from schemas.override import OverrideScope

DAY = 24 * 3600


def events_stream(
    region: str, edge: str, *, max_age_s: float = 7 * DAY, max_bytes: int = 256 * 2**20
) -> StreamConfig:
    """Every event, at least once; bounded by age and bytes (evictions are counted later)."""
    return local_stream(
        subjects.EVENTS_STREAM,
        "Events of this edge, pushed to its regional by the edge daemon.",
        subjects=[subjects.edge_events(region, edge)],
        max_age_s=max_age_s,
        max_bytes=max_bytes,
    )


def inventory_stream(region: str, edge: str, *, max_bytes: int = 16 * 2**20) -> StreamConfig:
    """Last snapshot only: after a long partition only the latest is forwarded."""
    return local_stream(
        subjects.INVENTORY_STREAM,
        "Latest inventory snapshot of this edge.",
        subjects=[subjects.edge_inventory(region, edge)],
        per_subject=1,
        max_bytes=max_bytes,
    )


def replicas(region: str, edge: str, groups: list[str]) -> list[StreamConfig]:
    """The edge's replicas, sourced from its regional: every profile, and only the overrides
    for this edge and its groups (another edge's override never reaches it)."""
    override_keys = [subjects.override_key(OverrideScope.EDGE.value, edge)] + [
        subjects.override_key(OverrideScope.GROUP.value, g) for g in groups
    ]
    deliver = subjects.deliver_down(subjects.edge_base(region, edge))
    overrides = subjects.kv_stream(subjects.OVERRIDES_BUCKET)
    return [
        replica_bucket(
            subjects.PROFILES_BUCKET,
            [source(subjects.kv_stream(subjects.PROFILES_BUCKET), region, deliver=deliver)],
        ),
        # One source per key: a single-filter source names its filter in the consumer-create
        # subject, which the edge's link permissions pin to its own keys (a source with
        # several filters could ask for any).
        replica_bucket(
            subjects.OVERRIDES_BUCKET,
            [
                source(
                    overrides,
                    region,
                    deliver=deliver,
                    filters=[subjects.kv_subject(subjects.OVERRIDES_BUCKET, key)],
                )
                for key in override_keys
            ],
        ),
    ]


def sealed_replica(region: str, edge: str) -> StreamConfig:
    """The replica of this edge's own bundle of sealed secrets (its link may read no other
    key), made the first time its desired state references a secret."""
    deliver = subjects.deliver_down(subjects.edge_base(region, edge))
    stream = subjects.kv_stream(subjects.SEALED_BUCKET)
    filters = [subjects.kv_subject(subjects.SEALED_BUCKET, edge)]
    return replica_bucket(subjects.SEALED_BUCKET, [source(stream, region, deliver=deliver, filters=filters)])
