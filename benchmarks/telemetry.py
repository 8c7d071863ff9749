"""Device telemetry upstream: latency from an MQTT publish at an edge to the hub, and catch-up
after a cut link, against raw core NATS in the same run.

    .venv/bin/python benchmarks/telemetry.py [--readings 200] [--outage-readings 1000]

A real dev fleet (hub, 1 regional, 1 edge with its MQTT listener; servers and daemons as
processes, a TCP proxy on every leaf link) and a profile forwarding `devices/+/telemetry`
(sampled; each reading from a new device, so every one is forwarded). One aiomqtt client
publishes; two clients at the hub receive the same reading:

- fleetbus: the `telemetry` event (registry -> forwarder -> edge EVENTS -> regional -> hub
  EVENTS, stored at every hop), read with `FleetClient.watch_events`;
- baseline: a raw nats-py core subscription at the hub on `devices.*.telemetry`, which the
  leaf links carry with no store at all.

Then the edge's uplink is cut, `--outage-readings` readings are published, and the link is
healed: the time until all of them are at the hub, and how many the raw subscription got.
Prints p50/p99/max and the ratio. Not a test.
"""

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import ssl
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
import bcrypt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import admin_creds, append_results, connect_as, summary, table
from fleetbus.devfleet import identities
from fleetbus.devfleet.netutil import free_ports, http_get
from fleetbus.devfleet.plan import plan_fleet, ports_needed
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.runtime import log
from fleetbus.sdk.client import FleetClient
from schemas.base import utcnow
from schemas.heartbeat import Tier
from schemas.profile import Profile, ProfileSpec

EDGE = "r1-e1"


async def wait_for(probe, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            msg = f"{what}: not within {timeout} s"
            raise SystemExit(msg)
        await asyncio.sleep(0.005)  # polling a condition measured elsewhere, not a synchronisation


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=200)
    parser.add_argument("--outage-readings", type=int, default=1000)
    args = parser.parse_args()
    log.configure(level="warning")
    settings: dict[Tier, dict[str, object]] = {
        Tier.EDGE: {"telemetry_max_rate": 10_000.0, "telemetry_max_backlog": 100_000}
    }
    with tempfile.TemporaryDirectory() as tmp:
        ports = iter(free_ports(ports_needed(1, 1, mqtt=True, links=True)))
        plan = plan_fleet(Path(tmp), 1, 1, ports, mqtt=True, links=True)
        fleet = DevFleet(plan, heartbeat_interval=1.0, progress=lambda _l: None, settings=settings)
        await fleet.start()
        try:
            await run(fleet, args)
        finally:
            await fleet.stop()


async def outage(
    fleet: DevFleet,
    mqtt: aiomqtt.Client,
    args: argparse.Namespace,
    via_raw: dict[str, float],
    via_fleetbus: dict[str, float],
) -> tuple[float, int]:
    """Cut the edge's link, send readings, heal: how long the stored readings took to reach
    the hub after the heal, and how many the raw (unstored) path delivered."""
    fleet.link(EDGE).cut()
    metrics_url = f"http://127.0.0.1:{fleet.plan.site(EDGE).daemon_http_port}/metrics"

    async def link_down() -> bool:
        return await metric(metrics_url, "fleetbus_upstream_up") == 0

    await wait_for(link_down, 30, "the edge noticing its uplink is down")
    n = args.outage_readings
    for i in range(n):
        await mqtt.publish(f"devices/out-{i}/telemetry", json.dumps({"temp": i % 10}), qos=1)
    forwarded = 1 + int(args.readings) + int(n)

    async def stored() -> bool:
        return await metric(metrics_url, "fleetbus_telemetry_forwarded_total") >= forwarded

    await wait_for(stored, 60, "the edge storing the readings")
    healed = time.monotonic()
    fleet.link(EDGE).heal()

    async def all_back() -> bool:
        return sum(k.startswith("out-") for k in via_fleetbus) >= int(n)

    await wait_for(all_back, 120, "the readings stored during the outage")
    catch_up = max(v for k, v in via_fleetbus.items() if k.startswith("out-")) - healed
    raw_got = sum(k.startswith("out-") for k in via_raw)
    return catch_up, raw_got


