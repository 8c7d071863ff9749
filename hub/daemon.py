"""The hub daemon: owns the profile and override buckets, gathers the fleet's events."""

from fleetbus.bus import Msg
from fleetbus.daemon import Daemon
from fleetbus.heartbeat import HeartbeatLog
from fleetbus.provisioning import BucketSpec, ensure_bucket
from fleetbus.replication import SourcedStream
from fleetbus.settings import HubSettings
from hub import streams
from schemas import subjects
from schemas.heartbeat import Heartbeat, Tier

BUCKETS = (
    BucketSpec(subjects.PROFILES_BUCKET, history=16, description="Profiles; history = revisions."),
    BucketSpec(subjects.OVERRIDES_BUCKET, history=16, description="Per-site and per-group overrides."),
)


async def run(settings: HubSettings) -> None:
    async with Daemon(settings, tier=Tier.HUB) as daemon:
        js = daemon.bus.js
        heard = HeartbeatLog()
        events = SourcedStream(js, streams.events_stream(), daemon.metrics)
        applied = SourcedStream(js, streams.applied_bucket(), daemon.metrics)

        async def on_regional_heartbeat(beat: Heartbeat, _msg: Msg) -> None:
            if await events.follow(heard, beat):
                daemon.metrics.peers_heard.set(len(heard))

        async def provision() -> None:
            for bucket in BUCKETS:
                await ensure_bucket(js, bucket)
            await events.ensure(keep_sources=True)
            await applied.ensure()
            await daemon.bus.subscribe(subjects.regional_heartbeats(), Heartbeat, on_regional_heartbeat)

        daemon.on_start(provision)
        await daemon.run()
