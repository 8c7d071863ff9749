"""The edge's local streams: where events and inventory wait for the uplink."""

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from schemas import subjects

DAY = 24 * 3600


def events_stream(
    region: str, edge: str, *, max_age_s: float = 7 * DAY, max_bytes: int = 256 * 2**20
) -> StreamConfig:
    """Every event, at least once; bounded by age and bytes (evictions are counted later)."""
    return StreamConfig(
        name=subjects.EVENTS_STREAM,
        description="Events of this edge, sourced upstream by its regional.",
        subjects=[subjects.edge_events(region, edge)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        max_bytes=max_bytes,
        duplicate_window=120.0,
    )


def inventory_stream(region: str, edge: str) -> StreamConfig:
    """Last snapshot only: after a long partition only the latest is forwarded."""
    return StreamConfig(
        name=subjects.INVENTORY_STREAM,
        description="Latest inventory snapshot of this edge.",
        subjects=[subjects.edge_inventory(region, edge)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=1,
    )
