"""Every metric the README documents exists on a running daemon and moves when its event happens.

One real fleet (hub <- r1 <- r1-e1, link proxies), one scenario: apply a profile, feed the
regional garbage and strangers, cut the edge's link (events pile up and get evicted), restart
the regional while cut, heal, crash the edge's server. Each check scrapes /metrics before and
after; the set of metrics checked must equal the README's table.
"""

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.nats.bus import connect
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.base import utcnow
from schemas.enrollment import Enrollment, EnrollmentReply
from schemas.event import Event
from schemas.headers import envelope
from schemas.heartbeat import Heartbeat, Tier
from schemas.profile import Profile
from tests.conftest import admin_creds, connect_as, running_fleet
from tests.helpers import ROOT, eventually

pytestmark = pytest.mark.slow

SETTINGS: dict[Tier, dict[str, object]] = {
    Tier.EDGE: {"inventory_scan_interval": 0.2},
}


# Checked where what moves them runs: the kubernetes driver (tests/test_kubernetes.py), MQTT
# devices (tests/test_devices.py) and their telemetry (tests/test_telemetry.py).
CHECKED_ELSEWHERE = {
    "fleetbus_drift_total",
    "fleetbus_device_messages_total",
    "fleetbus_device_messages_rejected_total",
    "fleetbus_telemetry_forwarded_total",
    "fleetbus_telemetry_dropped_total",
    "fleetbus_lease_held",  # tests/test_hub_cluster.py: one holder, moved by a SIGKILL
}


def documented() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| metric | type | labels | on | moves when |") :]
    table = table[: table.index("\n\n")]
    return set(re.findall(r"^\| `(fleetbus_\w+)`", table, flags=re.MULTILINE))


@dataclass
class Scrape:
    families: set[str]  # declared (# TYPE), with or without samples yet
    samples: list[tuple[str, dict[str, str], float]]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
        return sum(
            v for n, ls, v in self.samples if n == name and all(ls.get(k) == x for k, x in labels.items())
        )

    def has(self, name: str) -> bool:
        return name.removesuffix("_total") in self.families


class Metrics:
    def __init__(self, fleet: DevFleet) -> None:
        self.fleet = fleet
        self.moved: dict[str, str] = {}

    async def scrape(self, site: str) -> Scrape:
        port = self.fleet.plan.site(site).daemon_http_port
        status, body = await http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert status == 200
        families = list(text_string_to_metric_families(body.decode()))
        samples = [(s.name, s.labels, s.value) for family in families for s in family.samples]
        return Scrape({f.name for f in families}, samples)

    async def until(
        self, site: str, what: str, check: Callable[[Scrape], bool], timeout: float = 20
    ) -> Scrape:
        async def probe() -> Scrape | None:
            scrape = await self.scrape(site)
            return scrape if check(scrape) else None

        return await eventually(probe, timeout=timeout, what=f"{site}: {what}")

    async def moves(
        self,
        metric: str,
        site: str,
        act: Callable[[], Awaitable[object]] | None,
        moved: Callable[[Scrape, Scrape], bool],
        why: str,
        timeout: float = 20,
    ) -> None:
        """Scrape `site`, do `act`, then wait until `moved(before, after)` holds."""
        before = await self.scrape(site)
        assert before.has(metric), f"{metric} is not exported by {site}"
        if act is not None:
            await act()
        await self.until(site, f"{metric} moves when {why}", lambda after: moved(before, after), timeout)
        self.moved[metric] = f"{site}: {why}"


async def _write_unsigned(fleet: DevFleet, edge: str) -> None:
    """An unsigned profile value where `edge` reads its profiles (its keys of its regional's
    `assigned` bucket), written with the regional's own key."""
    region = fleet.plan.site(edge).region
    nc = await connect_as(fleet.plan, region)
    try:
        key = subjects.assigned_key(edge, subjects.ASSIGNED_PROFILE, "unsigned")
        await nc.jetstream().publish(subjects.kv_subject(subjects.ASSIGNED_BUCKET, key), b"{}")
    finally:
        await nc.close()


