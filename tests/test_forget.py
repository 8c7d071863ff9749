"""Forget and start fresh (issue 19 item 9): `fleetbus edge|region forget` on a real fleet,
`dev up --fresh`, the daemon runners under `fleetbus run`, and `sim` counting its own edges."""

import asyncio
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetbus.cli.sim import online_of
from fleetbus.core.views import EdgePresence
from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.nats import forget
from fleetbus.nats.kv import Bucket
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.base import Message
from schemas.heartbeat import Tier
from schemas.presence import PresenceState
from schemas.profile import Profile
from tests.conftest import admin_creds, hub_args, running_fleet
from tests.helpers import FLEETBUS, ROOT, arun_cli, cli_env, eventually

pytestmark = pytest.mark.slow

# Short enough that the regional decides "offline" for a dead edge while the test watches.
OFFLINE_AFTER = 8.0


async def regional_keys(client: FleetClient, region: str, edge: str) -> dict[str, list[str]]:
    """What the regional itself still keeps of `edge`, per bucket or stream."""
    js = client.bus.jetstream(region, timeout=5)
    key = subjects.edge_key(region, edge)
    found = {}
    for bucket in (subjects.EDGES_BUCKET, subjects.PRESENCE_BUCKET):
        found[bucket] = await Bucket(js, bucket, Message).live_keys(key)
    info = await js.stream_info(subjects.INVENTORY_STREAM, subjects_filter=subjects.inventories(region, edge))
    found[subjects.INVENTORY_STREAM] = list(info.state.subjects or {})
    found[subjects.ASSIGNED_BUCKET] = await Bucket(js, subjects.ASSIGNED_BUCKET, Message).keys(f"{edge}.>")
    return found


async def hub_knows(client: FleetClient, region: str = "*", edge: str = "*") -> set[tuple[str, str]]:
    return await forget.known_edges(client.bus.jetstream(subjects.HUB_DOMAIN), region, edge)


async def metric(fleet: DevFleet, site: str, name: str, **labels: str) -> float:
    """The sum of `site`'s daemon's samples of `name` with `labels`."""
    port = fleet.plan.site(site).daemon_http_port
    _, body = await http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def log_has(fleet: DevFleet, site: str, text: str) -> bool:
    path = fleet.plan.site(site).workdir / "daemon.log"
    return path.exists() and text in path.read_text(errors="replace")


