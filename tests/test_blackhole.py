"""Silent link loss: a blackholed uplink (nothing passes, no reset, sockets stay open) is
noticed by the servers' leaf pings within the tuned ping settings, shown by presence, and the
edge converges right after the heal. Real servers and daemons; the link proxy does the harm."""

import json
import time
import urllib.request

import pytest

from fleetbus.sdk.client import FleetClient
from schemas.override import OverrideScope
from schemas.presence import PresenceState
from tests.conftest import admin_creds, running_fleet
from tests.fleetprobe import applied_hash
from tests.helpers import eventually

EDGE = "r1-e1"
pytestmark = pytest.mark.slow


def leaf_count(http_port: int) -> int:
    """Leaf connections a server holds, from its own monitoring endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/leafz", timeout=5) as reply:
        return int(json.load(reply)["leafnodes"])


async def test_a_blackholed_uplink_is_noticed_by_pings_and_converges_after_the_heal(tmp_path):
    async with (
        running_fleet(tmp_path, regions=1, edges=1) as fleet,
        await FleetClient.connect(
            fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan)
        ) as client,
    ):
        await eventually(lambda: applied_hash(client, EDGE), timeout=30, what="the edge reporting")
        regional = fleet.plan.site("r1").server
        edge_server = fleet.plan.site(EDGE).server
        assert leaf_count(regional.http_port) == 2  # the hub's link and the edge's
        ping = edge_server.ping_interval, edge_server.ping_max
        assert ping == ("5s", 3)

        fleet.link(EDGE).blackhole()
        began = time.monotonic()

        async def shown_lost() -> bool:
            shown = {p.edge: p.state for p in await client.presence()}
            return shown.get(EDGE) not in (None, PresenceState.ONLINE)

        await eventually(shown_lost, timeout=20, what="the hub showing the edge not online")
        noticed = time.monotonic() - began
        await client.overrides.set(
            OverrideScope.EDGE, EDGE, {"config": {"during": "blackhole"}}, reason="blackhole"
        )
        expected = (await client.explain(EDGE))[0].hash

        # No reset ever arrives: the regional drops the silent link only because its pings go
        # unanswered (5 s x 3; nats-server's defaults, 2 min x 2, would take minutes).
        async def link_dropped() -> bool:
            return leaf_count(regional.http_port) == 1

        await eventually(link_dropped, timeout=40, what="the regional dropping the silent leaf link")
        dropped = time.monotonic() - began
        assert await applied_hash(client, EDGE) != expected  # nothing got through meanwhile

        fleet.link(EDGE).heal()
        healed = time.monotonic()

        async def converged() -> bool:
            return await applied_hash(client, EDGE) == expected

        await eventually(converged, timeout=15, what="the edge converged after the heal")
        took = time.monotonic() - healed
        print(f"loss shown {noticed:.1f}s, link dropped {dropped:.1f}s, converged {took:.2f}s after the heal")
