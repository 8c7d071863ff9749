"""Issue 4 acceptance: inventory, heartbeats and presence, seen at the hub.

A real fleet of 2 regions x 2 edges: seven nats-servers, seven daemons as processes, a TCP
proxy on every leaf link. Heartbeats every 1 s, offline after 4 s of silence; timings below
are measured from the moment of the fault and printed (run with -s to see them).
"""

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from fleetbus.cli.view import summary
from fleetbus.core.views import EdgePresence
from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.plan import FleetPlan
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.nats.uplink import ORIGIN
from fleetbus.runtime.tasks import cancel_and_wait
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.base import utcnow
from schemas.event import Event
from schemas.headers import envelope
from schemas.heartbeat import Heartbeat, Tier
from schemas.inventory import InventorySnapshot, StreamBacklog
from schemas.presence import PresenceState
from tests.conftest import admin_creds, connect_as, hub_args, running_fleet
from tests.fleetprobe import edge_latest, inventory_differences, set_facts, stream_ids
from tests.helpers import arun_cli, eventually

pytestmark = pytest.mark.slow

INTERVAL = 1.0  # heartbeat interval of the test fleet
OFFLINE_AFTER = 4.0
SLACK = 0.5  # propagation regional -> hub -> client watch, and scheduling on 2 busy cores
EDGES = ("r1-e1", "r1-e2", "r2-e1", "r2-e2")
SETTINGS: dict[Tier, dict[str, object]] = {
    Tier.HUB: {"region_offline_after": OFFLINE_AFTER},
    Tier.REGIONAL: {"offline_after": OFFLINE_AFTER},
    Tier.EDGE: {"inventory_scan_interval": 0.2, "inventory_interval": 30.0},
}
ONLINE, STALE, OFFLINE, UNREACHABLE = (
    PresenceState.ONLINE,
    PresenceState.STALE,
    PresenceState.OFFLINE,
    PresenceState.UNREACHABLE,
)


@contextlib.asynccontextmanager
async def fleet_and_client(tmp_path: Path):
    async with running_fleet(tmp_path, regions=2, edges=2, settings=SETTINGS) as fleet:
        client = await FleetClient.connect(
            fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan)
        )
        try:
            yield fleet, client
        finally:
            await client.close()


@dataclass
class Recorder:
    """Runs one of the client's watch streams in the background, timestamping each item."""

    items: list[tuple[float, object]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self, stream) -> "Recorder":
        async def pump() -> None:
            async for item in stream:
                self.items.append((time.monotonic(), item))
                self.changed.set()

        self.task = asyncio.create_task(pump())
        return self

    async def stop(self) -> None:
        if self.task:
            assert not await cancel_and_wait([self.task], timeout=10)

    async def first(self, match, *, after: float = 0.0, timeout: float = 20.0) -> tuple[float, object]:
        """The first item recorded at or after `after` (monotonic) for which `match` holds."""
        deadline = time.monotonic() + timeout
        while True:
            for at, item in self.items:
                if at >= after and match(item):
                    return at, item
            if self.task and self.task.done():
                self.task.result()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching item within {timeout}s; got {self.items[-5:]}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


def presence_is(edge: str, state: PresenceState):
    return lambda row: isinstance(row, EdgePresence) and row.edge == edge and row.state is state


async def all_online(client: FleetClient) -> bool:
    rows = {p.edge: p.state for p in await client.presence()}
    return all(rows.get(e) is ONLINE for e in EDGES)


async def hub_equals_edges(fleet: DevFleet, client: FleetClient) -> bool:
    """The hub's `inventory` bucket holds exactly each edge's latest snapshot, field by field."""
    return not await inventory_differences(fleet, client, EDGES)


async def metric(fleet: DevFleet, site: str, name: str, **labels: str) -> float:
    """One sample from a daemon's /metrics (0 if absent)."""
    status, body = await http_get(f"http://127.0.0.1:{fleet.plan.site(site).daemon_http_port}/metrics")
    assert status == 200
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in body.decode().splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


async def stream_last_seq(plan: FleetPlan, site: str, stream: str) -> int:
    nc = await connect_as(plan, site)
    try:
        return (await nc.jetstream().stream_info(stream)).state.last_seq
    finally:
        await nc.close()


