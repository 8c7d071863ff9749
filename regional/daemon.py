"""The regional daemon: replicas of the hub's buckets, what each edge receives of them
(`regional.assigner`), the region's events and inventory, enrollment and presence of its
edges."""

import asyncio
from datetime import datetime

from fleetbus.core.presence import PresencePolicy, PresenceTracker, Transition
from fleetbus.daemon.lifecycle import Daemon
from fleetbus.nats import forget
from fleetbus.nats.bus import Msg
from fleetbus.nats.heartbeat import HELLO_SPACING, HeartbeatLog
from fleetbus.nats.kv import Bucket
from fleetbus.nats.liveness import PresenceBoard
from fleetbus.nats.provisioning import ensure_stream
from fleetbus.nats.replication import SourcedStream, UpstreamProbe, from_domain, repair_sources, watch_limits
from fleetbus.runtime import log
from fleetbus.runtime.settings import RegionalSettings
from regional import streams
from regional.admission import AdmissionDesk
from regional.assigner import Assigner
from schemas import subjects
from schemas.base import utcnow
from schemas.enrollment import Enrollment, EnrollmentReply
from schemas.heartbeat import Heartbeat, Tier
from schemas.subjects import HUB_DOMAIN

logger = log.get_logger(__name__)


def heartbeat_problem(beat: Heartbeat, subject: str, region: str, enrolled: set[str]) -> str | None:
    """Why the regional must ignore `beat` (a metric label), or None if it counts."""
    if (
        subjects.edge_of(subject) != (beat.region, beat.site)
        or beat.region != region
        or beat.tier != Tier.EDGE
    ):
        return "mismatch"  # the body names another site than the subject it came on
    if beat.site not in enrolled:
        return "unknown_edge"
    return None


def enrollment_reply(
    request: Enrollment, subject: str, region: str, enrolled: set[str], max_edges: int, now: datetime
) -> EnrollmentReply:
    """Admit `request` or say why not: it came on another edge's subject (which the edge's
    link permission lets only that edge publish), it names another region, or the region is
    full (an edge already enrolled is always admitted again)."""
    if subjects.edge_of(subject) != (request.region, request.edge):
        reason = f"edge {request.edge!r} of region {request.region!r} asked on {subject}"
    elif request.region != region:
        reason = f"this is region {region!r}; the edge is configured for {request.region!r}"
    elif request.edge not in enrolled and len(enrolled) >= max_edges:
        reason = f"region {region!r} enrolls at most {max_edges:,} edges (max_edges)"
    else:
        return EnrollmentReply(region=region, edge=request.edge, accepted=True, enrolled_at=now)
    return EnrollmentReply(region=region, edge=request.edge, accepted=False, reason=reason)


