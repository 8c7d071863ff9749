"""The hub daemon: owns the profile and override buckets (their one writer: `hub.desk`),
gathers the fleet's events, inventory and presence (by sourcing), and tracks which regionals
it can hear."""

import asyncio
import socket
from collections import Counter

from fleetbus.core.presence import PresencePolicy, PresenceTracker, Transition
from fleetbus.daemon.lifecycle import Daemon
from fleetbus.nats import forget
from fleetbus.nats.bus import Msg
from fleetbus.nats.liveness import PresenceBoard
from fleetbus.nats.provisioning import BucketSpec, ensure_bucket
from fleetbus.nats.replication import SiteFollower, SourcedStream, watch_limits
from fleetbus.runtime import apitoken, log
from fleetbus.runtime.identity import load as load_identity
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.settings import HubSettings
from fleetbus.runtime.signing import Signer, Verifier
from fleetbus.sdk.client import FleetClient
from hub import api, streams, web
from hub.desk import Desk
from hub.fleetview import FleetView
from hub.rollouts import Rollouts
from hub.sealer import Sealer
from schemas import subjects
from schemas.base import utcnow
from schemas.heartbeat import Heartbeat, Tier

logger = log.get_logger(__name__)

BUCKETS = (
    BucketSpec(subjects.PROFILES_BUCKET, history=16, description="Profiles; history = revisions."),
    BucketSpec(subjects.OVERRIDES_BUCKET, history=16, description="Per-site and per-group overrides."),
    BucketSpec(subjects.REGIONS_BUCKET, description="Presence of each regional, as the hub hears it."),
    BucketSpec(subjects.SECRETS_BUCKET, history=4, description="Secrets, each sealed to the hub's key."),
    BucketSpec(subjects.SEALED_BUCKET, description="Per edge: its secrets, sealed to its key."),
    BucketSpec(subjects.ROLLOUTS_BUCKET, description="Staged rollouts: one state per profile revision."),
)


async def run(settings: HubSettings) -> None:
    # Bound before anything starts, so a taken port fails the start with a clear message.
    listener = web.bind(settings.dashboard_host, settings.dashboard_port) if settings.dashboard else None
    try:
        await _run(settings, listener)
    finally:
        if listener is not None:
            listener.close()


async def _run(settings: HubSettings, listener: socket.socket | None) -> None:
    async with Daemon(settings, tier=Tier.HUB) as daemon:
        js, metrics = daemon.bus.js, daemon.metrics
        events = SourcedStream(js, streams.events_stream(), metrics, deliver=streams.region_deliver)
        inventory = SourcedStream(js, streams.inventory_bucket(), metrics, per_site=streams.inventory_source)
        presence = SourcedStream(js, streams.presence_bucket(), metrics, per_site=streams.presence_source)
        applied = SourcedStream(js, streams.applied_bucket(), metrics)
        follower = SiteFollower([events, inventory, presence], kick=settings.heal_acceleration)
        signer = Signer(load_identity(settings.signing_key)) if settings.signing_key else None
        desk = Desk(daemon.bus, settings, metrics, signer)
        view = _rollouts(daemon, settings, desk)
        daemon.bus.reconnect_listeners.append(follower.server_back)  # its server restarted
        server_back = asyncio.Event()
        daemon.bus.reconnect_listeners.append(server_back.set)

        async def hello_again() -> None:
            """Say hello again each time the hub's own server is back: a restart shorter than
            a regional's probe period is otherwise noticed by no one below, and the
            regionals' replicas of the hub's buckets (sourced through consumers that died
            with the server) would wait for nats-server's own retry."""
            while True:
                await server_back.wait()
                server_back.clear()
                await daemon.bus.announce(subjects.hub_hello())

        async def still_known(change: Transition) -> bool:
            """False for a region forgotten (`fleetbus region forget`) while its record would
            still change (stale, then offline): not written back. Its next first heartbeat is."""
            return change.previous is None or await forget.is_recorded(
                js, subjects.REGIONS_BUCKET, change.site
            )

        regions = PresenceBoard(
            js,
            subjects.REGIONS_BUCKET,
            PresenceTracker(PresencePolicy(offline_after=settings.region_offline_after)),
            metrics=metrics,
            keep=still_known,
        )

        async def on_regional_heartbeat(beat: Heartbeat, msg: Msg) -> None:
            if msg.subject != subjects.regional_heartbeat(beat.site) or beat.tier != Tier.REGIONAL:
                metrics.heartbeats_rejected.labels(reason="mismatch").inc()
                return
            regions.heard(beat.site, beat.interval_seconds)
            if await follower.follow(beat):
                metrics.peers_heard.set(len(follower.heard))

        async def provision() -> None:
            for bucket in BUCKETS:
                await ensure_bucket(js, bucket)
            for stream in follower.streams:
                await stream.ensure(keep_sources=True)
            await applied.ensure()
            await regions.restore()
            await desk.provision()
            await daemon.bus.subscribe(subjects.regional_heartbeats(), Heartbeat, on_regional_heartbeat)
            # Regionals that started first beat now instead of one interval from now: until the
            # hub hears a region, it has not added that region's sources (nothing of it shows).
            await daemon.bus.nc.publish(subjects.hub_hello(), b"")

        daemon.add_task("hello", hello_again)

        async def limits() -> None:
            await watch_limits(
                js,
                [s.name for s in [*follower.streams, applied]],
                metrics,
                superseded_ok=[inventory.name, presence.name, applied.name],
            )

        daemon.on_start(provision)
        _sealer(daemon, settings, signer)
        daemon.add_task("presence", regions.run)
        daemon.add_task("limits", limits)
        if listener is not None:
            _dashboard(daemon, settings, listener, view)
        try:
            await daemon.run()
        finally:
            await desk.close()


