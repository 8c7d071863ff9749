"""The edge daemon: local streams and replicas, the reconciler, inventory, heartbeats."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from edge import streams
from edge.credentials import CredentialsDesk
from edge.devices import DeviceGateway, DeviceRegistry
from edge.drivers import ClusterDriver, Driver
from edge.drivers.local import LocalDriver
from edge.enrollment import enroll, enrolled_before, join, joined_before, machine_id, read_token
from edge.inventory import InventoryPublisher, host_facts
from edge.reconciler import DesiredInputs, Reconciler
from edge.telemetry import TelemetryForwarder
from edge.trust import verifier_of
from fleetbus.core.desired import edge_groups
from fleetbus.daemon.lifecycle import Daemon
from fleetbus.errors import ConfigError
from fleetbus.nats.backlog import BacklogMeter
from fleetbus.nats.bus import store_event
from fleetbus.nats.provisioning import ensure_stream
from fleetbus.nats.replication import SourcedStream, UpstreamProbe, from_domain, repair_sources
from fleetbus.nats.uplink import Forwarder, Uplink
from fleetbus.runtime import identity
from fleetbus.runtime.settings import EdgeSettings
from schemas import subjects
from schemas.event import EventKind
from schemas.heartbeat import Tier


async def run(settings: EdgeSettings) -> None:
    async with _driver(settings) as driver, Daemon(settings, tier=Tier.EDGE) as daemon:
        region, edge = settings.region, settings.site
        js = daemon.bus.js
        groups = edge_groups(region, settings.labels)
        cluster = driver if isinstance(driver, ClusterDriver) else None  # nodes, workloads, drift
        registry = _device_registry(settings, daemon)
        replicas = [SourcedStream(js, c, daemon.metrics) for c in streams.replicas(region, edge)]
        enrolled = _enrolled(settings)
        # Its own key: the hub seals this edge's secrets to it (docs/security.md#sealed-secrets).
        seed = identity.seed_of(settings.nats_creds)
        secrets = _SealedReplica(
            SourcedStream(js, streams.sealed_replica(region, edge), daemon.metrics),
            replicas,
            enabled=bool(seed),
        )

        async def provision() -> None:
            await _provision(daemon, region, edge, replicas, secrets)

        async def upstream_returned() -> None:
            for forwarder in forwarders:
                forwarder.poke()  # resume pushing events and inventory up at once
            inventory.poke()
            telemetry.poke()
            if settings.heal_acceleration:
                daemon.uplink_returned()
                for replica in replicas:
                    await replica.kick(from_domain(region))

        async def enrollment() -> None:
            await _redeem_token(settings)
            await enroll(
                daemon.bus, region=region, edge=edge, labels=settings.labels, state_dir=settings.state_dir
            )
            enrolled.set()

        probe = UpstreamProbe(
            daemon.bus.jetstream(region, timeout=0.5), region, upstream_returned, metrics=daemon.metrics
        )
        forwarders = _forwarders(daemon, region, edge, enrolled)
        inventory = InventoryPublisher(
            bus=daemon.bus,
            region=region,
            edge=edge,
            labels=settings.labels,
            driver=driver,
            probe=probe,
            meter=BacklogMeter(daemon.bus, forwarders),
            facts_file=settings.facts_file or settings.state_dir / "facts.json",
            host=lambda: asyncio.to_thread(host_facts, settings.state_dir),
            interval=settings.inventory_interval,
            scan_interval=settings.inventory_scan_interval,
            metrics=daemon.metrics,
            cluster=cluster.inventory if cluster else None,
            devices=registry.records,
            public_key=identity.public_key(seed) if seed else "",
        )
        telemetry = _telemetry(daemon, settings, probe, registry)
        reconciler = Reconciler(
            bus=daemon.bus,
            driver=driver,
            region=region,
            edge=edge,
            labels=settings.labels,
            groups=groups,
            metrics=daemon.metrics,
            on_applied=inventory.poke,
            on_desired=lambda desired: telemetry.configure(desired.document),
            guard=verifier_of(settings, daemon.metrics),
            seed=seed,
            on_secrets=secrets.follow,
        )
        secrets.inputs = reconciler.inputs
        daemon.on_start(provision)
        daemon.on_start(DeviceGateway(daemon.bus, registry, region=region, edge=edge).start)
        _add_bridge(daemon, settings, registry)
        daemon.add_heartbeat(
            subjects.edge_heartbeat(region, edge),
            region=region,
            interval=settings.heartbeat_interval,
            after=enrolled,
        )
        daemon.add_task("enrollment", enrollment)
        daemon.add_task("reconciler", reconciler.run)
        if cluster:
            watch = cluster.watch_drift
            daemon.add_task("drift", lambda: watch(settings.kube_drift_interval, reconciler.report_drift))
        daemon.add_task("upstream-probe", probe.run)
        daemon.add_task("replica-repair", lambda: repair_sources(replicas, probe))
        daemon.add_task("inventory", inventory.run)
        daemon.add_task("telemetry", telemetry.run)
        desk = _credentials_desk(daemon, settings)
        try:
            await daemon.run()
        finally:
            if desk is not None:
                await desk.close()


@contextlib.asynccontextmanager
async def _driver(settings: EdgeSettings) -> AsyncIterator[Driver]:
    """The driver the settings name; the kubernetes one holds an API client until the end."""
    if settings.driver == "local":
        yield LocalDriver(settings.state_dir)
        return
    try:
        from edge.drivers import kubernetes  # noqa: PLC0415 - an optional dependency
    except ImportError as exc:
        msg = f"driver kubernetes needs kubernetes-asyncio ({exc}): pip install 'fleetbus[k8s]'"
        raise ConfigError(msg) from exc
    api = await kubernetes.connect(
        kubeconfig=settings.kubeconfig,
        context=settings.kube_context,
        in_cluster=settings.kube_in_cluster,
        timeout=settings.kube_request_timeout,
    )
    try:
        yield kubernetes.KubernetesDriver(
            api,
            site=settings.site,
            state_dir=settings.state_dir,
            rollout_timeout=settings.kube_rollout_timeout,
        )
    finally:
        await api.close()


async def _bridge(url: str, settings: EdgeSettings, registry: DeviceRegistry) -> None:
    try:
        from edge import mqttbridge  # noqa: PLC0415 - an optional dependency
    except ImportError as exc:
        msg = f"mqtt_bridge_url needs aiomqtt ({exc}): pip install 'fleetbus[mqtt]'"
        raise ConfigError(msg) from exc
    await mqttbridge.run(
        url,
        settings.mqtt_bridge_topics,
        registry,
        client_id=f"fleetbus-{settings.site}",
        username=settings.mqtt_bridge_username,
        password_file=settings.mqtt_bridge_password_file,
        ca=settings.mqtt_bridge_ca,
    )


def _forwarders(daemon: Daemon, region: str, edge: str, enrolled: asyncio.Event) -> list[Forwarder]:
    """The tasks that push the edge's events and inventory to its regional, once enrolled."""
    forwarders = [
        Forwarder(daemon.bus, uplink, region, after=enrolled, metrics=daemon.metrics)
        for uplink in (Uplink.events(region, edge), Uplink.inventory(region, edge))
    ]
    for forwarder in forwarders:
        daemon.add_task(f"uplink-{forwarder.uplink.stream.lower()}", forwarder.run)
    return forwarders


