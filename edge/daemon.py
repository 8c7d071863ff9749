"""The edge daemon: local streams and replicas, the reconciler, heartbeats to its regional."""

import asyncio

from edge import streams
from edge.drivers.local import LocalDriver
from edge.reconciler import Reconciler
from fleetbus.daemon import Daemon
from fleetbus.desired import edge_groups
from fleetbus.provisioning import ensure_stream
from fleetbus.replication import SourcedStream, UpstreamProbe, from_domain
from fleetbus.settings import EdgeSettings
from schemas import subjects
from schemas.heartbeat import Tier

LIMITS_INTERVAL = 15.0  # seconds between reads of the local streams' eviction counts


async def run(settings: EdgeSettings) -> None:
    async with Daemon(settings, tier=Tier.EDGE) as daemon:
        region, edge = settings.region, settings.site
        js = daemon.bus.js
        groups = edge_groups(region, settings.labels)
        replicas = [SourcedStream(js, c, daemon.metrics) for c in streams.replicas(region, edge, groups)]

        async def provision() -> None:
            await ensure_stream(js, streams.events_stream(region, edge))
            await ensure_stream(js, streams.inventory_stream(region, edge))
            for replica in replicas:
                await replica.ensure()

        async def upstream_returned() -> None:
            daemon.beat_now()  # so the regional kicks its sources from us without waiting
            for replica in replicas:
                await replica.kick(from_domain(region))

        async def count_evictions() -> None:
            while True:
                info = await js.stream_info(subjects.EVENTS_STREAM)
                daemon.metrics.stream_evicted.labels(stream=subjects.EVENTS_STREAM).set(
                    max(0, info.state.first_seq - 1)
                )
                await asyncio.sleep(LIMITS_INTERVAL)  # a sampling period

        reconciler = Reconciler(
            bus=daemon.bus,
            driver=LocalDriver(settings.state_dir),
            region=region,
            edge=edge,
            labels=settings.labels,
            groups=groups,
            metrics=daemon.metrics,
        )
        probe = UpstreamProbe(
            daemon.bus.jetstream(region, timeout=0.5), region, upstream_returned, metrics=daemon.metrics
        )
        daemon.on_start(provision)
        daemon.add_heartbeat(
            subjects.edge_heartbeat(region, edge), region=region, interval=settings.heartbeat_interval
        )
        daemon.add_task("reconciler", reconciler.run)
        daemon.add_task("upstream-probe", probe.run)
        daemon.add_task("evictions", count_evictions)
        await daemon.run()