def _rollouts(daemon: Daemon, settings: HubSettings, desk: Desk) -> FleetView:
    """The hub's view of the fleet (the dashboard's too), and the rollout controller on it."""
    view = FleetView(
        FleetClient(daemon.bus, settings.nats_url),
        on_undecodable=lambda schema: daemon.metrics.decode_errors.labels(kind=schema).inc(),
    )
    rollouts = Rollouts(daemon.bus.js, desk.profiles)
    rollouts.view, desk.rollouts = view, rollouts
    daemon.add_task("fleet-view", view.run)
    daemon.add_task("rollouts", rollouts.run)
    return view


def _sealer(daemon: Daemon, settings: HubSettings, signer: Signer | None) -> None:
    """Secrets, sealed to each edge whose desired state references them (none without a key)."""
    if signer is None:
        return
    guard = Verifier([signer.key_id, *settings.trusted_keys], track=False)
    sealer = Sealer(daemon.bus, signer, guard, daemon.metrics)
    daemon.add_task("sealer", sealer.run)


def _dashboard(daemon: Daemon, settings: HubSettings, listener: socket.socket, view: FleetView) -> None:
    """The web dashboard and JSON API, on `listener`, from the live view of the hub's buckets."""
    signer = settings.signing_key and load_identity(settings.signing_key).public_key
    tokens = (lambda token: apitoken.check(token, {signer}, utcnow())) if signer else None
    if tokens is None:
        logger.warning("OPEN dashboard: the hub has no signing key, so its dashboard asks for no token")
    app = web.create_app(view, daemon.metrics, hosts=settings.dashboard_hosts, tokens=tokens)
    host, port = listener.getsockname()[:2]
    logger.info("dashboard", url=f"http://{host}:{port}/")
    daemon.add_task("fleet-counts", lambda: export_counts(view, daemon.metrics))
    daemon.add_task("dashboard", lambda: web.serve(app, listener))


async def export_counts(view: FleetView, metrics: DaemonMetrics, interval: float = 2.0) -> None:
    """`fleetbus_fleet_edges{presence, compliance}` from the dashboard's view, every `interval` s."""
    shown: set[tuple[str, str]] = set()
    while True:
        counts = Counter((r.presence.value, r.compliance.value) for r in api.rows(view))
        for presence, compliance in shown - set(counts):
            metrics.fleet_edges.labels(presence=presence, compliance=compliance).set(0)
        for (presence, compliance), n in counts.items():
            metrics.fleet_edges.labels(presence=presence, compliance=compliance).set(n)
        shown |= set(counts)
        await asyncio.sleep(interval)  # a sampling period
