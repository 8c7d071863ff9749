"""What the consistency suite and the heal benchmark observe on a real fleet, from outside:
events an application stores at an edge, what the hub holds, what an edge applied."""

import collections
import json
import uuid
from pathlib import Path

import nats
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from fleetbus.devfleet import identities
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.base import utcnow
from schemas.codec import decode_body
from schemas.event import Event
from schemas.headers import envelope
from schemas.inventory import InventorySnapshot

PROBE_KIND = "probe"


async def emit_event(
    url: str, region: str, edge: str, *, creds: Path | None, data: dict[str, object], timeout: float = 2.0
) -> str | None:
    """Store one event in `edge`'s own EVENTS stream, as an application at the edge would.
    Returns its id once the edge's stream acknowledged it; None if it did not (server down)."""
    event = Event(
        id=f"{edge}-probe-{uuid.uuid4().hex}",
        kind=PROBE_KIND,
        region=region,
        edge=edge,
        observed_at=utcnow(),
        data=data,
    )
    body, headers = envelope(event, source="/probe", message_id=event.id)
    try:
        nc = await nats.connect(
            url,
            connect_timeout=timeout,
            max_reconnect_attempts=0,
            allow_reconnect=False,
            nkeys_seed=str(creds) if creds else None,
            inbox_prefix=subjects.inbox_prefix(edge),
        )
    except Exception:  # the edge's server is down: nothing was acknowledged
        return None
    try:
        ack = await nc.jetstream(timeout=timeout).publish(
            subjects.edge_event(region, edge, PROBE_KIND), body, headers=headers
        )
    except Exception:  # no ack: the event does not count as stored
        return None
    finally:
        await nc.close()
    return event.id if ack.seq else None


async def stream_ids(
    js: JetStreamContext, stream: str, *, batch: int = 512
) -> tuple[collections.Counter[str], int]:
    """Every stored message's `Nats-Msg-Id` in `stream` (how often each), and the stream's
    first sequence (> 1 means its limits removed something)."""
    info = await js.stream_info(stream)
    ids: collections.Counter[str] = collections.Counter()
    if info.state.messages == 0:
        return ids, info.state.first_seq
    sub = await js.subscribe(
        ">", stream=stream, ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.ALL
    )
    try:
        seen = 0
        while seen < info.state.messages:
            msg = await sub.next_msg(timeout=10)
            seen += 1
            ids[(msg.headers or {}).get("Nats-Msg-Id", f"<no id, seq {msg.metadata.sequence.stream}>")] += 1
            if msg.metadata.sequence.stream >= info.state.last_seq:
                break
    finally:
        await sub.unsubscribe()
    return ids, info.state.first_seq


async def hub_has_event(js: JetStreamContext, region: str, edge: str, event_id: str) -> bool:
    """Whether the hub's EVENTS holds `event_id` as the last probe event of `edge`."""
    try:
        msg = await js.get_msg(
            subjects.EVENTS_STREAM, subject=subjects.edge_event(region, edge, PROBE_KIND), direct=True
        )
    except NotFoundError:
        return False
    return (msg.headers or {}).get("Nats-Msg-Id") == event_id


async def applied_hash(client: FleetClient, edge: str) -> str | None:
    """The desired hash in `edge`'s last ApplyResult at the hub, if it applied successfully."""
    report = await client.report(edge)
    if report is None or report.apply_result is None or report.apply_result.error:
        return None
    return report.apply_result.desired_hash


def set_facts(fleet: DevFleet, edge: str, facts: dict[str, object]) -> None:
    """Replace `edge`'s site facts file (its inventory notices within a scan interval)."""
    path = fleet.plan.site(edge).workdir / "daemon" / "facts.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(facts))
    tmp.replace(path)


async def edge_latest(fleet: DevFleet, edge: str) -> InventorySnapshot:
    """The latest snapshot in the edge's own INVENTORY stream, read from its server."""
    site = fleet.plan.site(edge)
    nc = await nats.connect(
        site.server.client_url, nkeys_seed=str(site.creds_path), inbox_prefix=subjects.inbox_prefix(edge)
    )
    try:
        subject = subjects.edge_inventory(site.region, edge)
        msg = await nc.jetstream().get_last_msg(subjects.INVENTORY_STREAM, subject)
        return decode_body(InventorySnapshot, msg.data or b"", subject=subject)
    finally:
        await nc.close()


async def inventory_differences(fleet: DevFleet, client: FleetClient, edges: list[str]) -> list[str]:
    """Where the hub's `inventory` bucket differs from each edge's latest snapshot, field by
    field (empty: it holds exactly those)."""
    at_hub = {s.edge: s for s in await client.inventory()}
    found = []
    for edge in edges:
        local = (await edge_latest(fleet, edge)).model_dump(mode="json", exclude={"received_at"})
        hub = at_hub.get(edge)
        if hub is None or hub.received_at is None:
            found.append(f"{edge}: no snapshot at the hub")
            continue
        held = hub.model_dump(mode="json", exclude={"received_at"})
        fields = sorted(k for k in local.keys() | held.keys() if local.get(k) != held.get(k))
        if fields:
            found.append(f"{edge}: hub differs in {', '.join(fields)}")
    return found


def files_holding(fleet: DevFleet, needle: bytes) -> set[str]:
    """Every file of every site (server store, daemon state, logs, configs) holding `needle`,
    as `<site>/<path>`."""
    found = set()
    for site in fleet.plan.sites:
        for path in Path(site.workdir).rglob("*"):
            if path.is_file() and needle in path.read_bytes():
                found.add(f"{site.name}/{path.relative_to(site.workdir)}")
    return found


async def client_of(fleet: DevFleet, creds: Path | None = None, *, persistent: bool = False) -> FleetClient:
    """A client of the fleet's hub (every node of a clustered one) as `creds` (default: the
    fleet's admin), verifying its CA; `persistent`: it outlives a node's or the hub's restart."""
    return await FleetClient.connect(
        fleet.plan.hub_url,
        creds=creds or identities.operator_creds(fleet.plan.state_dir),
        ca=identities.ca_cert(fleet.plan.state_dir),
        persistent=persistent,
    )