async def test_a_forgotten_edge_is_gone_everywhere_and_stays_gone(tmp_path: Path):
    settings: dict[Tier, dict[str, object]] = {Tier.REGIONAL: {"offline_after": OFFLINE_AFTER}}
    async with running_fleet(tmp_path, settings=settings) as fleet:
        url = fleet.plan.site("hub").server.client_url
        client = await FleetClient.connect(url, creds=admin_creds(fleet.plan))
        try:
            await client.profiles.apply(Profile(name="base"), reason="something to hand the edges")

            # Every record of both edges exists: presence, inventory, apply report at the hub.
            async def in_every_hub_bucket() -> bool:
                js = client.bus.jetstream(subjects.HUB_DOMAIN)
                for bucket in forget.HUB_EDGE_BUCKETS:
                    keys = set(await Bucket(js, bucket, Message).live_keys())
                    if not {"r1.r1-e1", "r1.r1-e2"} <= keys:
                        return False
                return True

            await eventually(in_every_hub_bucket, timeout=30, what="both edges in every hub bucket")

            async def all_kept() -> dict[str, list[str]] | None:
                found = await regional_keys(client, "r1", "r1-e2")
                return found if all(found.values()) else None

            await eventually(all_kept, timeout=20, what="the regional keeping all four")

            # Online: refused, nothing deleted.
            refused = await arun_cli("edge", "forget", "r1-e2", *hub_args(fleet.plan))
            assert refused.returncode == 2, refused
            assert "edge 'r1-e2' (region r1) is online: stop it first, or pass --force" in refused.stderr
            assert await hub_knows(client, edge="r1-e2") == {("r1", "r1-e2")}

            # Gone for good: stopped, then forgotten while the regional still counts it stale.
            await fleet.kill("r1-e2")

            async def not_online() -> bool:
                rows = [p for p in await client.presence() if p.edge == "r1-e2"]
                return bool(rows) and rows[0].state is not PresenceState.ONLINE

            await eventually(not_online, timeout=20, what="r1-e2 no longer online at the hub")
            # Stale at its regional, which would write "offline" OFFLINE_AFTER after its last beat.
            assert await metric(fleet, "r1", "fleetbus_presence_sites", state="stale") == 1
            done = await arun_cli("edge", "forget", "r1-e2", *hub_args(fleet.plan))
            assert done.returncode == 0, done
            assert "forgot edge r1-e2 of region r1: r1-e2" in done.stdout
            assert await hub_knows(client, edge="r1-e2") == set()
            assert await regional_keys(client, "r1", "r1-e2") == {
                subjects.EDGES_BUCKET: [],
                subjects.PRESENCE_BUCKET: [],
                subjects.INVENTORY_STREAM: [],
                subjects.ASSIGNED_BUCKET: [],
            }
            assert [row.edge for row in await client.status()] == ["r1-e1"]

            # The regional's timer turns the edge offline: it drops it instead of writing it back.
            async def no_longer_stale() -> bool:
                return await metric(fleet, "r1", "fleetbus_presence_sites", state="stale") == 0

            await eventually(no_longer_stale, timeout=OFFLINE_AFTER + 15, what="r1-e2's offline deadline")
            assert await metric(fleet, "r1", "fleetbus_presence_sites", state="offline") == 0
            assert not any((await regional_keys(client, "r1", "r1-e2")).values())
            assert log_has(fleet, "r1", "forgotten site dropped")
            # A heal restarts (kicks) the hub's sources from r1; a restarted regional reloads
            # its buckets: neither brings it back.
            kicks = await metric(fleet, "hub", "fleetbus_source_kicks_total")
            downs = await metric(fleet, "r1", "fleetbus_link_transitions_total", state="down")
            fleet.link("r1").cut()

            async def r1_lost_the_hub() -> bool:
                return await metric(fleet, "r1", "fleetbus_link_transitions_total", state="down") > downs

            await eventually(r1_lost_the_hub, timeout=20, what="r1 noticing the cut")
            fleet.link("r1").heal()

            async def kicked() -> bool:
                return await metric(fleet, "hub", "fleetbus_source_kicks_total") > kicks

            await eventually(kicked, timeout=30, what="the hub restarting r1's sources after the heal")
            await fleet.restart("r1", server=False)

            async def regional_forgot() -> bool:
                return not any((await regional_keys(client, "r1", "r1-e2")).values())

            await eventually(regional_forgot, timeout=30, what="the restarted regional answering")
            # A new revision is handed to the edge still there, not to the forgotten one.
            await client.profiles.apply(Profile(name="base", priority=1), reason="after the forget")

            async def handed_to_r1_e1() -> bool:
                js = client.bus.jetstream("r1", timeout=5)
                entry = await Bucket(js, subjects.ASSIGNED_BUCKET, Profile).get("r1-e1.profile.base")
                return entry is not None and entry.signed_revision == 2

            await eventually(handed_to_r1_e1, timeout=20, what="revision 2 handed to r1-e1")
            assert not any((await regional_keys(client, "r1", "r1-e2")).values())
            assert await hub_knows(client, edge="r1-e2") == set()
            assert [row.edge for row in await client.status()] == ["r1-e1"]

            # Forgetting it again is not an error that deletes something else: it is unknown.
            again = await arun_cli("edge", "forget", "r1-e2", *hub_args(fleet.plan))
            assert again.returncode == 2
            assert "the hub has no record of edge 'r1-e2'" in again.stderr
            assert await hub_knows(client, edge="r1-e1") == {("r1", "r1-e1")}
        finally:
            await client.close()


