"""Every stream and bucket fleetbus creates, at every tier, has a size cap: a stream without one
grows until the site's disk is full. Read from the real servers of a running fleet."""

import nats
import pytest

from tests.conftest import running_fleet
from tests.helpers import eventually

pytestmark = pytest.mark.slow


async def test_every_stream_at_every_tier_has_a_size_cap(tmp_path):
    async with running_fleet(tmp_path, regions=1, edges=1) as fleet:
        expected = {
            "hub": {
                "EVENTS",
                "KV_applied",
                "KV_inventory",
                "KV_presence",
                "KV_profiles",
                "KV_overrides",
                "KV_regions",
            },
            "r1": {"EVENTS", "INVENTORY", "KV_profiles", "KV_overrides", "KV_presence", "KV_edges"},
            "r1-e1": {"EVENTS", "INVENTORY", "KV_profiles", "KV_overrides"},
        }
        for site, names in expected.items():
            nc = await nats.connect(fleet.plan.site(site).server.client_url)
            try:
                js = nc.jetstream()

                async def all_there(js=js, names=names) -> list:
                    found = [s for s in await js.streams_info() if not s.config.name.startswith("$MQTT")]
                    return found if names <= {s.config.name for s in found} else []

                streams = await eventually(all_there, timeout=30, what=f"{site}'s streams")
                uncapped = [s.config.name for s in streams if (s.config.max_bytes or -1) <= 0]
                assert uncapped == [], f"{site}: streams without max_bytes: {uncapped}"
            finally:
                await nc.close()