class Regional:
    """One region's daemon: enrollment, its edges' presence, the streams its edges push their
    events and inventory into, and the replicas of the hub's buckets it keeps."""

    def __init__(self, daemon: Daemon, settings: RegionalSettings) -> None:
        self.daemon, self.settings = daemon, settings
        self.region = region = settings.region
        self.js, self.metrics = js, metrics = daemon.bus.js, daemon.metrics
        self.edges = Bucket(js, subjects.EDGES_BUCKET, Enrollment, metrics=metrics)
        self.replicas = [SourcedStream(js, c, metrics) for c in streams.replicas(region)]
        self.heard = HeartbeatLog()
        self.enrolled: set[str] = set()
        self.presence = PresenceBoard(
            js,
            subjects.PRESENCE_BUCKET,
            PresenceTracker(PresencePolicy(offline_after=settings.offline_after)),
            region=region,
            metrics=metrics,
            keep=self.still_enrolled,
        )
        self.probe = UpstreamProbe(
            daemon.bus.jetstream(HUB_DOMAIN, timeout=0.5), HUB_DOMAIN, self.hub_returned, metrics=metrics
        )
        self._last_hello = -HELLO_SPACING
        self.assigner = Assigner(daemon.bus, region, metrics)
        # Tokens, approval and revocation, when the server's users are kept in files here.
        self.desk = (
            AdmissionDesk(daemon.bus, settings, settings.admission_dir, metrics)
            if settings.admission_dir is not None
            else None
        )

    def wire(self) -> None:
        daemon = self.daemon
        daemon.on_start(self.provision)
        daemon.add_heartbeat(
            subjects.regional_heartbeat(self.region),
            region=self.region,
            interval=self.settings.heartbeat_interval,
            hello=subjects.hub_hello(),  # a hub that starts after this regional hears it at once
        )
        daemon.add_task("upstream-probe", self.probe.run)
        daemon.add_task("replica-repair", lambda: repair_sources(self.replicas, self.probe))
        daemon.add_task("presence", self.presence.run)
        daemon.add_task("limits", self.limits)
        daemon.add_task("assigner", self.assigner.run)

    async def still_enrolled(self, change: Transition) -> bool:
        """False once `fleetbus edge forget` deleted the edge's enrollment: its presence
        must not be written back (the hub would source it again)."""
        if await forget.is_enrolled(self.js, self.region, change.site):
            return True
        self.enrolled.discard(change.site)
        self.assigner.forget(change.site)
        return False

    async def on_edge_heartbeat(self, beat: Heartbeat, msg: Msg) -> None:
        problem = heartbeat_problem(beat, msg.subject, self.region, self.enrolled)
        if problem:
            self.metrics.heartbeats_rejected.labels(reason=problem).inc()
            logger.debug("heartbeat ignored", subject=msg.subject, site=beat.site, reason=problem)
            return
        self.presence.heard(beat.site, beat.interval_seconds)
        if self.heard.last(beat.site) is None:
            self.metrics.peers_heard.set(len(self.heard) + 1)
        self.heard.record(beat)

    async def on_enroll(self, request: Enrollment, msg: Msg) -> None:
        reply = enrollment_reply(
            request, msg.subject, self.region, self.enrolled, self.settings.max_edges, utcnow()
        )
        if reply.accepted:
            await self.edges.put(subjects.edge_key(self.region, request.edge), request)
            self.enrolled.add(request.edge)
            logger.info("edge enrolled", edge=request.edge, labels=request.labels)
        self.metrics.enrollments.labels(outcome="accepted" if reply.accepted else "refused").inc()
        await self.daemon.bus.respond(msg, reply)

    async def provision(self) -> None:
        bus = self.daemon.bus
        await ensure_stream(self.js, streams.presence_bucket(self.region))
        await ensure_stream(self.js, streams.edges_bucket(self.region))
        await ensure_stream(self.js, streams.assigned_bucket())
        for replica in self.replicas:
            await replica.ensure()
        # Edges push into these (their outbox subjects); sources per edge that an older
        # fleetbus added are dropped here.
        await ensure_stream(self.js, streams.events_stream(self.region))
        await ensure_stream(self.js, streams.inventory_stream(self.region))
        self.enrolled.update(e.edge for e in await self.edges.values())
        restored = await self.presence.restore()
        logger.info("region state loaded", enrolled=len(self.enrolled), presence=restored)
        await bus.subscribe(subjects.edge_enrolls(self.region), Enrollment, self.on_enroll)
        if self.desk is not None:
            await self.desk.start()
        await bus.subscribe(subjects.edge_heartbeats(self.region), Heartbeat, self.on_edge_heartbeat)
        if self.settings.heal_acceleration:
            await bus.nc.subscribe(subjects.hub_hello(), cb=self.on_hub_hello)

    async def on_hub_hello(self, _msg: Msg) -> None:
        """The hub (re)started listening, maybe after its server restarted faster than the
        probe can tell: kick the replicas' sources from the hub (at most twice a second)."""
        now = asyncio.get_running_loop().time()
        if now - self._last_hello >= HELLO_SPACING:
            self._last_hello = now
            for replica in self.replicas:
                await replica.kick(from_domain(HUB_DOMAIN))

    async def hub_returned(self) -> None:
        if self.settings.heal_acceleration:
            self.daemon.uplink_returned()  # the hub kicks its sources from this region on this beat
            for replica in self.replicas:
                await replica.kick(from_domain(HUB_DOMAIN))

    async def limits(self) -> None:
        names = [subjects.EVENTS_STREAM, subjects.INVENTORY_STREAM]
        await watch_limits(self.js, names, self.metrics, superseded_ok=[subjects.INVENTORY_STREAM])


async def run(settings: RegionalSettings) -> None:
    async with Daemon(settings, tier=Tier.REGIONAL) as daemon:
        regional = Regional(daemon, settings)
        regional.wire()
        try:
            await daemon.run()
        finally:
            if regional.desk is not None:
                await regional.desk.close()