def daemon_running_at(fleet: DevFleet, site: str) -> datetime:
    """When the site's daemon last logged that it runs (its tasks started)."""
    lines = (fleet.plan.site(site).workdir / "daemon.log").read_text().splitlines()
    running = [json.loads(line) for line in lines if '"daemon running"' in line]
    return datetime.fromisoformat(running[-1]["timestamp"])


def events_backlog(snap: InventorySnapshot) -> StreamBacklog:
    return next(b for b in snap.backlog if b.stream == subjects.EVENTS_STREAM)


async def test_killed_edge_goes_stale_then_offline_and_comes_back_online(tmp_path):
    async with fleet_and_client(tmp_path) as (fleet, client):
        await eventually(lambda: all_online(client), timeout=30, what="every edge online at the hub")
        watch = Recorder().start(client.watch_presence())
        try:
            killed = time.monotonic()
            await fleet.daemons["r1-e1"].kill(restart=False)

            stale_at, _ = await watch.first(presence_is("r1-e1", STALE), after=killed)
            offline_at, _ = await watch.first(presence_is("r1-e1", OFFLINE), after=killed)
            print(f"\nkill -> stale {stale_at - killed:.2f}s, -> offline {offline_at - killed:.2f}s")
            assert stale_at - killed <= 2 * INTERVAL + SLACK
            # offline once silent for OFFLINE_AFTER, counted from its last heartbeat (<= 1 interval
            # before the kill)
            assert OFFLINE_AFTER - INTERVAL <= offline_at - killed <= OFFLINE_AFTER + SLACK

            restarted = time.monotonic()
            await fleet.daemons["r1-e1"].start()
            online_at, row = await watch.first(presence_is("r1-e1", ONLINE), after=restarted)
            # Within one interval of the restarted daemon running (its log's wall clock vs the
            # regional's record of the change); process start-up comes on top.
            running = daemon_running_at(fleet, "r1-e1")
            print(
                f"restart -> online at the hub {online_at - restarted:.2f}s incl. process start;"
                f" {(row.since - running).total_seconds():.2f}s after the daemon ran"
            )
            assert (row.since - running).total_seconds() <= INTERVAL
            assert row.reported is ONLINE
            # Nobody else moved.
            others = [r for _, r in watch.items if isinstance(r, EdgePresence) and r.edge != "r1-e1"]
            assert {r.state for r in others} == {ONLINE}, others
        finally:
            await watch.stop()
        await eventually(lambda: hub_equals_edges(fleet, client), timeout=10, what="hub inventory = edges'")


async def test_cut_region_shows_unreachable_not_offline_and_writes_nothing_per_heartbeat(tmp_path):
    async with fleet_and_client(tmp_path) as (fleet, client):
        await eventually(lambda: all_online(client), timeout=30, what="every edge online at the hub")
        regional_before = await stream_last_seq(
            fleet.plan, "r1", subjects.kv_stream(subjects.PRESENCE_BUCKET)
        )
        hub_before = await stream_last_seq(fleet.plan, "hub", subjects.kv_stream(subjects.PRESENCE_BUCKET))
        regions_before = await stream_last_seq(fleet.plan, "hub", subjects.kv_stream(subjects.REGIONS_BUCKET))
        watch = Recorder().start(client.watch_presence())
        try:
            cut = time.monotonic()
            fleet.links["r1"].cut()
            for edge in ("r1-e1", "r1-e2"):
                at, row = await watch.first(presence_is(edge, UNREACHABLE), after=cut)
                print(f"\ncut -> {edge} unreachable {at - cut:.2f}s ({row.reason})")
                assert at - cut <= 2 * INTERVAL + SLACK
            # Past the offline window: still unreachable, never offline; r2 untouched.
            await watch.first(lambda r: r.region == "r1" and r.region_state is OFFLINE, after=cut, timeout=10)
            shown = {p.edge: p.state for p in await client.presence()}
            assert shown == {"r1-e1": UNREACHABLE, "r1-e2": UNREACHABLE, "r2-e1": ONLINE, "r2-e2": ONLINE}
            cut_for = time.monotonic() - cut

            healed = time.monotonic()
            fleet.links["r1"].heal()
            for edge in ("r1-e1", "r1-e2"):
                at, _ = await watch.first(presence_is(edge, ONLINE), after=healed)
                print(f"heal -> {edge} online {at - healed:.2f}s")
                assert at - healed <= 5.0
            seen = [r for _, r in watch.items if isinstance(r, EdgePresence)]
            assert OFFLINE not in {r.state for r in seen}
            assert all(r.edge.startswith("r1-") for r in seen if r.state is not ONLINE)
        finally:
            await watch.stop()
        regional_writes = (
            await stream_last_seq(fleet.plan, "r1", subjects.kv_stream(subjects.PRESENCE_BUCKET))
            - regional_before
        )
        hub_writes = (
            await stream_last_seq(fleet.plan, "hub", subjects.kv_stream(subjects.PRESENCE_BUCKET))
            - hub_before
        )
        region_writes = (
            await stream_last_seq(fleet.plan, "hub", subjects.kv_stream(subjects.REGIONS_BUCKET))
            - regions_before
        )
        beats = int(cut_for / INTERVAL) * 2
        print(
            f"cut {cut_for:.1f}s (~{beats} heartbeats of r1's 2 edges): presence writes regional"
            f" {regional_writes}, hub {hub_writes}; region records at the hub {region_writes}"
        )
        assert regional_writes == 0
        assert hub_writes == 0
        assert region_writes == 3  # r1: stale, offline, online
        await eventually(lambda: hub_equals_edges(fleet, client), timeout=10, what="hub inventory = edges'")