async def test_a_region_that_is_gone_is_forgotten_with_its_edges(tmp_path: Path):
    settings: dict[Tier, dict[str, object]] = {Tier.HUB: {"region_offline_after": OFFLINE_AFTER}}
    async with running_fleet(tmp_path, regions=2, edges=1, settings=settings) as fleet:
        url = fleet.plan.site("hub").server.client_url
        client = await FleetClient.connect(url, creds=admin_creds(fleet.plan))
        try:

            async def both_regions() -> bool:
                return {("r1", "r1-e1"), ("r2", "r2-e1")} <= await hub_knows(client)

            await eventually(both_regions, timeout=30, what="both regions' edges at the hub")
            refused = await arun_cli("region", "forget", "r1", *hub_args(fleet.plan))
            assert refused.returncode == 2
            assert "region 'r1' is online" in refused.stderr

            # r2 is shut down for good: regional and edge, servers and daemons.
            await fleet.kill("r2-e1")
            await fleet.kill("r2")

            async def r2_silent() -> bool:
                rows = [r for r in await client.regions() if r.region == "r2"]
                return bool(rows) and rows[0].state is not PresenceState.ONLINE

            await eventually(r2_silent, timeout=20, what="the hub no longer hearing r2")
            # Stale at the hub, which would write "offline" OFFLINE_AFTER after its last beat.
            assert await metric(fleet, "hub", "fleetbus_presence_sites", state="stale") == 1
            done = await arun_cli("region", "forget", "r2", *hub_args(fleet.plan))
            assert done.returncode == 0, done
            assert "forgot region r2: r2-e1" in done.stdout
            # Its regional is gone, so only the hub's records could go: said so.
            assert "the regional of r2 did not answer" in done.stderr
            assert await hub_knows(client, region="r2") == set()
            assert [r.region for r in await client.regions()] == ["r1"]
            assert [row.edge for row in await client.status()] == ["r1-e1"]

            # The hub's timer turns r2 offline: it is dropped, not written back.
            async def no_longer_stale() -> bool:
                return await metric(fleet, "hub", "fleetbus_presence_sites", state="stale") == 0

            await eventually(no_longer_stale, timeout=OFFLINE_AFTER + 15, what="r2's offline deadline")
            assert await metric(fleet, "hub", "fleetbus_presence_sites", state="offline") == 0
            assert [r.region for r in await client.regions()] == ["r1"]
        finally:
            await client.close()


async def test_dev_up_fresh_starts_from_nothing_and_refuses_a_running_fleet(tmp_path: Path):
    state = tmp_path / "state"
    old = state / "sites" / "r9-e9" / "jetstream"
    old.mkdir(parents=True)
    (old / "data").write_text("an old fleet's data")
    (state / "notes.txt").write_text("not the fleet's: kept")
    proc = await asyncio.create_subprocess_exec(
        *FLEETBUS, "dev", "up", "--fresh", "--regions", "1", "--edges", "0", "--no-mqtt",
        "--state-dir", str(state),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=cli_env(), cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        output = ""
        async with asyncio.timeout(60):
            while "all sites healthy" not in output:
                line = (await proc.stdout.readline()).decode()
                assert line, f"`dev up --fresh` ended early:\n{output}"
                output += line
        assert f"--fresh: deleted sites in {state.resolve()}" in output
        assert not (state / "sites" / "r9-e9").exists()
        assert (state / "notes.txt").read_text() == "not the fleet's: kept"
        assert (state / "sites" / "hub").is_dir()
        # The running fleet's data is never deleted.
        refused = await arun_cli("dev", "up", "--fresh", "--state-dir", str(state))
        assert refused.returncode == 2
        assert "a fleet is already running from" in refused.stderr
        assert (state / "sites" / "hub" / "jetstream").is_dir()
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)


async def test_management_groups_and_the_daemon_runners():
    edge_help = await arun_cli("edge", "--help")
    assert edge_help.returncode == 0
    assert "forget" in edge_help.stdout
    region_help = await arun_cli("region", "--help")
    assert "forget" in region_help.stdout
    daemon_help = await arun_cli("run", "edge", "--help")
    assert daemon_help.returncode == 0
    assert "--heartbeat-interval" in daemon_help.stdout
    assert "--region" in daemon_help.stdout
    # `fleetbus edge` no longer runs the daemon with whatever follows as its flags.
    swallowed = await arun_cli("edge", "--site", "r1-e1")
    assert swallowed.returncode == 2
    assert "No such option: --site" in swallowed.stderr


def test_sim_progress_counts_only_its_own_hollow_edges():
    now = datetime(2026, 11, 24, tzinfo=UTC)

    def row(region: str, edge: str, state: PresenceState) -> EdgePresence:
        return EdgePresence(
            region=region,
            edge=edge,
            state=state,
            reported=state,
            since=now,
            last_seen=now,
            reason="",
            region_state=PresenceState.ONLINE,
        )

    own = {("r1", "r1-h1"), ("r1", "r1-h2"), ("r2", "r2-h1")}
    presence = [
        row("r1", "r1-h1", PresenceState.ONLINE),
        row("r1", "r1-h2", PresenceState.STALE),
        row("r2", "r2-h1", PresenceState.ONLINE),
        row("r1", "r1-e1", PresenceState.ONLINE),  # a dev fleet's edge in the same state dir
        row("r3", "r3-h1", PresenceState.ONLINE),  # a hollow edge of an earlier, bigger sim
    ]
    assert online_of(presence, own) == 2
