"""The edge daemon: provisions the site's local streams and heartbeats its regional."""

from edge.streams import events_stream, inventory_stream
from fleetbus.daemon import Daemon
from fleetbus.provisioning import ensure_stream
from fleetbus.settings import EdgeSettings
from schemas import subjects
from schemas.heartbeat import Tier


async def run(settings: EdgeSettings) -> None:
    async with Daemon(settings, tier=Tier.EDGE) as daemon:
        region, edge = settings.region, settings.site

        async def provision() -> None:
            await ensure_stream(daemon.bus.js, events_stream(region, edge))
            await ensure_stream(daemon.bus.js, inventory_stream(region, edge))

        daemon.on_start(provision)
        daemon.add_heartbeat(
            subjects.edge_heartbeat(region, edge), region=region, interval=settings.heartbeat_interval
        )
        await daemon.run()
