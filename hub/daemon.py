"""The hub daemon: owns the profile and override buckets (their one writer: `hub.desk`),
gathers the fleet's events, inventory and presence (by sourcing), and tracks which regionals
it can hear.

A clustered hub runs one daemon beside each node (docs/clustering.md). What only one may do
at a time (the desk, the rollout controller, the sealer, regions' presence, the sources of
the streams it fills) runs in the daemon holding the hub's lease; the view of the fleet, the
dashboard and the API run in every one."""

import asyncio
import contextlib
import socket
from dataclasses import replace

from fleetbus.core.lease import Held
from fleetbus.core.presence import PresencePolicy, PresenceTracker, Transition
from fleetbus.daemon.lifecycle import Daemon
from fleetbus.nats import forget
from fleetbus.nats.bus import Msg
from fleetbus.nats.lease import Lease
from fleetbus.nats.liveness import PresenceBoard
from fleetbus.nats.provisioning import BucketSpec, ensure_bucket
from fleetbus.nats.replication import SiteFollower, SourcedStream, watch_limits
from fleetbus.nats.streams import StreamConfig
from fleetbus.runtime import apitoken, log
from fleetbus.runtime.identity import load as load_identity
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.settings import HubSettings
from fleetbus.runtime.signing import Signer, Verifier
from fleetbus.runtime.tasks import wait_event
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
    BucketSpec(subjects.OPERATORS_BUCKET, description="Operators added at run time, by name."),
)
HUB_LEASE = "hub"  # the key of the lease the active hub daemon holds
BEATS_QUEUED = 10_000  # regionals' heartbeats waiting for the active daemon's duties
# Pauses (s) before each hello once the hub's server is back: at 0, 1, 2, 4 and 8 s, past a
# leaf link's reconnect (every 1 s, `ServerSpec.leaf_reconnect`) and its TLS handshake.
HELLO_AFTER_RESTART = (0.0, 1.0, 1.0, 2.0, 4.0)


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
        hub = Hub(daemon, settings)
        daemon.bus.reconnect_listeners.append(hub.server_restarted)
        daemon.on_start(hub.provision)
        daemon.add_task("hello", hub.hello_again)
        if settings.replicas > 1:
            daemon.add_task("lease", lambda: hub.lease.hold(hub.duties))
        else:
            # A hub of one server has no other daemon to hand its duties to: a lease could only
            # take them away (a renewal late while the daemon is busy) and make its desk miss.
            daemon.add_task("duties", lambda: hub.lease.hold_alone(hub.duties))
        daemon.add_task("limits", hub.limits)
        daemon.add_task("operators", hub.desk.follow_operators)
        if listener is not None:
            _dashboard(daemon, settings, listener, hub.view)
        try:
            await daemon.run()
        finally:
            await hub.desk.close()


