"""Forget edges: delete what the fleet keeps about them, so a site that is gone for good (a
decommissioned store, the hollow edges of a past `fleetbus sim`) stops being shown.

An edge's records live in two places. At its regional (JetStream domain = region id): its
enrollment (`edges`), its presence (`presence`), its latest snapshot (`INVENTORY`) and what
the regional handed it (`assigned`). At the
hub: `presence` and `inventory`, sourced from the regional's, and `applied`, derived from the
events. The regional's are deleted first: the hub's buckets replay their sources from the start
when kicked, and would take back anything left at the origin. Both are reached from the hub's
connection through the JetStream API of each domain (`$JS.<domain>.API`), across the leaf
links; a publish would not cross them. Purges leave no delete marker, so readers of the
current values (`fleetbus status`, `FleetClient`) stop seeing the edge at once; a watch that
is already running hears nothing of it.

The regional daemon asks its `edges` bucket before it writes a presence change, and the hub
its `regions` bucket before it writes a region's: what was forgotten is dropped from their
memory instead of being written back.
"""

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from fleetbus.nats.kv import Bucket
from schemas import subjects
from schemas.base import Message

# A domain whose JetStream does not answer (nats-py's JetStream API raises the second).
UNANSWERED = (NoRespondersError, ServiceUnavailableError, TimeoutError)

# Hub buckets holding one record per edge, under `<region>.<edge>`.
HUB_EDGE_BUCKETS = (subjects.PRESENCE_BUCKET, subjects.INVENTORY_BUCKET, subjects.APPLIED_BUCKET)


@dataclass(frozen=True)
class ForgetResult:
    """What was deleted: `regional_answered` False means only the hub's records are gone
    (the regional's come back with its sources once it answers: forget again then)."""

    region: str
    edges: tuple[str, ...]
    regional_answered: bool


async def known_edges(hub: JetStreamContext, region: str = "*", edge: str = "*") -> set[tuple[str, str]]:
    """(region, edge) of every edge the hub keeps a record of, matching the wildcards."""
    found = set()
    for bucket in HUB_EDGE_BUCKETS:
        for key in await Bucket(hub, bucket, Message).live_keys(f"{region}.{edge}"):  # wildcards allowed
            found.add(subjects.split_edge_key(key))
    return found


async def enrolled_edges(regional: JetStreamContext, region: str) -> set[str] | None:
    """Edges enrolled at `region`'s regional; None if it does not answer."""
    try:
        keys = await Bucket(regional, subjects.EDGES_BUCKET, Message).live_keys(f"{region}.*")
    except UNANSWERED:
        return None
    return {subjects.split_edge_key(k)[1] for k in keys}


async def forget_edges(
    hub: JetStreamContext, regional: JetStreamContext, region: str, edges: Iterable[str]
) -> ForgetResult:
    """Delete every record of `edges` of `region`: at the regional (if it answers), then at
    the hub. Deleting what is already gone is not an error."""
    names = tuple(sorted(set(edges)))
    answered = True
    for edge in names:
        key = subjects.edge_key(region, edge)
        if answered:
            try:
                # The enrollment first: the regional then stops writing the edge's presence.
                for bucket in (subjects.EDGES_BUCKET, subjects.PRESENCE_BUCKET):
                    await _purge(regional, subjects.kv_stream(bucket), subjects.kv_subject(bucket, key))
                # What its regional handed it (`regional.assigner` drops it too once it sees
                # the enrollment gone).
                assigned = subjects.kv_subject(subjects.ASSIGNED_BUCKET, f"{edge}.>")
                await _purge(regional, subjects.kv_stream(subjects.ASSIGNED_BUCKET), assigned)
                await _purge(regional, subjects.INVENTORY_STREAM, subjects.inventories(region, edge))
            except UNANSWERED:
                answered = False  # a regional that is gone: the hub's copies can still go
        for bucket in HUB_EDGE_BUCKETS:
            await _purge(hub, subjects.kv_stream(bucket), subjects.kv_subject(bucket, key))
    return ForgetResult(region, names, answered)


async def forget_region_record(hub: JetStreamContext, region: str) -> None:
    """Delete the hub's presence record of the regional itself (bucket `regions`)."""
    await _purge(
        hub, subjects.kv_stream(subjects.REGIONS_BUCKET), subjects.kv_subject(subjects.REGIONS_BUCKET, region)
    )


async def is_enrolled(regional: JetStreamContext, region: str, edge: str) -> bool:
    """Whether `edge`'s enrollment is in `region`'s `edges` bucket, asked of the regional's
    own server."""
    return await is_recorded(regional, subjects.EDGES_BUCKET, subjects.edge_key(region, edge))


async def is_recorded(js: JetStreamContext, bucket: str, key: str) -> bool:
    """Whether `bucket` holds a value (or a delete marker) under `key`; True if the server
    cannot say (restarting), so nothing is dropped for a server's hiccup."""
    try:
        await js.get_last_msg(subjects.kv_stream(bucket), subjects.kv_subject(bucket, key))
    except NotFoundError:
        return False
    except (NatsError, TimeoutError):
        return True
    return True


async def _purge(js: JetStreamContext, stream: str, subject: str) -> None:
    with contextlib.suppress(NotFoundError):  # no such stream there: nothing of it to forget
        await js.purge_stream(stream, subject=subject)
