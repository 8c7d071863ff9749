"""A clustered hub (docs/clustering.md): three hub nodes in one JetStream cluster, a hub daemon
beside each, two regions of one edge; every process real, every leaf link through a proxy.

What a machine loss must not break: a hub node SIGKILLed while a profile is applied or while a
burst of edge events flows up loses no acknowledged write and duplicates none, every edge
converges, the dashboard of a surviving daemon answers throughout and presence keeps moving.
The daemon holding the hub's lease SIGKILLed: another takes over within 5 s and no two hold
it at once. One node's links cut: the regionals go on through the others. A rolling restart
of the three nodes while profiles change: the fleet converges after each step.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Self

import nats
import pytest
from nats.aio.client import Client

from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.plan import SitePlan
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.base import utcnow
from schemas.event import Event
from schemas.headers import envelope
from schemas.profile import LabelSelector, Profile, ProfileSpec
from tests.conftest import admin_creds, connect_as, running_fleet
from tests.fleetprobe import PROBE_KIND, client_of, stream_ids
from tests.helpers import arun_cli, eventually

pytestmark = pytest.mark.slow

NODES = 3
EDGES = ["r1-e1", "r2-e1"]
NAME = "web"
BURST = 2000
FAILOVER_LIMIT = 5.0  # s: the bound for a lease to move after its holder is killed


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[DevFleet]:
    async with running_fleet(tmp_path, regions=2, edges=1, hub_nodes=NODES) as fleet:
        yield fleet


def hubs(fleet: DevFleet) -> list[SitePlan]:
    return fleet.plan.nodes("hub")


def profile(marker: int) -> Profile:
    return Profile(
        name=NAME,
        selector=LabelSelector(match_labels={"env": "dev"}),
        spec=ProfileSpec(config={"marker": marker}),
    )


async def api_edges(node: SitePlan, token: str | None) -> list[dict[str, Any]]:
    status, body = await http_get(f"{node.dashboard_url}api/edges", timeout=5, token=token)
    assert status == 200, body[:200]
    rows: list[dict[str, Any]] = json.loads(body)["edges"]
    return rows


async def converged(fleet: DevFleet, node: SitePlan, marker: int, client: FleetClient) -> None:
    """Every edge online and converged on `node`'s dashboard, on the revision holding `marker`."""
    want = None

    async def probe() -> bool:
        nonlocal want
        if want is None:
            current = await client.profiles.get(NAME)
            if current.spec.config.get("marker") != marker:
                return False
            want = current.revision
        rows = await api_edges(node, fleet.dashboard_token)
        ok = {r["edge"] for r in rows if r["presence"] == "online" and r["compliance"] == "converged"}
        if ok != set(EDGES):
            return False
        for edge in EDGES:
            report = await client.report(edge)
            result = report.apply_result if report else None
            if result is None or result.profile_revisions.get(NAME) != want:
                return False
        return True

    await eventually(probe, timeout=60, what=f"every edge converged on marker {marker} ({node.key}'s view)")


async def apply_until_acknowledged(client: FleetClient, marker: int) -> int:
    """Apply as a user would: again after an unanswered try (the hub was failing over), until
    the desk acknowledges. Returns the acknowledged revision."""
    deadline = time.monotonic() + 60
    while True:
        try:
            plan = await client.profiles.apply(profile(marker))
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)  # a user's pause before trying again
            continue
        assert plan.new is not None
        assert plan.new.revision is not None
        return plan.new.revision


async def leaders(fleet: DevFleet) -> dict[str, str]:
    """Stream -> the hub node leading it, as the first running node's /jsz says."""
    for node in hubs(fleet):
        if not fleet.servers[node.key].running:
            continue
        url = f"http://127.0.0.1:{node.server.http_port}/jsz?streams=true"
        _, body = await http_get(url, timeout=5)
        found = {}
        for account in json.loads(body).get("account_details", []):
            for stream in account.get("stream_detail", []):
                leader = (stream.get("cluster") or {}).get("leader")
                if leader:
                    found[stream["name"]] = leader
        return found
    raise AssertionError("no hub node runs")


def node_number(key: str) -> int:
    return int(key.rsplit("-n", 1)[1])


class Watch:
    """Calls `probe` every `every` s in the background; keeps every failure (what, when)."""

    def __init__(self, probe: Callable[[], Awaitable[object]], every: float = 0.2) -> None:
        self.probe, self.every = probe, every
        self.failures: list[str] = []
        self.calls = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.calls += 1
            try:
                await self.probe()
            except Exception as exc:
                self.failures.append(f"{time.monotonic():.1f}: {exc!r}")
            await asyncio.sleep(self.every)  # the probe's period

    def __enter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def burst(
    fleet: DevFleet, edge: str, count: int, on_acked: Callable[[int], Awaitable[None]]
) -> list[str]:
    """Store `count` events in `edge`'s own EVENTS, as an application there would; returns the
    ids its stream acknowledged. `on_acked(n)` is awaited after each acknowledgement."""
    site = fleet.plan.site(edge)
    nc = await connect_as(fleet.plan, edge)
    acked: list[str] = []
    try:
        js = nc.jetstream(timeout=5)
        for n in range(count):
            event = Event(
                id=f"{edge}-burst-{n}",
                kind=PROBE_KIND,
                region=site.region,
                edge=edge,
                observed_at=utcnow(),
                data={"n": n},
            )
            body, headers = envelope(event, source="/test", message_id=event.id)
            ack = await js.publish(subjects.edge_event(site.region, edge, PROBE_KIND), body, headers=headers)
            if ack.seq:
                acked.append(event.id)
            await on_acked(len(acked))
    finally:
        await nc.close()
    return acked


