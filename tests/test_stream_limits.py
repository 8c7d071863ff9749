"""Every stream and bucket fleetbus creates, at every tier, has a size cap: a stream without one
grows until the site's disk is full; and the hub's streams that sources fill bind no subject.
Read from the real servers of a running fleet."""

import pytest
from nats.js.errors import NoStreamResponseError

from tests.conftest import connect_as, running_fleet
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
            nc = await connect_as(fleet.plan, site)
            try:
                js = nc.jetstream()

                async def all_there(js=js, names=names) -> list:
                    found = [s for s in await js.streams_info() if not s.config.name.startswith("$MQTT")]
                    return found if names <= {s.config.name for s in found} else []

                streams = await eventually(all_there, timeout=30, what=f"{site}'s streams")
                uncapped = [s.config.name for s in streams if (s.config.max_bytes or -1) <= 0]
                assert uncapped == [], f"{site}: streams without max_bytes: {uncapped}"
                if site == "hub":  # filled only by sources: they bind no subject, not even their name
                    sourced = {s.config.name: s.config.subjects for s in streams}
                    for name in ("EVENTS", "KV_inventory", "KV_presence", "KV_applied"):
                        assert not sourced[name], f"hub {name} binds {sourced[name]}"
                        with pytest.raises(NoStreamResponseError):  # no stream stores a publish there
                            await js.publish(name, b"forged", timeout=2)
            finally:
                await nc.close()