async def publish_events(fleet: DevFleet, edge: str, count: int, *, keep: int) -> None:
    """Store `count` events in `edge`'s EVENTS, its limit tightened to `keep` messages first."""
    region = fleet.plan.site(edge).region
    nc = await connect_as(fleet.plan, edge)
    try:
        js = nc.jetstream()
        config = (await js.stream_info(subjects.EVENTS_STREAM)).config
        config.max_msgs = keep
        await js.update_stream(config)
        for n in range(count):
            event = Event(
                id=f"metrics-{n}",
                kind="audit",
                region=region,
                edge=edge,
                observed_at=utcnow(),
                message=f"#{n}",
            )
            body, headers = envelope(event, source="/test", message_id=event.id)
            await js.publish(subjects.edge_event(region, edge, "audit"), body, headers=headers)
    finally:
        await nc.close()


async def test_every_documented_metric_exists_and_moves(tmp_path):
    async with running_fleet(tmp_path, regions=1, edges=1, settings=SETTINGS) as fleet:
        m = Metrics(fleet)
        edge, region, hub = "r1-e1", "r1", "hub"
        await m.until(edge, "first apply", lambda s: s.value("fleetbus_reconciles_total") >= 1)
        await m.until(region, "edge heard", lambda s: s.value("fleetbus_peers_heard") == 1)

        for site, tier in ((hub, "hub"), (region, "regional"), (edge, "edge")):
            scrape = await m.scrape(site)
            assert scrape.value("fleetbus_daemon_info", tier=tier, site=site) == 1
            assert scrape.value("fleetbus_nats_connected") == 1
        m.moved["fleetbus_daemon_info"] = "every daemon: 1, labelled with its tier and site"

        # A profile: the edge applies it, reports, and takes a fresh inventory snapshot.
        async def apply_profile() -> None:
            profile = Profile.model_validate(
                {"name": "base", "selector": {"match_labels": {"env": "dev"}}, "spec": {"config": {"a": 1}}}
            )
            async with await FleetClient.connect(
                fleet.plan.site(hub).server.client_url, creds=admin_creds(fleet.plan)
            ) as client:
                await client.profiles.apply(profile)

        before = await m.scrape(edge)
        handing = await m.scrape(region)
        await apply_profile()
        # The reconcile is counted before its ApplyResult is stored (and counted as sent once
        # acknowledged): wait for both, a scrape can fall between them.
        after = await m.until(
            edge,
            "profile applied and its ApplyResult sent",
            lambda s: (
                s.value("fleetbus_reconciles_total", status="applied")
                > before.value("fleetbus_reconciles_total", status="applied")
                and s.value("fleetbus_messages_out_total", kind="fleet.event")
                > before.value("fleetbus_messages_out_total", kind="fleet.event")
            ),
        )
        assert after.value("fleetbus_apply_duration_seconds_count") > before.value(
            "fleetbus_apply_duration_seconds_count"
        )
        m.moved["fleetbus_reconciles_total"] = m.moved["fleetbus_apply_duration_seconds"] = "edge: apply"
        assert after.value("fleetbus_messages_in_total", kind="fleet.profile") > before.value(
            "fleetbus_messages_in_total", kind="fleet.profile"
        )
        m.moved["fleetbus_messages_in_total"] = "edge: a profile revision received"
        await m.until(
            region,
            "the profile handed to the edge",
            lambda s: (
                s.value("fleetbus_assigned_writes_total", operation="PUT")
                > handing.value("fleetbus_assigned_writes_total", operation="PUT")
            ),
        )
        m.moved["fleetbus_assigned_writes_total"] = "regional: the profile handed to its edge"
        hub_now = await m.scrape(hub)
        assert hub_now.value("fleetbus_desk_requests_total", op="profile.apply", outcome="ok") == 1
        m.moved["fleetbus_desk_requests_total"] = "hub: its desk stored the profile"
        await m.moves(
            "fleetbus_desired_refused_total",
            edge,
            lambda: _write_unsigned(fleet, edge),
            lambda b, a: (
                a.value("fleetbus_desired_refused_total", bucket="profiles", reason="unsigned")
                == b.value("fleetbus_desired_refused_total", bucket="profiles", reason="unsigned") + 1
            ),
            "an unsigned profile reaches its replica",
        )
        m.moved["fleetbus_messages_out_total"] = "edge: its ApplyResult event published"
        await m.moves(
            "fleetbus_inventory_snapshots_total",
            edge,
            None,
            lambda b, a: (
                a.value("fleetbus_inventory_snapshots_total", trigger="changed")
                > before.value("fleetbus_inventory_snapshots_total", trigger="changed")
            ),
            "the applied state changed",
        )

        # The dashboard: a request is counted by its route template; a live feed is a gauge.
        dashboard = fleet.plan.site(hub).dashboard_url

        async def hub_knows_edge() -> bool:  # until then the request below is a 404
            status, _ = await http_get(f"{dashboard}api/edges/{edge}", token=fleet.dashboard_token)
            return status == 200

        await eventually(hub_knows_edge, timeout=20, what="the hub's dashboard knows the edge")
        await m.moves(
            "fleetbus_api_requests_total",
            hub,
            lambda: http_get(f"{dashboard}api/edges/{edge}", token=fleet.dashboard_token),
            lambda b, a: (
                a.value("fleetbus_api_requests_total", route="/api/edges/{edge}", status="2xx")
                == b.value("fleetbus_api_requests_total", route="/api/edges/{edge}", status="2xx") + 1
            ),
            "GET /api/edges/{edge}",
        )
        feed_port = fleet.plan.site(hub).dashboard_port
        reader, writer = await asyncio.open_connection("127.0.0.1", feed_port)
        try:
            auth = f"Authorization: Bearer {fleet.dashboard_token}\r\n"
            writer.write(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode())
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            await m.until(hub, "feed open", lambda s: s.value("fleetbus_dashboard_streams") == 1)
        finally:
            writer.close()
        await m.until(hub, "feed closed", lambda s: s.value("fleetbus_dashboard_streams") == 0)
        m.moved["fleetbus_dashboard_streams"] = "hub: 1 while /api/stream is open, 0 after"

        # The regional is fed garbage, a stranger's heartbeat, and an enrollment for another region.
        bus = await connect(
            fleet.plan.site(region).server.client_url,
            name="test",
            source="/test",
            creds=fleet.plan.site(region).creds_path,
            site=region,
        )
        try:
            await m.moves(
                "fleetbus_decode_errors_total",
                region,
                lambda: bus.nc.publish(subjects.edge_heartbeat(region, edge), b"\x00garbage"),
                lambda b, a: (
                    a.value("fleetbus_decode_errors_total", kind="fleet.heartbeat")
                    > b.value("fleetbus_decode_errors_total", kind="fleet.heartbeat")
                ),
                "an undecodable heartbeat arrives",
            )
            stranger = Heartbeat(
                tier=Tier.EDGE,
                site="r1-e9",
                region=region,
                seq=0,
                sent_at=utcnow(),
                interval_seconds=1,
                uptime_seconds=0,
            )
            await m.moves(
                "fleetbus_heartbeats_rejected_total",
                region,
                lambda: bus.publish(subjects.edge_heartbeat(region, "r1-e9"), stranger),
                lambda b, a: (
                    a.value("fleetbus_heartbeats_rejected_total", reason="unknown_edge")
                    > b.value("fleetbus_heartbeats_rejected_total", reason="unknown_edge")
                ),
                "a site that never enrolled heartbeats",
            )
            wrong = Enrollment(region="r7", edge="r7-e1", requested_at=utcnow())
            await m.moves(
                "fleetbus_enrollments_total",
                region,
                lambda: bus.request(subjects.edge_enroll(region, "r7-e1"), wrong, EnrollmentReply),
                lambda b, a: (
                    a.value("fleetbus_enrollments_total", outcome="refused")
                    > b.value("fleetbus_enrollments_total", outcome="refused")
                ),
                "an enrollment for another region is refused",
            )
        finally:
            await bus.close()

        # Cut the edge's link: presence goes stale, the uplink backlog grows, old events are evicted.
        link = fleet.link(edge)
        edge_before = await m.scrape(edge)
        region_before = await m.scrape(region)
        link.cut()
        await m.until(edge, "upstream down", lambda s: s.value("fleetbus_upstream_up") == 0)
        m.moved["fleetbus_upstream_up"] = "edge: 1 -> 0 when its link is cut, 1 after the heal"
        await m.until(
            region,
            "edge stale",
            lambda s: (
                s.value("fleetbus_presence_writes_total", state="stale")
                > region_before.value("fleetbus_presence_writes_total", state="stale")
                and s.value("fleetbus_presence_sites", state="stale") == 1
            ),
        )
        m.moved["fleetbus_presence_writes_total"] = m.moved["fleetbus_presence_sites"] = (
            "regional: edge stale"
        )
        await m.until(
            hub,
            "edge shown stale",
            lambda s: (
                s.value("fleetbus_fleet_edges", presence="stale") == 1
                and s.value("fleetbus_fleet_edges", presence="online") == 0
            ),
        )
        m.moved["fleetbus_fleet_edges"] = "hub: online -> stale"
        assert (await m.scrape(edge)).value("fleetbus_link_transitions_total", state="down") == (
            edge_before.value("fleetbus_link_transitions_total", state="down") + 1
        )
        await publish_events(fleet, edge, 10, keep=3)
        after = await m.until(
            edge,
            "events waiting and evicted",
            lambda s: (
                s.value("fleetbus_uplink_backlog_messages", stream="EVENTS") == 3
                and s.value("fleetbus_stream_evicted_messages", stream="EVENTS")
                >= edge_before.value("fleetbus_stream_evicted_messages", stream="EVENTS") + 7
            ),
        )
        assert after.value("fleetbus_uplink_backlog_oldest_age_seconds", stream="EVENTS") > 0
        m.moved["fleetbus_uplink_backlog_messages"] = "edge: 3 events wait while cut, 0 after the heal"
        m.moved["fleetbus_uplink_backlog_oldest_age_seconds"] = "edge: > 0 while events wait, 0 after"
        m.moved["fleetbus_stream_evicted_messages"] = "edge: EVENTS limited to 3, 10 stored"

        # The regional restarts while the edge is cut off: it has heard nobody yet.
        await fleet.restart(region, server=False)
        await m.until(region, "restarted, edge not heard", lambda s: s.value("fleetbus_peers_heard") == 0)
        region_restarted = await m.scrape(region)
        link.heal()
        await m.until(region, "edge heard again", lambda s: s.value("fleetbus_peers_heard") == 1)
        m.moved["fleetbus_peers_heard"] = "regional: 0 after a restart while the edge is cut, 1 on heal"
        healed = await m.until(
            edge,
            "link up, backlog drained",
            lambda s: (
                s.value("fleetbus_upstream_up") == 1
                and s.value("fleetbus_uplink_backlog_messages", stream="EVENTS") == 0
                and s.value("fleetbus_uplink_backlog_oldest_age_seconds", stream="EVENTS") == 0
            ),
        )
        assert healed.value("fleetbus_link_transitions_total", state="up") == (
            edge_before.value("fleetbus_link_transitions_total", state="up") + 1
        )
        m.moved["fleetbus_link_transitions_total"] = "edge: down on the cut, up on the heal"
        assert healed.value("fleetbus_uplink_stalls_total", stream="EVENTS") > edge_before.value(
            "fleetbus_uplink_stalls_total", stream="EVENTS"
        )
        m.moved["fleetbus_uplink_stalls_total"] = "edge: pushing up waits while the link is cut"
        assert healed.value("fleetbus_uplink_forwarded_total", stream="EVENTS") >= (
            edge_before.value("fleetbus_uplink_forwarded_total", stream="EVENTS") + 3
        )
        m.moved["fleetbus_uplink_forwarded_total"] = "edge: the 3 events kept while cut go up on the heal"

        # The regional's own link is cut and healed: the hub restarts its sources from r1.
        hub_before = await m.scrape(hub)
        fleet.link(region).cut()
        await m.until(region, "hub unreachable", lambda s: s.value("fleetbus_upstream_up") == 0)
        fleet.link(region).heal()
        await m.until(
            hub,
            "r1's sources kicked",
            lambda s: (
                s.value("fleetbus_source_kicks_total") > hub_before.value("fleetbus_source_kicks_total")
            ),
        )
        m.moved["fleetbus_source_kicks_total"] = "hub: regional r1 is heard again after its link returned"
        await m.until(
            region,
            "heartbeats counted",
            lambda s: (
                s.value("fleetbus_messages_in_total", kind="fleet.heartbeat")
                > region_restarted.value("fleetbus_messages_in_total", kind="fleet.heartbeat")
            ),
        )

        # The edge's own server crashes and comes back.
        await fleet.kill(edge, daemon=False)
        await m.until(edge, "server down", lambda s: s.value("fleetbus_nats_connected") == 0)
        await fleet.restart(edge, daemon=False)
        await m.until(edge, "server back", lambda s: s.value("fleetbus_nats_connected") == 1, timeout=30)
        m.moved["fleetbus_nats_connected"] = "edge: 0 while its nats-server is down, 1 after"

        expected = documented() - CHECKED_ELSEWHERE
        assert set(m.moved) == expected, (
            f"documented but not checked: {sorted(expected - set(m.moved))}; "
            f"checked but not documented: {sorted(set(m.moved) - expected)}"
        )
        for metric, why in sorted(m.moved.items()):
            print(f"{metric}: {why}")
