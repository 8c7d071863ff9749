"""The regional daemon: hears its edges' heartbeats and heartbeats the hub."""

from fleetbus import log
from fleetbus.bus import Msg
from fleetbus.daemon import Daemon
from fleetbus.heartbeat import HeartbeatLog
from fleetbus.provisioning import BucketSpec, ensure_bucket
from fleetbus.settings import RegionalSettings
from schemas import subjects
from schemas.heartbeat import Heartbeat, Tier

logger = log.get_logger(__name__)

PRESENCE = BucketSpec(
    subjects.PRESENCE_BUCKET, history=1, description="Presence state changes of this region's edges."
)


async def run(settings: RegionalSettings) -> None:
    async with Daemon(settings, tier=Tier.REGIONAL) as daemon:
        region = settings.region
        heard = HeartbeatLog()

        async def on_edge_heartbeat(beat: Heartbeat, _msg: Msg) -> None:
            first = heard.last(beat.site) is None
            heard.record(beat)
            if first:
                logger.info("edge heard", edge=beat.site, seq=beat.seq)
                daemon.metrics.peers_heard.set(len(heard))

        async def provision() -> None:
            await ensure_bucket(daemon.bus.js, PRESENCE)
            await daemon.bus.subscribe(subjects.edge_heartbeats(region), Heartbeat, on_edge_heartbeat)

        daemon.on_start(provision)
        daemon.add_heartbeat(
            subjects.regional_heartbeat(region), region=region, interval=settings.heartbeat_interval
        )
        await daemon.run()
