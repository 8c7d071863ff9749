"""Hollow edges: many simulated edges in one process, for scale runs (`fleetbus sim`).

Each hollow edge is a *thin* edge (docs/architecture.md#thin-edges): no nats-server of its
own, a plain client of its regional's server, doing an edge daemon's per-edge work with the
edge daemon's code:

- enrolls with the regional (`edge.enrollment.enroll`), then heartbeats it every
  `heartbeat_interval` (`send_heartbeats`, marked `thin`);
- follows its desired state: the profiles its regional hands it (its own keys of the
  regional's `assigned` bucket, which a real edge's replica sources: so a staged rollout
  reaches it wave by wave, like a real edge) and its own and its groups' overrides in the
  regional's replica of `overrides`; recomputes it with `fleetbus.core.desired` when one of
  them changed, applies it through the `null` driver and reports the ApplyResult
  (`edge.reconciler.Reconciler`);
- reports each ApplyResult and publishes inventory snapshots (`edge.inventory`) into the
  regional's EVENTS and INVENTORY through its outbox subjects, which those streams bind.

What is shared: `assigned` and the replica of `overrides` are watched once per process
(`DesiredInputs(handed=True)`, which indexes `assigned` by edge), not once per edge:
nats-py runs a 4 Hz timer per watch (its ordered consumers' flow control), which for 3
watches x 1,000 edges was most of a process's CPU (measured with py-spy; benchmarks/
RESULTS.md). Up to `edges_per_connection` edges share one NATS connection; edges start at
`start_rate` per second so a regional is not stormed. What is not real: no workload, no
local streams (so no backlog to measure), host facts read once per process.
"""

import asyncio
import functools
import time
from collections.abc import Callable

from edge.drivers.null import NullDriver
from edge.enrollment import enroll
from edge.inventory import InventoryPublisher, host_facts
from edge.reconciler import DesiredInputs, Reconciler
from edge.trust import verifier_of
from fleetbus.core.desired import edge_groups
from fleetbus.daemon.lifecycle import Daemon
from fleetbus.nats.bus import Bus, connect
from fleetbus.nats.heartbeat import send_heartbeats
from fleetbus.nats.streams import last_message
from fleetbus.runtime import log
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.settings import HollowSettings
from schemas import subjects
from schemas.heartbeat import Tier
from schemas.inventory import HostFacts, InventorySnapshot

logger = log.get_logger(__name__)


def hollow_id(region: str, number: int) -> str:
    return f"{region}-h{number}"


class HollowEdge:
    """One hollow edge on a shared connection (`link` owns it, `bus` sends as this edge)."""

    def __init__(
        self,
        *,
        edge: str,
        settings: HollowSettings,
        link: Bus,
        host: HostFacts,
        inputs: DesiredInputs,
        metrics: DaemonMetrics,
    ) -> None:
        self.edge, self.region = edge, settings.region
        self.settings = settings
        self.link = link
        self.bus = link.sharing(f"/fleet/edge/{edge}")
        self.labels = {"region": settings.region, **settings.labels}
        self.host = host.model_copy(update={"hostname": edge})
        self.inputs = inputs
        self.metrics = metrics
        self.started_at = time.monotonic()

    async def run(self) -> None:
        region, edge, settings = self.region, self.edge, self.settings
        groups = edge_groups(region, self.labels)
        driver = NullDriver()
        inventory = InventoryPublisher(
            bus=self.bus,
            region=region,
            edge=edge,
            labels=self.labels,
            driver=driver,
            probe=self.link,
            meter=None,
            facts_file=None,
            host=self._host,
            interval=settings.inventory_interval,
            scan_interval=settings.inventory_scan_interval,
            subject=subjects.outbox_inventory(region, edge),
            first_seq=self._last_inventory_seq,
        )
        reconciler = Reconciler(
            bus=self.bus,
            driver=driver,
            region=region,
            edge=edge,
            labels=self.labels,
            groups=groups,
            metrics=self.metrics,
            on_applied=inventory.poke,
            inputs=self.inputs,
            event_subject=functools.cache(lambda kind: subjects.outbox_event(region, edge, kind)),
        )
        await enroll(
            self.bus,
            region=region,
            edge=edge,
            labels=self.labels,
            state_dir=settings.state_dir / edge,
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._heartbeats(), name=f"{edge} heartbeat")
            tasks.create_task(reconciler.run(), name=f"{edge} reconciler")
            tasks.create_task(inventory.run(), name=f"{edge} inventory")

    async def _heartbeats(self) -> None:
        await send_heartbeats(
            self.bus,
            tier=Tier.EDGE,
            site=self.edge,
            region=self.region,
            subject=subjects.edge_heartbeat(self.region, self.edge),
            interval=self.settings.heartbeat_interval,
            uptime=lambda: time.monotonic() - self.started_at,
            thin=True,
        )

    async def _host(self) -> HostFacts:
        return self.host

    async def _last_inventory_seq(self) -> int:
        """The sequence of this edge's last snapshot in the regional's INVENTORY (0 if none),
        so a restarted hollow edge does not reuse message ids the dedupe window still holds."""
        subject = subjects.edge_inventory(self.region, self.edge)
        last = await last_message(self.bus.js, subjects.INVENTORY_STREAM, subject, InventorySnapshot)
        return last.seq if last else 0


