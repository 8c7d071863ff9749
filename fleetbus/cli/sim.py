"""`fleetbus sim`: a hub, R regionals and N hollow edges on this machine, for scale runs."""

import asyncio
import contextlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from fleetbus.cli.kit import Fresh, StateDir, check_range, out, start_fresh
from fleetbus.core.views import EdgePresence
from fleetbus.devfleet import identities
from fleetbus.devfleet import plan as fleet_plan
from fleetbus.devfleet import state as fleet_state
from fleetbus.devfleet.hollow import plan_hollow
from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.servers import find_binary
from fleetbus.devfleet.supervisor import DevFleet, run_foreground
from fleetbus.sdk.client import FleetClient
from schemas.presence import PresenceState

PROGRESS_PERIOD = 5.0  # s between "edges online" lines while the fleet fills up


def sim(
    regions: Annotated[int, typer.Option(help="Number of regionals (real servers and daemons).")] = 4,
    edges: Annotated[int, typer.Option(help="Hollow edges in all, spread evenly over the regions.")] = 1000,
    state_dir: StateDir = None,
    heartbeat_interval: Annotated[float, typer.Option(help="Heartbeat period of every site, s.")] = 5.0,
    edges_per_connection: Annotated[
        int, typer.Option(help="Hollow edges sharing one NATS connection.")
    ] = 1000,
    start_rate: Annotated[float, typer.Option(help="Hollow edges started per second, per region.")] = 200.0,
    fresh: Fresh = False,
) -> None:
    """Run a hub, regionals and hollow edges until Ctrl-C.

    Hollow edges are thin clients of the regionals doing every edge's real per-edge work (no
    workloads); `fleetbus status` and the dashboard see every one of them."""
    check_range("--regions", regions, 1, 50)
    check_range("--edges", edges, 1, 20000)
    check_range("--heartbeat-interval", heartbeat_interval, 0.1, 3600)
    check_range("--edges-per-connection", edges_per_connection, 1, 5000)
    check_range("--start-rate", start_rate, 1, 10000)
    find_binary()
    directory = fleet_state.ensure_writable(state_dir or fleet_state.default_state_dir())
    fleet_state.refuse_if_running(directory)
    if fresh:
        start_fresh(directory)
    ports = iter(free_ports(fleet_plan.ports_needed(regions, 0, mqtt=False, links=True) + regions))
    plan = fleet_plan.plan_fleet(directory, regions, 0, ports, links=True)
    hollow = plan_hollow(plan, edges, ports)
    out.print(f"starting simulation in {directory}: 1 hub, {regions} regional(s), {edges} hollow edges")
    fleet = DevFleet(
        plan,
        heartbeat_interval=heartbeat_interval,
        progress=out.print,
        hollow=hollow,
        hollow_settings={"edges_per_connection": edges_per_connection, "start_rate": start_rate},
    )
    asyncio.run(_run(fleet))


async def _run(fleet: DevFleet) -> None:
    hub_url = fleet.plan.site("hub").server.client_url
    ready = asyncio.Event()

    def on_ready(record: fleet_state.FleetRecord) -> None:
        out.print(f"hub: {record.hub.client_url}   (fleetbus commands find it from {record.state_dir})")
        if record.hub.dashboard_url:
            out.print(f"dashboard: {record.hub.dashboard_url}")
        for plan in fleet.hollow_plan:
            out.print(
                f"  {plan.name}: {plan.region}-h{plan.first}..{plan.region}-h{plan.first + plan.edges - 1}"
                f"  health {plan.health_url}  log {plan.workdir / 'daemon.log'}"
            )
        out.print("Ctrl-C (or `fleetbus dev down`) stops everything")
        ready.set()

    own = {(plan.region, edge) for plan in fleet.hollow_plan for edge in plan.edge_ids}
    creds = None if fleet.insecure else identities.operator_creds(fleet.plan.state_dir)
    ca = None if fleet.insecure else identities.ca_cert(fleet.plan.state_dir)
    counting = asyncio.create_task(_count_online(hub_url, (creds, ca), own, ready))
    try:
        await run_foreground(fleet, on_ready)
    finally:
        counting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counting


def online_of(presence: Iterable[EdgePresence], own: set[tuple[str, str]]) -> int:
    """How many of `own` (region, edge) are online: edges of an earlier fleet in the same
    state dir do not count."""
    return sum(p.state is PresenceState.ONLINE and (p.region, p.edge) in own for p in presence)


async def _count_online(
    hub_url: str, login: tuple[Path | None, Path | None], own: set[tuple[str, str]], ready: asyncio.Event
) -> None:
    """Say how many of this simulation's edges the hub sees online until all are (progress,
    not a gate)."""
    await ready.wait()
    began = time.monotonic()
    creds, ca = login
    async with await FleetClient.connect(hub_url, creds=creds, ca=ca) as client:
        while True:
            online = online_of(await client.presence(), own)
            took = time.monotonic() - began
            out.print(f"  hub sees {online}/{len(own)} hollow edges online ({took:.0f}s)")
            if online >= len(own):
                return
            await asyncio.sleep(PROGRESS_PERIOD)  # a progress report period
