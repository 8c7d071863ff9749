"""The hub's streams: the fleet's events, and the last ApplyResult of every edge."""

from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)

from fleetbus.replication import aggregate_stream
from schemas import subjects

DAY = 24 * 3600


def events_stream(*, max_age_s: float = 30 * DAY, max_bytes: int = 8 * 2**30) -> StreamConfig:
    """Every edge's events, sourced from each regional's EVENTS (one source per region, added
    when the regional is first heard); deduplicated by `Nats-Msg-Id`."""
    return aggregate_stream(
        subjects.EVENTS_STREAM,
        "Events of the whole fleet, sourced from every regional.",
        max_age_s=max_age_s,
        max_bytes=max_bytes,
    )


def applied_bucket() -> StreamConfig:
    """KV `applied`: per `<region>.<edge>` key, that edge's last ApplyResult event. Filled by the
    server, sourcing the hub's EVENTS with a subject transform: no Python in that path."""
    return StreamConfig(
        name=f"KV_{subjects.APPLIED_BUCKET}",
        description="Last ApplyResult event per edge (key <region>.<edge>), sourced from EVENTS.",
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs_per_subject=1,
        allow_direct=True,
        allow_rollup_hdrs=True,
        sources=[
            StreamSource(
                name=subjects.EVENTS_STREAM,
                subject_transforms=[
                    SubjectTransform(
                        src=subjects.apply_results(),
                        dest=subjects.kv_subject(subjects.APPLIED_BUCKET, "{{wildcard(1)}}.{{wildcard(2)}}"),
                    )
                ],
            )
        ],
    )
