"""The regional daemon: replicas of the hub's buckets, the region's events, edge heartbeats."""

from fleetbus.bus import Msg
from fleetbus.daemon import Daemon
from fleetbus.heartbeat import HeartbeatLog
from fleetbus.provisioning import BucketSpec, ensure_bucket
from fleetbus.replication import SourcedStream, UpstreamProbe, from_domain
from fleetbus.settings import RegionalSettings
from regional import streams
from schemas import subjects
from schemas.heartbeat import Heartbeat, Tier
from schemas.subjects import HUB_DOMAIN

PRESENCE = BucketSpec(
    subjects.PRESENCE_BUCKET, history=1, description="Presence state changes of this region's edges."
)


async def run(settings: RegionalSettings) -> None:
    async with Daemon(settings, tier=Tier.REGIONAL) as daemon:
        region = settings.region
        js = daemon.bus.js
        heard = HeartbeatLog()
        replicas = [SourcedStream(js, c, daemon.metrics) for c in streams.replicas()]
        events = SourcedStream(js, streams.events_stream(), daemon.metrics)

        async def on_edge_heartbeat(beat: Heartbeat, _msg: Msg) -> None:
            if await events.follow(heard, beat):
                daemon.metrics.peers_heard.set(len(heard))

        async def provision() -> None:
            await ensure_bucket(js, PRESENCE)
            for replica in replicas:
                await replica.ensure()
            await events.ensure(keep_sources=True)
            await daemon.bus.subscribe(subjects.edge_heartbeats(region), Heartbeat, on_edge_heartbeat)

        async def hub_returned() -> None:
            daemon.beat_now()
            for replica in replicas:
                await replica.kick(from_domain(HUB_DOMAIN))

        probe = UpstreamProbe(
            daemon.bus.jetstream(HUB_DOMAIN, timeout=0.5), HUB_DOMAIN, hub_returned, metrics=daemon.metrics
        )
        daemon.on_start(provision)
        daemon.add_heartbeat(
            subjects.regional_heartbeat(region), region=region, interval=settings.heartbeat_interval
        )
        daemon.add_task("upstream-probe", probe.run)
        await daemon.run()