async def _provision(
    daemon: Daemon, region: str, edge: str, replicas: list[SourcedStream], secrets: "_SealedReplica"
) -> None:
    js = daemon.bus.js
    await ensure_stream(js, streams.events_stream(region, edge))
    await ensure_stream(js, streams.inventory_stream(region, edge))
    for replica in replicas:
        await replica.ensure()
    await secrets.resume()


def _device_registry(settings: EdgeSettings, daemon: Daemon) -> DeviceRegistry:
    return DeviceRegistry(
        offline_after=settings.device_offline_after,
        max_payload=settings.device_max_payload,
        max_devices=settings.device_max_tracked,
        metrics=daemon.metrics,
    )


class _SealedReplica:
    """The replica of this edge's sealed secrets, and their mirror: made the first time its
    desired state references a secret (until then it costs nothing), kept after (a restart
    follows it again if it exists)."""

    def __init__(self, stream: SourcedStream, replicas: list[SourcedStream], *, enabled: bool) -> None:
        self.stream, self.replicas = stream, replicas
        self.enabled = enabled  # an edge without a key of its own opens no secrets
        self.inputs: DesiredInputs | None = None

    async def follow(self) -> None:
        await self.stream.ensure()
        if self.stream not in self.replicas:
            self.replicas.append(self.stream)  # kicked and repaired like the others from now on
        if self.inputs is not None:
            self.inputs.follow_sealed()

    async def resume(self) -> None:
        if self.enabled and await self.stream.exists():
            await self.follow()