async def test_a_60s_partition_forwards_only_the_latest_snapshot(tmp_path):
    async with fleet_and_client(tmp_path) as (fleet, client):
        await eventually(lambda: hub_equals_edges(fleet, client), timeout=30, what="hub inventory = edges'")
        watch = Recorder().start(client.watch_inventory(region="r1"))
        try:
            cut_wall = utcnow()
            fleet.links["r1-e1"].cut()
            cut = time.monotonic()
            for n in range(1, 51):  # 50 changes spread over the 60 s
                set_facts(fleet, "r1-e1", {"rack": "b7", "changes": n})
                await asyncio.sleep(60 / 50)  # pacing the changes, not synchronisation
            local = await eventually(
                lambda: _with_facts(edge_latest(fleet, "r1-e1"), 50), timeout=5, what="edge saw change 50"
            )
            assert not local.link.upstream_connected
            await asyncio.sleep(max(0.0, 60 - (time.monotonic() - cut)))  # the partition's length
            healed = time.monotonic()
            fleet.links["r1-e1"].heal()
            at, _ = await watch.first(
                lambda s: s.edge == "r1-e1" and s.facts.get("changes") == 50, after=healed, timeout=10
            )
            print(f"\n60 s cut, 50 changes: latest snapshot at the hub {at - healed:.2f}s after heal")
            assert at - healed <= 3.0
            # Of the snapshots r1-e1 took after the cut began, the hub got only ones with all 50.
            during = [s for _, s in watch.items if s.edge == "r1-e1" and s.observed_at >= cut_wall]
            assert {s.facts.get("changes") for s in during} == {50}, [(s.seq, s.facts) for s in during]
            before = max(s.seq for _, s in watch.items if s.edge == "r1-e1" and s.observed_at < cut_wall)
            taken = max(s.seq for s in during) - before
            print(f"snapshots r1-e1 took during the cut: {taken}; the hub received {len(during)}")
            assert taken >= 50  # each change was stored at the edge; only the latest went up
        finally:
            await watch.stop()
        await eventually(lambda: hub_equals_edges(fleet, client), timeout=10, what="hub inventory = edges'")


async def _with_facts(snapshot, changes: int):
    snap = await snapshot
    return snap if snap.facts.get("changes") == changes else None


