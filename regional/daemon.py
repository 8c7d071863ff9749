"""The regional daemon: replicas of the hub's buckets, the region's events and inventory,
enrollment and presence of its edges."""

import asyncio

from fleetbus import forget, kvwatch, log
from fleetbus.bus import Msg
from fleetbus.daemon import Daemon
from fleetbus.errors import DecodeError
from fleetbus.heartbeat import HELLO_SPACING
from fleetbus.liveness import PresenceBoard
from fleetbus.presence import PresencePolicy, PresenceTracker, Transition
from fleetbus.provisioning import ensure_stream
from fleetbus.replication import (
    SiteFollower,
    SourcedStream,
    UpstreamProbe,
    from_domain,
    repair_sources,
    watch_limits,
)
from fleetbus.settings import RegionalSettings
from regional import streams
from schemas import subjects
from schemas.base import utcnow
from schemas.codec import JSON, decode_body, encode_body
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


async def run(settings: RegionalSettings) -> None:
    async with Daemon(settings, tier=Tier.REGIONAL) as daemon:
        region = settings.region
        js, metrics = daemon.bus.js, daemon.metrics
        replicas = [SourcedStream(js, c, metrics) for c in streams.replicas()]
        events = SourcedStream(js, streams.events_stream(region), metrics)
        inventory = SourcedStream(js, streams.inventory_stream(region), metrics)
        follower = SiteFollower([events, inventory], kick=settings.heal_acceleration)
        daemon.bus.reconnect_listeners.append(follower.server_back)  # its server restarted
        enrolled: set[str] = set()

        async def still_enrolled(change: Transition) -> bool:
            """False once `fleetbus edge forget` deleted the edge's enrollment: its presence
            must not be written back (the hub would source it again)."""
            if await forget.is_enrolled(js, region, change.site):
                return True
            enrolled.discard(change.site)
            return False

        presence = PresenceBoard(
            js,
            subjects.PRESENCE_BUCKET,
            PresenceTracker(PresencePolicy(offline_after=settings.offline_after)),
            region=region,
            metrics=metrics,
            keep=still_enrolled,
        )

        async def on_edge_heartbeat(beat: Heartbeat, msg: Msg) -> None:
            problem = heartbeat_problem(beat, msg.subject, region, enrolled)
            if problem:
                metrics.heartbeats_rejected.labels(reason=problem).inc()
                logger.debug("heartbeat ignored", subject=msg.subject, site=beat.site, reason=problem)
                return
            presence.heard(beat.site, beat.interval_seconds)
            if await follower.follow(beat):
                metrics.peers_heard.set(len(follower.heard))

        async def on_enroll(request: Enrollment, msg: Msg) -> None:
            if request.region != region:
                reply = EnrollmentReply(
                    region=region,
                    edge=request.edge,
                    accepted=False,
                    reason=f"this is region {region!r}; the edge is configured for {request.region!r}",
                )
            elif request.edge not in enrolled and len(enrolled) >= settings.max_edges:
                reply = EnrollmentReply(
                    region=region,
                    edge=request.edge,
                    accepted=False,
                    reason=f"region {region!r} enrolls at most {settings.max_edges:,} edges (max_edges)",
                )
            else:
                key = subjects.edge_key(region, request.edge)
                await js.publish(subjects.kv_subject(subjects.EDGES_BUCKET, key), encode_body(request, JSON))
                enrolled.add(request.edge)
                reply = EnrollmentReply(region=region, edge=request.edge, accepted=True, enrolled_at=utcnow())
                logger.info("edge enrolled", edge=request.edge, labels=request.labels)
            metrics.enrollments.labels(outcome="accepted" if reply.accepted else "refused").inc()
            await daemon.bus.respond(msg, reply)

        async def load_enrolled() -> None:
            for item in await kvwatch.current(js, subjects.EDGES_BUCKET):
                subject = subjects.kv_subject(subjects.EDGES_BUCKET, item.key)
                try:
                    enrolled.add(decode_body(Enrollment, item.value, subject=subject).edge)
                except DecodeError as exc:
                    logger.warning("unreadable enrollment; ignored", subject=subject, reason=exc.reason)

        async def provision() -> None:
            await ensure_stream(js, streams.presence_bucket(region))
            await ensure_stream(js, streams.edges_bucket(region))
            for replica in replicas:
                await replica.ensure()
            await events.ensure(keep_sources=True)
            await inventory.ensure(keep_sources=True)
            await load_enrolled()
            restored = await presence.restore()
            logger.info("region state loaded", enrolled=len(enrolled), presence=restored)
            await daemon.bus.subscribe(subjects.region_enroll(region), Enrollment, on_enroll)
            await daemon.bus.subscribe(subjects.edge_heartbeats(region), Heartbeat, on_edge_heartbeat)
            if settings.heal_acceleration:
                await daemon.bus.nc.subscribe(subjects.hub_hello(), cb=on_hub_hello)

        last_hello = -HELLO_SPACING

        async def on_hub_hello(_msg: Msg) -> None:
            """The hub (re)started listening, maybe after its server restarted faster than the
            probe can tell: kick the replicas' sources from the hub (at most twice a second)."""
            nonlocal last_hello
            now = asyncio.get_running_loop().time()
            if now - last_hello >= HELLO_SPACING:
                last_hello = now
                for replica in replicas:
                    await replica.kick(from_domain(HUB_DOMAIN))

        async def hub_returned() -> None:
            if settings.heal_acceleration:
                daemon.uplink_returned()  # the hub kicks its sources from this region on this beat
                for replica in replicas:
                    await replica.kick(from_domain(HUB_DOMAIN))

        async def limits() -> None:
            names = [events.name, inventory.name]
            await watch_limits(js, names, metrics, superseded_ok=[inventory.name])

        probe = UpstreamProbe(
            daemon.bus.jetstream(HUB_DOMAIN, timeout=0.5), HUB_DOMAIN, hub_returned, metrics=metrics
        )
        daemon.on_start(provision)
        daemon.add_heartbeat(
            subjects.regional_heartbeat(region),
            region=region,
            interval=settings.heartbeat_interval,
            hello=subjects.hub_hello(),  # a hub that starts after this regional hears it at once
        )
        daemon.add_task("upstream-probe", probe.run)
        daemon.add_task("replica-repair", lambda: repair_sources(replicas, probe))
        daemon.add_task("presence", presence.run)
        daemon.add_task("limits", limits)
        await daemon.run()