async def _connections(settings: HollowSettings, first: Bus, metrics: DaemonMetrics) -> list[Bus]:
    """`first` (the daemon's own connection) plus enough to give each its share of edges."""
    wanted = max(1, -(-settings.edges // settings.edges_per_connection))
    return [first] + [
        await connect(
            settings.nats_url,
            name=f"fleetbus-hollow-{settings.site}-{index}",
            source=f"/fleet/edge/{settings.site}",
            metrics=metrics,
            creds=settings.nats_creds,
            ca=settings.nats_ca,
            site=settings.site,
        )
        for index in range(1, wanted)
    ]


async def run_edges(
    settings: HollowSettings,
    first: Bus,
    metrics: DaemonMetrics,
    progress: Callable[[int], None] = lambda _n: None,
) -> None:
    """Start `settings.edges` hollow edges, `start_rate` per second, and run them until
    cancelled; one failing stops them all (the daemon then exits and says why)."""
    links = await _connections(settings, first, metrics)
    host = await asyncio.to_thread(host_facts, settings.state_dir)
    inputs = DesiredInputs(first, metrics, guard=verifier_of(settings, metrics), handed=True)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(inputs.run(), name="desired-inputs")
            for index in range(settings.edges):
                edge = HollowEdge(
                    edge=hollow_id(settings.region, settings.first + index),
                    settings=settings,
                    link=links[index // settings.edges_per_connection],
                    host=host,
                    inputs=inputs,
                    metrics=metrics,
                )
                tasks.create_task(edge.run(), name=edge.edge)
                progress(index + 1)
                await asyncio.sleep(1 / settings.start_rate)  # a start rate, not synchronisation
    finally:
        # All at once and briefly: the daemon's shutdown deadline covers this and its own.
        closing = await asyncio.gather(
            *(link.close(timeout=2.0) for link in links[1:]), return_exceptions=True
        )
        for failure in (c for c in closing if isinstance(c, Exception)):
            logger.warning("closing a hollow-edge connection failed", error=repr(failure))


async def run(settings: HollowSettings) -> None:
    async with Daemon(settings, tier=Tier.EDGE) as daemon:
        step = max(1, settings.edges // 10)

        def progress(started: int) -> None:
            if started % step == 0 or started == settings.edges:
                logger.info("hollow edges started", started=started, of=settings.edges)

        daemon.add_task("hollow-edges", lambda: run_edges(settings, daemon.bus, daemon.metrics, progress))
        await daemon.run()


if __name__ == "__main__":
    import sys

    from fleetbus.daemon.entry import main

    sys.exit(main("hollow", HollowSettings, run))