class Hub:
    """The hub daemon's parts: what every daemon of a clustered hub runs, and the duties of
    the one holding the lease (`duties`)."""

    def __init__(self, daemon: Daemon, settings: HubSettings) -> None:
        self.daemon, self.settings = daemon, settings
        js, metrics = daemon.bus.js, daemon.metrics
        self.js, self.metrics = js, metrics
        copies = settings.replicas
        self.events = SourcedStream(
            js, _replicated(streams.events_stream(), copies), metrics, deliver=streams.region_deliver
        )
        self.inventory = SourcedStream(
            js, _replicated(streams.inventory_bucket(), copies), metrics, per_site=streams.inventory_source
        )
        self.presence = SourcedStream(
            js, _replicated(streams.presence_bucket(), copies), metrics, per_site=streams.presence_source
        )
        self.applied = SourcedStream(js, _replicated(streams.applied_bucket(), copies), metrics)
        self.signer = Signer(load_identity(settings.signing_key)) if settings.signing_key else None
        self.desk = Desk(daemon.bus, settings, metrics, self.signer)
        self.view = _view(daemon, settings)
        self.lease = Lease(
            js, subjects.LEASES_BUCKET, HUB_LEASE, settings.node or settings.site, metrics=metrics
        )
        # The active daemon's, while it is: a new one each time this daemon takes the lease,
        # so the first beat of each region re-adds (a no-op) and kicks its sources.
        self.follower: SiteFollower | None = None
        # Regionals' heartbeats, handled by the active daemon's duties (so losing the lease
        # stops their source kicks too); None while another daemon is the active one.
        self.beats: asyncio.Queue[Heartbeat] | None = None
        self.server_back = asyncio.Event()
        daemon.bus.reconnect_listeners.append(self.server_back.set)
        self.regions = PresenceBoard(
            js,
            subjects.REGIONS_BUCKET,
            PresenceTracker(PresencePolicy(offline_after=settings.region_offline_after)),
            metrics=metrics,
            keep=self.still_known,
        )

    async def provision(self) -> None:
        copies = self.settings.replicas
        for bucket in BUCKETS:
            await ensure_bucket(self.js, replace(bucket, replicas=copies))
        leases = BucketSpec(
            subjects.LEASES_BUCKET,
            replicas=copies,
            ttl=self.lease.policy.ttl,
            description="Who holds each hub lease (docs/clustering.md).",
        )
        await ensure_bucket(self.js, leases)
        await self.desk.provision()
        await self.daemon.bus.subscribe(subjects.regional_heartbeats(), Heartbeat, self.on_regional_heartbeat)

    async def duties(self, held: Held) -> None:
        """What only the daemon holding the hub's lease does, until it no longer holds it."""
        logger.info("active hub daemon", node=self.lease.holder, lease_revision=held.revision)
        follower = SiteFollower(
            [self.events, self.inventory, self.presence], kick=self.settings.heal_acceleration
        )
        # New each term: what they read in an earlier term may be stale by now.
        rollouts = Rollouts(self.js, self.desk.profiles)
        rollouts.view, self.desk.rollouts = self.view, rollouts
        sealer = _sealer(self.daemon, self.settings, self.signer)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.desk.serve(), name="desk")
                for stream in follower.streams:
                    await stream.ensure(keep_sources=True)
                await self.applied.ensure()
                await self.regions.restore()
                self.follower, self.beats = follower, asyncio.Queue(maxsize=BEATS_QUEUED)
                group.create_task(self._heard(follower, self.beats), name="regional heartbeats")
                group.create_task(rollouts.run(), name="rollouts")
                group.create_task(self.regions.run(), name="presence")
                if sealer is not None:
                    group.create_task(sealer.run(), name="sealer")
                # Regionals beat now instead of one interval from now: until the hub hears a
                # region, it has not added that region's sources (nothing of it shows).
                await self.daemon.bus.nc.publish(subjects.hub_hello(), b"")
        finally:
            self.follower, self.beats = None, None

    async def _heard(self, follower: SiteFollower, beats: "asyncio.Queue[Heartbeat]") -> None:
        while True:
            beat = await beats.get()
            self.regions.heard(beat.site, beat.interval_seconds)
            if await follower.follow(beat):
                self.metrics.peers_heard.set(len(follower.heard))

    async def on_regional_heartbeat(self, beat: Heartbeat, msg: Msg) -> None:
        if msg.subject != subjects.regional_heartbeat(beat.site) or beat.tier != Tier.REGIONAL:
            self.metrics.heartbeats_rejected.labels(reason="mismatch").inc()
            return
        beats = self.beats
        if beats is None:  # another daemon of a clustered hub is the active one
            return
        with contextlib.suppress(asyncio.QueueFull):  # the next beat of that region comes soon
            beats.put_nowait(beat)

    def server_restarted(self) -> None:
        """Its own server is back, maybe from a crash (`SiteFollower.server_back`)."""
        if self.follower is not None:
            self.follower.server_back()

    async def hello_again(self) -> None:
        """Say hello again each time the hub's own server is back: a restart shorter than a
        regional's probe period is otherwise noticed by no one below, and the regionals'
        replicas of the hub's buckets (sourced through consumers that died with the server)
        would wait for nats-server's own retry (10 s to more than 30 s, measured:
        tests/test_dashboard.py). Several times (`HELLO_AFTER_RESTART`): this daemon is
        usually back on the server before the regionals' leaf links are, and a hello
        published before a link is up does not reach that regional."""
        while True:
            await self.server_back.wait()
            for pause in HELLO_AFTER_RESTART:
                self.server_back.clear()
                if await wait_event(self.server_back, pause):
                    break  # back again meanwhile: start over
                await self.daemon.bus.announce(subjects.hub_hello())

    async def still_known(self, change: Transition) -> bool:
        """False for a region forgotten (`fleetbus region forget`) while its record would
        still change (stale, then offline): not written back. Its next first heartbeat is."""
        return change.previous is None or await forget.is_recorded(
            self.js, subjects.REGIONS_BUCKET, change.site
        )

    async def limits(self) -> None:
        await watch_limits(
            self.js,
            [s.name for s in (self.events, self.inventory, self.presence, self.applied)],
            self.metrics,
            superseded_ok=[self.inventory.name, self.presence.name, self.applied.name],
        )


def _replicated(config: StreamConfig, replicas: int) -> StreamConfig:
    config.num_replicas = replicas
    return config


def _view(daemon: Daemon, settings: HubSettings) -> FleetView:
    """The hub's view of the fleet: the dashboard's, and the rollout controller's (run by the
    active daemon only)."""
    view = FleetView(
        FleetClient(daemon.bus, settings.nats_url),
        on_undecodable=lambda schema: daemon.metrics.decode_errors.labels(kind=schema).inc(),
    )
    daemon.add_task("fleet-view", view.run)
    return view


def _sealer(daemon: Daemon, settings: HubSettings, signer: Signer | None) -> Sealer | None:
    """Secrets, sealed to each edge whose desired state references them (none without a key)."""
    if signer is None:
        return None
    guard = Verifier([signer.key_id, *settings.trusted_keys], track=False)
    return Sealer(daemon.bus, signer, guard, daemon.metrics)


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


async def export_counts(
    view: FleetView, metrics: DaemonMetrics, interval: float = 5.0, unchanged: float = 30.0
) -> None:
    """`fleetbus_fleet_edges{presence, compliance}` from the dashboard's view, every `interval`
    s (Prometheus scrapes every 15 s) when the view changed, and every `unchanged` s anyway
    (what time alone changes: a region not heard, an override expired). Counting takes a row
    per edge, which for 10,000 edges every 2 s was 40 % of the hub daemon's CPU during a
    fan-out (py-spy, benchmarks/fanout.py)."""
    shown: set[tuple[str, str]] = set()
    counted, at = -1, float("-inf")
    loop = asyncio.get_running_loop()
    while True:
        if view.version == counted and loop.time() - at < unchanged:
            await asyncio.sleep(interval)  # a sampling period
            continue
        counted, at = view.version, loop.time()
        counts = api.counts(view)
        for presence, compliance in shown - set(counts):
            metrics.fleet_edges.labels(presence=presence, compliance=compliance).set(0)
        for (presence, compliance), n in counts.items():
            metrics.fleet_edges.labels(presence=presence, compliance=compliance).set(n)
        shown |= set(counts)
        await asyncio.sleep(interval)  # a sampling period
