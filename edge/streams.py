"""The edge's local streams (where events and inventory wait for the uplink) and replicas."""

from fleetbus.nats.replication import replica_bucket, source
from fleetbus.nats.streams import StreamConfig, StreamSource, local_stream
from schemas import subjects
from schemas.override import OverrideScope

DAY = 24 * 3600
WILDCARD = "{{wildcard(1)}}"  # a subject transform's first `*`


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


def replicas(region: str, edge: str) -> list[StreamConfig]:
    """The edge's replicas, sourced from its regional: the profiles that select it and its
    groups' overrides, from its own keys of the regional's `assigned` bucket
    (`regional.assigner`), stored under their own names; and its own override. Nothing else
    reaches it (docs/security.md#edges-receive-only-what-concerns-them).

    One filter per source: a single-filter source names its filter in the consumer-create
    subject, which the edge's link permissions pin to its own keys (a source with several
    filters could ask for any)."""
    deliver = subjects.deliver_down(subjects.edge_base(region, edge))
    assigned = subjects.kv_stream(subjects.ASSIGNED_BUCKET)

    def handed(kind: str, bucket: str, prefix: str) -> StreamSource:
        mine = subjects.kv_subject(subjects.ASSIGNED_BUCKET, subjects.assigned_to(edge, kind))
        return source(
            assigned,
            region,
            deliver=deliver,
            rename=(mine, subjects.kv_subject(bucket, f"{prefix}{WILDCARD}")),
        )

    own = subjects.kv_subject(
        subjects.OVERRIDES_BUCKET, subjects.override_key(OverrideScope.EDGE.value, edge)
    )
    return [
        replica_bucket(
            subjects.PROFILES_BUCKET, [handed(subjects.ASSIGNED_PROFILE, subjects.PROFILES_BUCKET, "")]
        ),
        replica_bucket(
            subjects.OVERRIDES_BUCKET,
            [
                source(subjects.kv_stream(subjects.OVERRIDES_BUCKET), region, deliver=deliver, filters=[own]),
                handed(subjects.ASSIGNED_GROUP, subjects.OVERRIDES_BUCKET, f"{OverrideScope.GROUP.value}."),
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
