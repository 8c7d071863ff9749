"""Hollow (thin) edges: real regional and hub processes, hollow-edge processes as `fleetbus sim`
starts them; and `fleetbus sim` itself, as a user runs it."""

import json
import os
import signal
from pathlib import Path

import pytest

from fleetbus.devfleet.hollow import plan_hollow
from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.plan import plan_fleet, ports_needed
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.event import ApplyStatus
from schemas.override import OverrideScope
from schemas.presence import PresenceState
from schemas.profile import Profile, ProfileSpec
from tests.conftest import admin_creds, connect_as
from tests.helpers import FLEETBUS, eventually, processes_mentioning, run_cli, start_in_group, wait_until

pytestmark = pytest.mark.slow

REGIONS, HOLLOW = 2, 30


@pytest.fixture
async def hollow_fleet(tmp_path: Path):
    ports = iter(free_ports(ports_needed(REGIONS, 0, mqtt=False) + REGIONS))
    plan = plan_fleet(tmp_path, REGIONS, 0, ports)
    fleet = DevFleet(
        plan,
        heartbeat_interval=1.0,
        progress=lambda _line: None,
        hollow=plan_hollow(plan, HOLLOW, ports),
        hollow_settings={"edges_per_connection": 7, "inventory_scan_interval": 1.0},
    )
    await fleet.start()
    try:
        async with await FleetClient.connect(
            plan.site("hub").server.client_url, creds=admin_creds(plan)
        ) as client:
            yield fleet, client
    finally:
        await fleet.stop()


async def test_hollow_edges_enroll_heartbeat_apply_and_report_like_edges(hollow_fleet):
    fleet, client = hollow_fleet
    names = {f"r{r}-h{n}" for r in (1, 2) for n in range(1, HOLLOW // REGIONS + 1)}

    async def all_online() -> bool:
        online = {p.edge for p in await client.presence() if p.state is PresenceState.ONLINE}
        return online == names

    await eventually(all_online, timeout=60, what="every hollow edge online at the hub")

    plan = await client.profiles.apply(Profile(name="sim", spec=ProfileSpec(config={"x": 1})))
    revision = plan.new.revision if plan.new else None

    async def all_applied() -> bool:
        reports = {r.edge: r.apply_result for r in await client.reports() if r.apply_result}
        return set(reports) == names and all(
            r.profile_revisions.get("sim") == revision
            and r.status is ApplyStatus.APPLIED
            and r.driver == "null"
            for r in reports.values()
        )

    await eventually(all_applied, timeout=30, what="every hollow edge applied the profile")

    # An override for one hollow edge changes only that edge's desired state.
    before = {r.edge: r.apply_result.desired_hash for r in await client.reports() if r.apply_result}
    await client.overrides.set(OverrideScope.EDGE, "r2-h3", {"config": {"x": 2}}, reason="test")
    expected = (await client.explain("r2-h3"))[0].hash

    async def only_that_edge_changed() -> bool:
        now = {r.edge: r.apply_result.desired_hash for r in await client.reports() if r.apply_result}
        return now["r2-h3"] == expected and all(now[e] == before[e] for e in names - {"r2-h3"})

    await eventually(only_that_edge_changed, timeout=30, what="the override applied at r2-h3 alone")

    # Inventory: each hollow edge's snapshot, with what its driver applied, reaches the hub.
    async def inventory_current() -> bool:
        snapshots = {s.edge: s for s in await client.inventory()}
        return set(snapshots) == names and snapshots["r2-h3"].applied.desired_hash == expected

    await eventually(inventory_current, timeout=30, what="hollow edges' inventory at the hub")

    # Thin edges publish into the regional's streams: the regional adds no source for them.
    regional = await connect_as(fleet.plan, "r1")
    try:
        for stream in (subjects.EVENTS_STREAM, subjects.INVENTORY_STREAM):
            info = await regional.jetstream().stream_info(stream)
            assert not info.config.sources, (stream, info.config.sources)
    finally:
        await regional.close()
    assert fleet.crashes() == {}


def test_sim_runs_until_ctrl_c_and_status_sees_every_hollow_edge(tmp_path: Path):
    state_dir = tmp_path / "sim"
    sim = start_in_group(
        [
            *FLEETBUS,
            "sim",
            "--regions",
            "2",
            "--edges",
            "24",
            "--state-dir",
            str(state_dir),
            "--heartbeat-interval",
            "1",
        ]
    )
    try:

        def everyone_online() -> list | None:
            if sim.poll() is not None:
                raise AssertionError(
                    f"sim exited {sim.returncode}: {sim.stdout.read() if sim.stdout else ''}"
                )
            result = run_cli("status", "--json", "--state-dir", str(state_dir))
            if result.returncode != 0:
                return None
            edges = json.loads(result.stdout)["edges"]
            online = [e for e in edges if (e.get("presence") or {}).get("state") == "online"]
            return edges if len(online) == 24 else None

        edges = wait_until(everyone_online, timeout=120, what="24 hollow edges online in `fleetbus status`")
        assert {e["edge"] for e in edges} == {f"r{r}-h{n}" for r in (1, 2) for n in range(1, 13)}
    finally:
        os.killpg(sim.pid, signal.SIGINT)
        output, _ = sim.communicate(timeout=60)
    assert sim.returncode == 0, output
    assert "dashboard: http://127.0.0.1:" in output  # its progress lines may not have caught up
    assert processes_mentioning(str(state_dir)) == []
