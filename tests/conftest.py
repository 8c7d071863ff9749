"""Fixtures that start real nats-server processes on free ports (never a mocked NATS)."""

import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from fleetbus.devfleet import identities
from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.plan import FleetPlan, plan_fleet, ports_needed
from fleetbus.devfleet.servers import NatsServer
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.runtime import identity
from schemas import subjects
from schemas.heartbeat import Tier
from tests.helpers import arun_cli


class Chain:
    """Running servers of a plan, by site name."""

    def __init__(self, plan: FleetPlan) -> None:
        self.plan = identities.secure(plan)
        self.servers = {s.name: NatsServer(s.server, s.workdir) for s in self.plan.sites}

    def url(self, site: str) -> str:
        return self.plan.site(site).server.client_url

    def creds(self, site: str) -> Path:
        """The identity of `site` (its daemon's): tests act as that site."""
        return self.plan.site(site).creds_path

    async def connect(self, site: str, **options: Any) -> Client:
        """A nats-py client of `site`'s server, as that site."""
        return await connect_as(self.plan, site, **options)

    async def start(self) -> None:
        for tier in (Tier.HUB, Tier.REGIONAL, Tier.EDGE):
            for site in self.plan.by_tier(tier):
                await self.servers[site.name].start()

    async def stop(self) -> None:
        for server in reversed(list(self.servers.values())):
            await server.stop()


def admin_creds(plan: FleetPlan) -> Path:
    """The dev fleet's admin operator identity (what `fleetbus` commands use by default)."""
    return identities.operator_creds(plan.state_dir)


def hub_args(plan: FleetPlan) -> tuple[str, ...]:
    """The CLI options that reach this fleet's hub as its admin."""
    return ("--hub", plan.site("hub").server.client_url, "--creds", str(admin_creds(plan)))


async def device_login(plan: FleetPlan, edge: str, device: str, *, gateway: bool = False) -> dict[str, Any]:
    """MQTT credentials of `device` at `edge` (`fleetbus device add`) and the TLS context
    that verifies the edge's listener, as aiomqtt's `username`, `password`, `tls_context`
    keywords; a `gateway` may publish for every device of the edge."""
    done = await arun_cli(
        "device",
        "add",
        edge,
        device,
        "--json",
        "--region",
        plan.site(edge).region,
        *(["--gateway"] if gateway else []),
        *hub_args(plan),
    )
    assert done.returncode == 0, done.stderr
    login = json.loads(done.stdout)
    return {"username": login["username"], "password": login["password"], "tls_context": fleet_tls(plan)}


def fleet_tls(plan: FleetPlan) -> ssl.SSLContext:
    """A client TLS context that verifies the fleet's certificates (its CA)."""
    return ssl.create_default_context(cafile=str(identities.ca_cert(plan.state_dir)))


async def connect_as(plan: FleetPlan, site: str, **options: Any) -> Client:
    """A nats-py client of `site`'s server with that site's identity and inbox prefix."""
    planned = plan.site(site)
    options.setdefault("nkeys_seed", str(planned.creds_path))
    options.setdefault("inbox_prefix", subjects.inbox_prefix(site))
    auth = planned.server.auth
    if auth is not None and auth.tls is not None:
        options.setdefault("tls", identity.tls_context(Path(auth.tls.ca)))  # used if the port asks
    return await nats.connect(planned.server.client_url, **options)


@contextlib.asynccontextmanager
async def running_chain(
    tmp_path: Path, regions: int, edges: int, *, mqtt: bool = False
) -> AsyncIterator[Chain]:
    ports = iter(free_ports(64))
    running = Chain(plan_fleet(tmp_path / "fleet", regions, edges, ports, mqtt=mqtt))
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    """hub <- r1 <- (r1-e1, r1-e2): each its own server and JetStream domain."""
    async with running_chain(tmp_path, regions=1, edges=2) as running:
        yield running


@pytest.fixture
async def hub_server(tmp_path: Path) -> AsyncIterator[Chain]:
    """Just a hub server."""
    async with running_chain(tmp_path, regions=0, edges=0) as running:
        yield running


@contextlib.asynccontextmanager
async def running_fleet(
    tmp_path: Path,
    regions: int = 1,
    edges: int = 2,
    settings: dict[Tier, dict[str, object]] | None = None,
    *,
    mqtt: bool = False,
    client_tls: bool = False,
    hub_nodes: int = 1,
) -> AsyncIterator[DevFleet]:
    """Servers, a link proxy on every leaf link, and every tier's daemon as a real process."""
    ports = iter(free_ports(ports_needed(regions, edges, mqtt=mqtt, links=True, hub_nodes=hub_nodes)))
    plan = plan_fleet(tmp_path / "fleet", regions, edges, ports, mqtt=mqtt, links=True, hub_nodes=hub_nodes)
    fleet = DevFleet(
        plan, heartbeat_interval=1.0, progress=lambda _line: None, settings=settings, client_tls=client_tls
    )
    try:
        await fleet.start()
        yield fleet
    finally:
        await fleet.stop()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[DevFleet]:
    """hub <- r1 <- (r1-e1, r1-e2) with daemons, and a proxy on each leaf link."""
    async with running_fleet(tmp_path) as running:
        yield running
