"""A site's nats-server restarts under its running daemon: the daemon's watches resume at once.

The consistency suite's slowest seeds (7, 8, 14) converged 7.6-14 s after the final heal; the
cause was an edge server killed and restarted under its running daemon: the reconciler's KV
watch (an ordered consumer) heard nothing until nats-py missed two idle heartbeats (10-20 s).
`Bus` now recreates every ordered consumer as soon as it reconnects."""

import time

import pytest

from fleetbus.sdk.client import FleetClient
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