async def hub_js(fleet: DevFleet, node: SitePlan) -> Client:
    return await connect_as(fleet.plan, node.key)


async def test_node_killed_during_an_apply_and_an_event_burst(cluster: DevFleet) -> None:
    fleet = cluster
    found = await leaders(fleet)
    profiles_leader = found[subjects.kv_stream(subjects.PROFILES_BUCKET)]
    survivor = next(n for n in hubs(fleet) if n.key != profiles_leader)
    async with await client_of(fleet, persistent=True) as client:
        await apply_until_acknowledged(client, 1)
        await converged(fleet, survivor, 1, client)

        async def dashboard() -> None:
            # Every daemon's, the one beside the killed node's too: only servers are killed,
            # and a daemon whose node is down goes on through another node.
            for node in hubs(fleet):
                await api_edges(node, fleet.dashboard_token)

        with Watch(dashboard) as watch:
            # SIGKILL the node leading `profiles` while a revision is being applied.
            applying = asyncio.create_task(apply_until_acknowledged(client, 2))
            await asyncio.sleep(0.05)  # the apply is on its way
            await fleet.kill("hub", server=True, daemon=False, node=node_number(profiles_leader))
            acknowledged = [await applying]
            acknowledged.append(await apply_until_acknowledged(client, 3))
            await converged(fleet, survivor, 3, client)
            await fleet.restart("hub", server=True, daemon=False, node=node_number(profiles_leader))

            # SIGKILL the node leading EVENTS while 2,000 events flow up from an edge.
            events_leader = (await leaders(fleet))[subjects.EVENTS_STREAM]
            survivor = next(n for n in hubs(fleet) if n.key != events_leader)

            async def kill_midway(n: int) -> None:
                if n == BURST // 4:
                    await fleet.kill("hub", server=True, daemon=False, node=node_number(events_leader))

            sent = await burst(fleet, "r1-e1", BURST, kill_midway)
            assert len(sent) == BURST

            # Presence keeps moving: an edge cut from its regional goes offline at the hub and
            # comes back, while a hub node is down.
            fleet.link("r2-e1").cut()
            await eventually(
                lambda: _presence(survivor, fleet, "r2-e1", lambda p: p != "online"),
                timeout=30,
                what="r2-e1 shown not online after its link was cut",
            )
            fleet.link("r2-e1").heal()
            await eventually(
                lambda: _presence(survivor, fleet, "r2-e1", lambda p: p == "online"),
                timeout=30,
                what="r2-e1 shown online again",
            )
            await fleet.restart("hub", server=True, daemon=False, node=node_number(events_leader))

        # Every acknowledged revision once in the history, and nothing else but them and the first.
        history = [e.revision for e in await client.profiles.history(NAME)]
        assert len(history) == len(set(history)), history
        assert set(acknowledged) <= set(history), (acknowledged, history)
        # Every acknowledged event exactly once at the hub.
        nc = await hub_js(fleet, survivor)
        try:
            js = nc.jetstream(timeout=10)

            async def all_there() -> bool:
                ids, _ = await stream_ids(js, subjects.EVENTS_STREAM)
                return all(ids[i] >= 1 for i in sent)

            await eventually(all_there, timeout=60, what=f"the hub holding all {BURST} events")
            ids, first = await stream_ids(js, subjects.EVENTS_STREAM)
        finally:
            await nc.close()
        assert first == 1
        assert [i for i in sent if ids[i] != 1] == [], "events stored more than once"
        assert watch.calls > 20
        assert watch.failures == [], f"a hub daemon's dashboard failed: {watch.failures[:5]}"


async def _presence(node: SitePlan, fleet: DevFleet, edge: str, wanted: Callable[[str], bool]) -> bool:
    rows = await api_edges(node, fleet.dashboard_token)
    return any(r["edge"] == edge and wanted(r["presence"]) for r in rows)


async def lease_holders(fleet: DevFleet) -> list[str]:
    """The hub daemons that say they hold the hub's lease now (their /metrics)."""
    holding = []
    for node in hubs(fleet):
        if not fleet.daemons[node.key].running:
            continue
        with contextlib.suppress(OSError, TimeoutError):
            _, body = await http_get(node.daemon_health_url.replace("/healthz", "/metrics"), timeout=2)
            if 'fleetbus_lease_held{lease="hub"} 1.0' in body.decode():
                holding.append(node.key)
    return holding