async def test_watch_inventory_yields_current_state_then_a_live_change(tmp_path):
    async with fleet_and_client(tmp_path) as (fleet, client):
        await eventually(lambda: hub_equals_edges(fleet, client), timeout=30, what="hub inventory = edges'")
        watch = Recorder().start(client.watch_inventory())
        try:
            for edge in EDGES:
                await watch.first(lambda s, e=edge: s.edge == e, timeout=5)
            first = [s.edge for _, s in watch.items[:4]]
            assert sorted(first) == sorted(EDGES)
            changed = time.monotonic()
            set_facts(fleet, "r2-e1", {"door": "open"})
            at, snap = await watch.first(
                lambda s: s.edge == "r2-e1" and s.facts == {"door": "open"}, after=changed, timeout=5
            )
            print(f"\nfacts changed on r2-e1 -> watch_inventory() yields it {at - changed:.2f}s later")
            assert at - changed <= 1.0
            assert snap.received_at is not None
            assert snap.received_at >= snap.observed_at
        finally:
            await watch.stop()
        assert (await client.get_inventory("r2-e1")).facts == {"door": "open"}

        # The CLI: status table and a watch with --count, --json. Presence comes from the
        # regionals' heartbeat tracking, apart from inventory: wait for it too.
        await eventually(lambda: all_online(client), timeout=30, what="every edge online at the hub")
        hub = hub_args(fleet.plan)
        status = await arun_cli("status", "--json", *hub)
        assert status.returncode == 0, status.stderr
        rows = {r["edge"]: r for r in json.loads(status.stdout)["edges"]}
        assert set(rows) == set(EDGES)
        assert all(r["presence"]["state"] == "online" and r["state"] == "converged" for r in rows.values())
        # Nothing waits on any edge for its uplink (INVENTORY's own backlog is the previous
        # snapshot at the time the latest was taken, so it is not checked here).
        events = [b for r in rows.values() for b in r["backlog"] if b["stream"] == "EVENTS"]
        assert len(events) == 4
        assert all(b["pending"] == 0 and b["evicted_unforwarded"] == 0 for b in events), events
        table = await arun_cli("status", *hub)
        assert table.returncode == 0, table.stderr
        assert "4 edges: 4 online · 4 converged" in table.stdout
        lines = await arun_cli("watch", "inventory", "--region", "r2", "--json", "--count", "2", *hub)
        assert lines.returncode == 0, lines.stderr
        assert sorted(json.loads(line)["edge"] for line in lines.stdout.splitlines()) == ["r2-e1", "r2-e2"]
        presence = await arun_cli("watch", "presence", "--count", "4", *hub)
        assert presence.returncode == 0, presence.stderr
        assert presence.stdout.count(" online: ") == 4, presence.stdout


async def test_garbage_and_unknown_heartbeats_are_counted_and_ignored(tmp_path):
    async with fleet_and_client(tmp_path) as (fleet, client):
        await eventually(lambda: all_online(client), timeout=30, what="every edge online at the hub")
        nc = await connect_as(fleet.plan, "r1")
        try:
            await nc.publish(subjects.edge_heartbeat("r1", "r1-e1"), b"\x00 not a heartbeat")
            stranger = Heartbeat(
                tier=Tier.EDGE, site="r1-e9", region="r1", seq=0, sent_at="2026-01-01T00:00:00Z",
                interval_seconds=1.0, uptime_seconds=1.0,
            )  # fmt: skip
            body, headers = envelope(stranger, source="/test")
            await nc.publish(subjects.edge_heartbeat("r1", "r1-e9"), body, headers=headers)
            await nc.publish(subjects.edge_heartbeat("r1", "r1-e2"), body, headers=headers)  # names another
            await nc.flush()
        finally:
            await nc.close()

        async def counted() -> bool:
            garbage = await metric(fleet, "r1", "fleetbus_decode_errors_total", kind="fleet.heartbeat")
            unknown = await metric(fleet, "r1", "fleetbus_heartbeats_rejected_total", reason="unknown_edge")
            mismatch = await metric(fleet, "r1", "fleetbus_heartbeats_rejected_total", reason="mismatch")
            return garbage == 1 and unknown == 1 and mismatch == 1

        await eventually(counted, timeout=5, what="each bad heartbeat counted once")
        status, _ = await http_get(fleet.plan.site("r1").daemon_health_url)
        assert status == 200
        assert fleet.daemons["r1"].running
        # The regional goes on: r1-e9 never appears, and a live change still flows.
        set_facts(fleet, "r1-e2", {"after": "garbage"})
        snap = await eventually(lambda: _facts_at_hub(client, "r1-e2", {"after": "garbage"}), timeout=5)
        assert snap.edge == "r1-e2"
        assert "r1-e9" not in {p.edge for p in await client.presence()}
        assert await all_online(client)