async def run(fleet: DevFleet, args: argparse.Namespace) -> None:
    hub_url = fleet.plan.site("hub").server.client_url
    client = await FleetClient.connect(hub_url, creds=admin_creds(fleet.plan))
    raw = await connect_as(fleet.plan, "hub")
    start = utcnow()
    spec = ProfileSpec.model_validate(
        {"telemetry": {"devices/+/telemetry": {"mode": "sample", "interval": 60}}}
    )
    await client.profiles.apply(Profile(name="bench", spec=spec))

    async def rules_applied() -> bool:
        report = await client.report(EDGE)
        return bool(report and report.apply_result and "bench" in report.apply_result.profile_revisions)

    await wait_for(rules_applied, 60, "the edge applying the profile")
    via_fleetbus: dict[str, float] = {}
    via_raw: dict[str, float] = {}

    async def raw_reading(msg) -> None:  # type: ignore[no-untyped-def]
        via_raw[msg.subject.split(".")[1]] = time.monotonic()

    await raw.subscribe("devices.*.telemetry", cb=raw_reading)
    await raw.flush()

    async def listen() -> None:
        async for event in client.watch_events(["telemetry"], since=start):
            via_fleetbus[str(event.data["device"])] = time.monotonic()

    listener = asyncio.create_task(listen())
    port = fleet.plan.site(EDGE).server.mqtt_port
    assert port is not None
    try:
        # One site gateway speaks for every device (`fleetbus device add --gateway`).
        password = secrets.token_urlsafe(18)
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
        region = fleet.plan.site(EDGE).region
        await client.device_credentials(
            EDGE, "bench-gw", "add", password_hash=hashed, gateway=True, region=region
        )
        tls = ssl.create_default_context(cafile=str(identities.ca_cert(fleet.plan.state_dir)))
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier="bench-devices",
            username="bench-gw",
            password=password,
            tls_context=tls,
        ) as mqtt:
            # Interest for the raw subscription crosses two leaf links: wait until it is there.
            await mqtt.publish("devices/warmup/telemetry", json.dumps({"v": 0}), qos=1)
            await wait_for(lambda: _has(via_raw, via_fleetbus, "warmup"), 30, "the first reading at the hub")
            lat_fleetbus, lat_raw = [], []
            for i in range(args.readings):
                device = f"live-{i}"
                sent = time.monotonic()
                await mqtt.publish(f"devices/{device}/telemetry", json.dumps({"temp": 20 + i % 10}), qos=1)
                await wait_for(lambda d=device: _has(via_raw, via_fleetbus, d), 30, f"reading {i}")
                lat_fleetbus.append((via_fleetbus[device] - sent) * 1000)
                lat_raw.append((via_raw[device] - sent) * 1000)

            catch_up, raw_got = await outage(fleet, mqtt, args, via_raw, via_fleetbus)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await raw.close()
        await client.close()

    fb, rw = summary(lat_fleetbus), summary(lat_raw)
    lines = table(
        ["path", "readings", "p50 ms", "p99 ms", "max ms"],
        [
            ["fleetbus telemetry event", str(args.readings), *(f"{v:.1f}" for v in fb)],
            ["raw core NATS (no store)", str(args.readings), *(f"{v:.1f}" for v in rw)],
        ],
    )
    n = args.outage_readings
    lines += [
        "",
        f"p50 ratio fleetbus/raw: x{fb[0] / rw[0]:.1f}",
        (
            f"{n} readings published while the edge's uplink was cut: all {n} at the hub "
            f"{catch_up:.2f} s after the heal (fleetbus); raw core NATS delivered {raw_got} of {n}."
        ),
    ]
    append_results("Telemetry", lines)


async def metric(url: str, name: str) -> float:
    """Sum of a metric's samples at a daemon's /metrics."""
    _, body = await http_get(url, timeout=5)
    pattern = rf"^{name}(?:{{[^}}]*}})? (\S+)$"
    return sum(float(v) for v in re.findall(pattern, body.decode(), flags=re.MULTILINE))


async def _has(via_raw: dict[str, float], via_fleetbus: dict[str, float], device: str) -> bool:
    return device in via_raw and device in via_fleetbus


if __name__ == "__main__":
    asyncio.run(main())
