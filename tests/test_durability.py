"""SIGKILL of a nats-server loses nothing it had acknowledged, and the hub's loses no event
on the way from the edges (file storage everywhere; see docs/faults.md for the sync policy)."""

import asyncio
import uuid

import pytest
from nats.js.api import StreamConfig

from fleetbus.devfleet.servers import NatsServer
from schemas import subjects
from tests.conftest import Chain, connect_as, running_fleet
from tests.fleetprobe import emit_event, stream_ids
from tests.helpers import eventually

pytestmark = pytest.mark.slow


async def publish_until_killed(
    chain: Chain, subject: str, server: NatsServer, *, kill_after: int
) -> set[str]:
    """Publish with ids until the server dies under us (SIGKILL once `kill_after` were acked,
    with more in flight); return the ids the server acknowledged."""
    nc = await chain.connect("hub", allow_reconnect=False)
    js = nc.jetstream(timeout=2)
    acked: set[str] = set()

    async def one() -> None:
        msg_id = uuid.uuid4().hex
        ack = await js.publish(subject, b"x" * 256, headers={"Nats-Msg-Id": msg_id})
        if ack.seq:
            acked.add(msg_id)

    killer: asyncio.Task[None] | None = None
    try:
        while True:
            batch = [asyncio.create_task(one()) for _ in range(20)]  # 20 in flight at a time
            results = await asyncio.gather(*batch, return_exceptions=True)
            if killer is None and len(acked) >= kill_after:
                killer = asyncio.create_task(server.kill(restart=False))
            if any(isinstance(r, Exception) for r in results):
                break
    finally:
        if killer is not None:
            await killer
        await nc.close()
    return acked


async def test_sigkill_of_the_hub_server_loses_nothing_it_acknowledged(hub_server):
    server = hub_server.servers["hub"]
    nc = await hub_server.connect("hub")
    await nc.jetstream().add_stream(StreamConfig(name="DURABLE", subjects=["durable.>"]))
    await nc.close()

    acked = await publish_until_killed(hub_server, "durable.x", server, kill_after=2000)
    assert not server.running
    await server.start()
    nc = await hub_server.connect("hub")
    try:
        stored, first = await stream_ids(nc.jetstream(), "DURABLE")
    finally:
        await nc.close()
    assert first == 1
    assert len(acked) >= 2000
    assert acked - stored.keys() == set()  # every acknowledged message survived the SIGKILL
    assert max(stored.values()) == 1


async def test_killing_the_hub_server_mid_stream_loses_no_event_from_the_edges(tmp_path):
    async with running_fleet(tmp_path, regions=1, edges=1) as fleet:
        edge = fleet.plan.site("r1-e1")
        hub = fleet.servers["hub"]
        acked: list[str] = []
        stop = asyncio.Event()

        async def stream_events() -> None:  # an application at the edge, never pausing
            while not stop.is_set():
                event_id = await emit_event(
                    edge.server.client_url, "r1", "r1-e1", creds=edge.creds_path, data={"n": len(acked)}
                )
                assert event_id is not None, "the edge's own stream must acknowledge every event"
                acked.append(event_id)

        async def hub_count() -> int:
            nc = await connect_as(fleet.plan, "hub")
            try:
                return (await nc.jetstream().stream_info(subjects.EVENTS_STREAM)).state.messages
            finally:
                await nc.close()

        producer = asyncio.create_task(stream_events())
        try:
            await eventually(lambda: _at_least(hub_count, 50), timeout=30, what="events flowing to the hub")
            await hub.kill(restart=False)  # mid-stream: the edge keeps storing, the hub is gone
            during = len(acked)
            await eventually(
                lambda: _more(acked, during + 50), timeout=30, what="edge storing while hub down"
            )
            await hub.start()
            target = len(acked)  # what the edge had stored by the time the hub came back
            await eventually(lambda: _at_least(hub_count, target), timeout=60, what="flow resumed")
        finally:
            stop.set()
            await producer

        async def all_there_once() -> bool:
            nc = await connect_as(fleet.plan, "hub")
            try:
                at_hub, _ = await stream_ids(nc.jetstream(), subjects.EVENTS_STREAM)
            finally:
                await nc.close()
            return all(at_hub[i] == 1 for i in acked) and max(at_hub.values()) == 1

        await eventually(all_there_once, timeout=60, what="every acknowledged event at the hub exactly once")
        assert fleet.crashes() == {}


async def _at_least(count, n: int) -> bool:
    return await count() >= n


async def _more(items: list[str], n: int) -> bool:
    return len(items) >= n