async def _facts_at_hub(client: FleetClient, edge: str, facts: dict[str, object]):
    snap = await client.get_inventory(edge)
    return snap if snap.facts == facts else None


async def test_what_the_edge_limits_evict_before_forwarding_is_reported_as_lost(tmp_path):
    async with running_fleet(tmp_path, regions=1, edges=1, settings=SETTINGS) as fleet:
        client = await FleetClient.connect(
            fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan)
        )
        try:

            async def all_forwarded() -> StreamBacklog | None:
                backlog = events_backlog(await client.get_inventory("r1-e1"))
                return backlog if backlog.forwarded_seq >= 1 and backlog.pending == 0 else None

            before = await eventually(all_forwarded, timeout=30, what="r1-e1's apply result forwarded")
            forwarded = before.forwarded_seq
            fleet.links["r1-e1"].cut()
            nc = await connect_as(fleet.plan, "r1-e1")
            try:
                js = nc.jetstream()
                config = (await js.stream_info(subjects.EVENTS_STREAM)).config
                config.max_msgs = 3  # a tight limit, as a full disk budget would be
                await js.update_stream(config)
                for n in range(10):
                    event = Event(
                        id=f"test-{n}",
                        kind="audit",
                        region="r1",
                        edge="r1-e1",
                        observed_at=utcnow(),
                        message=f"#{n}",
                    )
                    body, headers = envelope(event, source="/test", message_id=event.id)
                    await js.publish(subjects.edge_event("r1", "r1-e1", "audit"), body, headers=headers)
            finally:
                await nc.close()

            async def evicted_locally() -> InventorySnapshot | None:
                # A snapshot taken after all 10 were stored (one taken mid-way shows fewer).
                snap = await edge_latest(fleet, "r1-e1")
                return snap if events_backlog(snap).evicted == forwarded + 7 else None

            local = events_backlog(
                await eventually(evicted_locally, timeout=10, what="eviction seen at the edge")
            )
            # forwarded + 10 stored; 3 kept; everything after `forwarded` and before the 3 is lost.
            assert local.pending == 3
            assert local.evicted == forwarded + 7
            assert local.evicted_unforwarded == 7
            assert local.forwarded_seq == forwarded
            assert local.oldest_age_seconds > 0

            fleet.links["r1-e1"].heal()

            async def reported_at_hub() -> StreamBacklog | None:
                backlog = events_backlog(await client.get_inventory("r1-e1"))
                return backlog if backlog.pending == 0 and backlog.evicted_unforwarded == 7 else None

            await eventually(reported_at_hub, timeout=10, what="loss reported at the hub")
            status = await arun_cli("status", *hub_args(fleet.plan))
            assert status.returncode == 0, status.stderr
            assert "(7 lost)" in status.stdout, status.stdout
            # The edge pushed them (the regional sources nothing): the 3 kept, once each, each
            # saying where it came from.
            regional = await connect_as(fleet.plan, "r1")
            try:
                rjs = regional.jetstream()
                for stream in (subjects.EVENTS_STREAM, subjects.INVENTORY_STREAM):
                    assert not (await rjs.stream_info(stream)).config.sources, stream
                ids, _ = await stream_ids(rjs, subjects.EVENTS_STREAM)
                sent = {f"test-{n}" for n in range(10)}
                assert {i: n for i, n in ids.items() if i in sent} == {f"test-{n}": 1 for n in (7, 8, 9)}
                last = await rjs.get_last_msg(
                    subjects.EVENTS_STREAM, subjects.edge_event("r1", "r1-e1", "audit")
                )
                assert (last.headers or {}).get(ORIGIN, "").endswith(f" {forwarded + 10}"), last.headers
            finally:
                await regional.close()
        finally:
            await client.close()


def test_the_status_summary_counts_every_state_so_the_counts_add_up():
    presence = Counter({"online": 3, "unreachable": 2, "unknown": 1})
    compliance = Counter({"converged": 3, "pending": 2, "unknown": 1})
    assert (
        summary(6, presence, compliance)
        == "6 edges: 3 online, 2 unreachable, 1 unknown · 3 converged, 2 pending, 1 unknown"
    )
    assert summary(0, Counter(), Counter()) == "0 edges"
