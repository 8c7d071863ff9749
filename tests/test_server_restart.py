"""A site's nats-server restarts under its running daemon: the daemon's watches resume at once.

The consistency suite's slowest seeds (7, 8, 14) converged 7.6-14 s after the final heal; the
cause was an edge server killed and restarted under its running daemon: the reconciler's KV
watch (an ordered consumer) heard nothing until nats-py missed two idle heartbeats (10-20 s).
`Bus` now recreates every ordered consumer as soon as it reconnects."""

import asyncio
import time

import pytest
from nats.js.api import StorageType

from fleetbus.nats.bus import connect
from fleetbus.nats.streams import follow_stream
from fleetbus.sdk.client import FleetClient
from hub.sealer import EPOCH
from schemas.base import utcnow
from schemas.heartbeat import Heartbeat, Tier
from schemas.override import OverrideScope
from tests.conftest import admin_creds, running_fleet
from tests.fleetprobe import applied_hash
from tests.helpers import eventually

EDGE = "r1-e1"
pytestmark = pytest.mark.slow


async def test_a_change_made_while_the_edge_server_was_down_applies_right_after_its_restart(tmp_path):
    async with (
        running_fleet(tmp_path, regions=1, edges=1) as fleet,
        await FleetClient.connect(
            fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan)
        ) as client,
    ):
        await eventually(lambda: applied_hash(client, EDGE), timeout=30, what="the edge reporting")
        await fleet.kill(EDGE, server=True, daemon=False)
        await client.overrides.set(OverrideScope.EDGE, EDGE, {"config": {"while": "down"}}, reason="restart")
        expected = (await client.explain(EDGE))[0].hash
        await fleet.restart(EDGE, server=True, daemon=False)  # returns once the server is healthy
        restarted = time.monotonic()

        async def converged() -> bool:
            return await applied_hash(client, EDGE) == expected

        await eventually(converged, timeout=30, what="the change applied after the restart")
        took = time.monotonic() - restarted
        print(f"applied and reported {took:.2f}s after the edge server was back")
        # Without resuming, the watch waits out nats-py's missed-heartbeat check: 10-20 s.
        assert took < 5.0, f"took {took:.1f}s: the reconciler's watch did not resume on reconnect"


async def test_a_follow_from_a_time_keeps_following_after_its_server_restarts(hub_server):
    """`follow_stream(since=...)` (the hub's sealer follows EVENTS from the beginning) resumes
    after its server restarts. Started by time, nats-py re-created the ordered consumer with
    both a start time and a start sequence, which the server refuses (error 10094): the
    follow heard nothing more."""
    site = hub_server.plan.site("hub")
    bus = await connect(
        site.server.client_url,
        name="follower",
        source="/test",
        creds=site.creds_path,
        ca=site.server.auth.tls.ca if site.server.auth and site.server.auth.tls else None,
        site="hub",
    )
    try:
        await bus.js.add_stream(name="FOLLOWED", subjects=["followed.>"], storage=StorageType.FILE)
        first = Heartbeat(
            tier=Tier.EDGE,
            site="e1",
            region="r1",
            seq=1,
            sent_at=utcnow(),
            interval_seconds=5,
            uptime_seconds=1,
        )
        await bus.js_publish("followed.e1", first)
        heard: list[int] = []

        async def follow() -> None:
            async for beat in follow_stream(bus.js, "FOLLOWED", "followed.>", Heartbeat, since=EPOCH):
                heard.append(beat.seq)  # noqa: PERF401 - heard as they come, not at the end

        async def heard_only(expected: list[int]) -> bool:
            return heard == expected

        task = asyncio.create_task(follow())
        try:
            await eventually(lambda: heard_only([1]), timeout=10, what="the stored message")
            await hub_server.servers["hub"].kill(restart=False)
            await hub_server.servers["hub"].start()
            await eventually(lambda: asyncio.sleep(0, bus.connected), timeout=10, what="the client back")
            await eventually(
                lambda: bus.js_publish("followed.e1", first.model_copy(update={"seq": 2})),
                timeout=10,
                what="a message stored after the restart",
            )
            await eventually(lambda: heard_only([1, 2]), timeout=5, what="the follow hearing it")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await bus.close()