def _enrolled(settings: EdgeSettings) -> asyncio.Event:
    """Set once the regional admitted this edge (at once if it did before a restart)."""
    enrolled = asyncio.Event()
    if enrolled_before(settings.state_dir, settings.region):
        enrolled.set()
    return enrolled


def _add_bridge(daemon: Daemon, settings: EdgeSettings, registry: DeviceRegistry) -> None:
    if settings.mqtt_bridge_url:
        url = settings.mqtt_bridge_url
        daemon.add_task("mqtt-bridge", lambda: _bridge(url, settings, registry))


def _telemetry(
    daemon: Daemon, settings: EdgeSettings, probe: UpstreamProbe, registry: DeviceRegistry
) -> TelemetryForwarder:
    """Forwards the readings its devices send that the profiles' telemetry rules select."""
    region, edge = settings.region, settings.site
    subject = subjects.edge_event(region, edge, EventKind.TELEMETRY.value)
    telemetry = TelemetryForwarder(
        lambda event: store_event(daemon.bus, subject, event),
        region=region,
        edge=edge,
        link=probe,
        max_rate=settings.telemetry_max_rate,
        max_backlog=settings.telemetry_max_backlog,
        metrics=daemon.metrics,
    )
    registry.listeners.append(telemetry.offer)
    return telemetry


async def _redeem_token(settings: EdgeSettings) -> None:
    """A new edge's first step: redeem its enrollment token, unless done before."""
    token = read_token(settings.enroll_token, settings.enroll_token_file)
    if token and not joined_before(settings.state_dir, token):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        await join(
            token,
            region=settings.region,
            edge=settings.site,
            public_key=_public_key(settings.nats_creds),
            machine=machine_id(settings.machine_id),
            url=settings.enroll_url,
            state_dir=settings.state_dir,
            ca=settings.nats_ca,
        )


def _credentials_desk(daemon: Daemon, settings: EdgeSettings) -> CredentialsDesk | None:
    """Devices' MQTT credentials, when the server's users are kept in files here."""
    if settings.admission_dir is None:
        return None
    desk = CredentialsDesk(
        daemon.bus,
        region=settings.region,
        edge=settings.site,
        directory=settings.admission_dir,
        system_creds=settings.system_creds,
        nats_url=settings.nats_url,
        ca=settings.nats_ca,
    )
    daemon.on_start(desk.start)
    return desk


def _public_key(creds: Path | None) -> str:
    """The edge's own public key, which its enrollment binds (its seed stays here)."""
    if creds is None:
        msg = "an edge enrolling with a token needs its identity: set nats_creds to its nkey seed file"
        raise ConfigError(msg)
    return identity.load(creds).public_key