async def test_lease_failover_link_cut_and_rolling_restart(cluster: DevFleet, tmp_path: Path) -> None:
    fleet = cluster
    seen: list[list[str]] = []

    async def sample() -> None:
        seen.append(await lease_holders(fleet))

    async with await client_of(fleet, persistent=True) as client:
        with Watch(sample, every=0.1) as watch:
            holder = (await eventually(lambda: lease_holders(fleet), timeout=15, what="a lease holder"))[0]
            await fleet.kill("hub", server=False, daemon=True, node=node_number(holder))
            killed = time.monotonic()
            taken = await eventually(
                lambda: _other_holder(fleet, holder), timeout=15, what="another daemon holding the lease"
            )
            failover = time.monotonic() - killed
            print(f"lease moved from {holder} to {taken} {failover:.2f}s after the SIGKILL")
            assert failover <= FAILOVER_LIMIT
            # The new holder writes: once per request.
            revision = await apply_until_acknowledged(client, 10)
            await fleet.restart("hub", server=False, daemon=True, node=node_number(holder))
            survivor = next(n for n in hubs(fleet) if n.key != holder)
            await converged(fleet, survivor, 10, client)
            assert await lease_holders(fleet) == [taken], "a restarted daemon took the lease back"
        assert watch.calls > 20
        assert all(len(h) <= 1 for h in seen), f"two holders at once: {[h for h in seen if len(h) > 1]}"
        audited = [
            r
            for r in await _audit(fleet, survivor)
            if r.get("op") == "profile.apply" and r.get("outcome") == "ok"
        ]
        assert sum(1 for r in audited if r.get("revision") == revision) == 1, audited

        # An operator added through the (new) holder's desk is admitted by every node, and
        # once revoked, refused by every node.
        await operator_everywhere(fleet, tmp_path, admitted=True)
        await operator_everywhere(fleet, tmp_path, admitted=False)

        # Cut every link to the node each regional is connected to: they go on through the others.
        used = await _linked_nodes(fleet)
        for key in used:
            fleet.node_links(key).cut()
        await apply_until_acknowledged(client, 11)
        await converged(fleet, next(n for n in hubs(fleet) if n.key not in used), 11, client)
        for key in used:
            fleet.node_links(key).heal()

        # A rolling restart while profiles change: converged after each step.
        for node in hubs(fleet):
            marker = 20 + node_number(node.key)
            restarting = asyncio.create_task(
                fleet.restart("hub", server=True, daemon=False, node=node_number(node.key))
            )
            await apply_until_acknowledged(client, marker)
            await restarting
            other = next(n for n in hubs(fleet) if n.key != node.key)
            await converged(fleet, other, marker, client)


async def operator_everywhere(fleet: DevFleet, tmp_path: Path, *, admitted: bool) -> None:
    """Add (`admitted`) or revoke the operator `night-shift` at the hub's desk, then wait
    until every hub node admits (or refuses) its key."""
    hub = fleet.plan.hub_url
    args: tuple[str, ...] = ("operator", "add", "night-shift", "--role", "viewer", "--out", str(tmp_path))
    if not admitted:
        args = ("operator", "revoke", "night-shift")
    done = await arun_cli(*args, "--reason", "test", "--hub", hub, "--creds", str(admin_creds(fleet.plan)))
    assert done.returncode == 0, done.stderr
    seed = tmp_path / "night-shift.nk"

    async def every_node() -> bool:
        for node in hubs(fleet):
            try:
                nc = await nats.connect(
                    node.server.client_url, nkeys_seed=str(seed), allow_reconnect=False, connect_timeout=2
                )
            except Exception:  # refused (or not yet admitted)
                if admitted:
                    return False
                continue
            await nc.close()
            if not admitted:
                return False
        return True

    what = "every hub node admitting" if admitted else "every hub node refusing"
    await eventually(every_node, timeout=20, what=f"{what} the operator night-shift")


async def _other_holder(fleet: DevFleet, old: str) -> str | None:
    holders = [h for h in await lease_holders(fleet) if h != old]
    return holders[0] if holders else None


async def _audit(fleet: DevFleet, node: SitePlan) -> list[dict[str, Any]]:
    """Every AUDIT record at the hub, as dicts."""
    nc = await hub_js(fleet, node)
    try:
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(subjects.AUDIT_STREAM)
        sub = await js.subscribe(">", stream=subjects.AUDIT_STREAM, ordered_consumer=True)
        records = []
        for _ in range(info.state.messages):
            msg = await sub.next_msg(timeout=10)
            records.append(json.loads(msg.data))
        await sub.unsubscribe()
        return records
    finally:
        await nc.close()


async def _linked_nodes(fleet: DevFleet) -> set[str]:
    """The hub nodes holding a regional's leaf link now (their /leafz)."""
    used = set()
    for node in hubs(fleet):
        _, body = await http_get(f"http://127.0.0.1:{node.server.http_port}/leafz", timeout=5)
        if json.loads(body).get("leafnodes", 0):
            used.add(node.key)
    assert used, "no hub node holds a leaf link"
    return used
