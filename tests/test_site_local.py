"""Site-local traffic stays at its site: device subjects (and the other `SITE_LOCAL` subjects)
never cross a leaf link, in either direction, because the rendered server configs deny them
on every leaf remote. Real servers and daemons, two regions of two edges."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from nats.aio.client import Client

from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.plan import FleetPlan, SitePlan, plan_fleet, ports_needed
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.heartbeat import Tier
from schemas.profile import Profile, ProfileSpec
from tests.conftest import Chain, admin_creds, connect_as, device_login, running_fleet
from tests.helpers import eventually

DEVICE = "sensor-1"  # the same device id at three edges, two of them in one region
EDGES = ("r1-e1", "r1-e2", "r2-e1")


def concrete(pattern: str) -> str:
    """A subject that `pattern` matches (`*` -> a token, `>` -> two tokens)."""
    return pattern.replace("*", "x").replace(">", "probe.x")


@contextlib.asynccontextmanager
async def connections(plan: FleetPlan) -> AsyncIterator[dict[str, Client]]:
    conns: dict[str, Client] = {}
    try:
        for site in plan.sites:
            conns[site.name] = await connect_as(plan, site.name, allow_reconnect=False)
        yield conns
    finally:
        for nc in conns.values():
            await nc.close()


async def test_no_site_local_subject_is_delivered_at_another_site(tmp_path):
    """Every `SITE_LOCAL` subject, published at each site, reaches subscribers at that site and
    at no other; a fleet subject published the same way (the control) crosses every link both
    ways, so the links were up and interest had spread when the local ones were not delivered."""
    ports = iter(free_ports(ports_needed(2, 2, mqtt=True)))
    chain = Chain(plan_fleet(tmp_path / "fleet", 2, 2, ports, mqtt=True))
    await chain.start()
    try:
        async with connections(chain.plan) as conns:
            heard: dict[str, list[tuple[str, str]]] = {name: [] for name in conns}

            for name, nc in conns.items():

                async def take(msg: Any, at: str = name) -> None:
                    heard[at].append((msg.subject, msg.data.decode()))

                for pattern in (*subjects.SITE_LOCAL, f"{subjects.PREFIX}.>"):
                    await nc.subscribe(pattern, cb=take)
                await nc.flush()

            # A control crosses each link both ways, on the lower site's own subjects: the
            # only fleet subjects a link lets through in both directions.
            links = [(s.name, s.upstream, _base(s)) for s in chain.plan.sites if s.upstream]

            async def spread(round_: str) -> bool:
                for lower, upper, base in links:
                    for sender in (lower, upper):
                        await conns[sender].publish(f"{base}.probe.{round_}", sender.encode())
                        await conns[sender].flush()
                await asyncio.sleep(0.05)  # poll interval: give them time to cross before looking
                return all(
                    (f"{base}.probe.{round_}", upper) in heard[lower]
                    and (f"{base}.probe.{round_}", lower) in heard[upper]
                    for lower, upper, base in links
                )

            # Interest has spread over every link once each end hears the other's control.
            await eventually(lambda: spread("before"), timeout=20, what="controls across every link")
            for name, nc in conns.items():
                for pattern in subjects.SITE_LOCAL:
                    await nc.publish(concrete(pattern), name.encode())
                await nc.flush()
            # Published after the local subjects on the same connections and links.
            await eventually(lambda: spread("after"), timeout=20, what="second controls across every link")

            local = {concrete(p) for p in subjects.SITE_LOCAL}
            for at, messages in heard.items():
                origins = {d for s, d in messages if s in local}
                assert origins == {at}, f"{at} heard site-local subjects from {sorted(origins - {at})}"
                assert {s for s, d in messages if s in local} == local  # its own, every one
    finally:
        await chain.stop()


def _base(site: SitePlan) -> str:
    if site.tier is Tier.EDGE:
        return subjects.edge_base(site.region, site.name)
    return subjects.region_base(site.region)


async def registry(client: FleetClient, edge: str) -> list[Any]:
    snapshot = await client.get_inventory(edge)
    return list(snapshot.devices)


async def telemetry_stored(fleet: Any, edge: str) -> int:
    region = fleet.plan.site(edge).region
    nc = await connect_as(fleet.plan, edge)
    try:
        info = await nc.jetstream().stream_info(
            subjects.EVENTS_STREAM, subjects_filter=subjects.events(region, edge, "telemetry")
        )
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


@pytest.mark.slow
async def test_the_same_device_id_at_three_edges_stays_three_devices(tmp_path):
    settings: dict[Tier, dict[str, object]] = {
        Tier.EDGE: {"inventory_scan_interval": 0.3, "inventory_interval": 1.0, "telemetry_max_rate": 100}
    }
    async with (
        running_fleet(tmp_path, regions=2, edges=2, settings=settings, mqtt=True) as fleet,
        await FleetClient.connect(
            fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan)
        ) as client,
    ):
        spec = {"telemetry": {"devices/+/telemetry": {"mode": "sample", "interval": 1}}}
        await client.profiles.apply(Profile(name="sensors", spec=ProfileSpec.model_validate(spec)))

        async def rules_applied(edge: str) -> bool:
            report = await client.report(edge)
            result = report.apply_result if report else None
            return bool(result and "sensors" in result.profile_revisions)

        for edge in EDGES:
            await eventually(lambda e=edge: rules_applied(e), timeout=30, what=f"{edge} applying the profile")

        async with contextlib.AsyncExitStack() as stack:
            devices: dict[str, aiomqtt.Client] = {}
            for edge in EDGES:
                port = fleet.plan.site(edge).server.mqtt_port
                assert port is not None
                login = await device_login(fleet.plan, edge, DEVICE)
                device = await stack.enter_async_context(
                    aiomqtt.Client("127.0.0.1", port, identifier=DEVICE, **login)
                )
                await device.subscribe(f"devices/{DEVICE}/cmd", qos=1)
                await device.publish(f"devices/{DEVICE}/telemetry", json.dumps({"edge": edge}), qos=1)
                devices[edge] = device

            # Each edge's registry holds its own device, with its own reading, heard once.
            for edge in EDGES:

                async def own(e: str = edge) -> bool:
                    records = await registry(client, e)
                    return [(r.id, r.last_telemetry, r.messages) for r in records] == [
                        (DEVICE, {"edge": e}, 1)
                    ]

                await eventually(own, timeout=20, what=f"{edge}'s registry holding only its own {DEVICE}")
            assert await registry(client, "r2-e2") == []  # the edge with no device knows none

            # Telemetry leaves each edge once: one event stored per edge.
            for edge in EDGES:
                await eventually(
                    lambda e=edge: _equals(telemetry_stored(fleet, e), 1),
                    timeout=20,
                    what=f"{edge}'s reading",
                )

            # A command reaches only the addressed edge's device: each device's first command
            # is the one sent to its own edge, though all three were sent to the same id.
            for edge in EDGES:
                reply = await client.send_device_command(edge, DEVICE, {"for": edge}, sent_by="test")
                assert reply.delivered
            for edge in EDGES:
                assert (
                    await client.send_device_command(edge, DEVICE, {"end": edge}, sent_by="test")
                ).delivered
            for edge, device in devices.items():
                received = []
                async with asyncio.timeout(10):
                    async for message in device.messages:
                        received.append(json.loads(message.payload))  # type: ignore[arg-type]
                        if len(received) == 2:
                            break
                assert received == [{"for": edge}, {"end": edge}]
            for edge in EDGES:
                assert await telemetry_stored(fleet, edge) == 1


async def _equals(value: Any, expected: object) -> bool:
    return await value == expected


def test_every_leaf_remote_denies_the_site_local_subjects(tmp_path: Path):
    from fleetbus.devfleet.natsconf import render  # noqa: PLC0415

    plan = plan_fleet(tmp_path, 1, 1, iter(free_ports(ports_needed(1, 1, mqtt=True))), mqtt=True)
    for site in plan.sites:
        text = render(site.server)
        if site.server.upstream:
            for pattern in subjects.SITE_LOCAL:
                assert text.count(json.dumps(pattern)) == 2, (site.name, pattern)  # imports, exports
        assert "max_payload: 1MB" in text
