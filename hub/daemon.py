"""The hub daemon: owns the profile and override buckets, hears its regionals."""

from fleetbus import log
from fleetbus.bus import Msg
from fleetbus.daemon import Daemon
from fleetbus.heartbeat import HeartbeatLog
from fleetbus.provisioning import BucketSpec, ensure_bucket
from fleetbus.settings import HubSettings
from schemas import subjects
from schemas.heartbeat import Heartbeat, Tier

logger = log.get_logger(__name__)

BUCKETS = (
    BucketSpec(subjects.PROFILES_BUCKET, history=16, description="Profiles; history = revisions."),
    BucketSpec(subjects.OVERRIDES_BUCKET, history=16, description="Per-site and per-group overrides."),
)


async def run(settings: HubSettings) -> None:
    async with Daemon(settings, tier=Tier.HUB) as daemon:
        heard = HeartbeatLog()

        async def on_regional_heartbeat(beat: Heartbeat, _msg: Msg) -> None:
            if heard.last(beat.site) is None:
                logger.info("regional heard", region=beat.site, seq=beat.seq)
            heard.record(beat)
            daemon.metrics.peers_heard.set(len(heard))

        async def provision() -> None:
            for bucket in BUCKETS:
                await ensure_bucket(daemon.bus.js, bucket)
            await daemon.bus.subscribe(subjects.regional_heartbeats(), Heartbeat, on_regional_heartbeat)

        daemon.on_start(provision)
        await daemon.run()
