"""Hub load vs edge heartbeat rate: fleetbus keeps heartbeats at the regionals.

    .venv/bin/python benchmarks/hub_load.py [--window 20] [--regions 2] [--edges 3]

For each edge heartbeat interval (5 s, 1 s, 0.2 s) it starts a real dev fleet (servers and
daemons as processes; regionals keep heartbeating the hub every 5 s), waits until the hub
shows every edge online, then reads the hub nats-server's /varz `in_msgs`/`out_msgs` twice,
`--window` seconds apart. It then repeats the fastest case with a raw nats-py subscriber on
the hub to every edge heartbeat (`fleet.edge.*.*.hb`): the baseline of a design where the hub
consumes heartbeats itself, measured in the same run. Prints messages per second; not a test.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import admin_creds, connect_as
from fleetbus.devfleet.netutil import free_ports, http_get
from fleetbus.devfleet.plan import plan_fleet, ports_needed
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.sdk.client import FleetClient
from schemas.heartbeat import Tier
from schemas.presence import PresenceState

REGIONAL_BEAT = 5.0


async def varz(url: str) -> dict[str, float]:
    status, body = await http_get(url.replace("/healthz?js-enabled-only=true", "/varz"))
    if status != 200:
        msg = f"/varz answered {status}"
        raise RuntimeError(msg)
    data = json.loads(body)
    return {"in": data["in_msgs"], "out": data["out_msgs"], "t": time.monotonic()}


async def run(edge_beat: float, args: argparse.Namespace, *, raw_subscriber: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        ports = iter(free_ports(ports_needed(args.regions, args.edges, mqtt=False)))
        plan = plan_fleet(Path(tmp), args.regions, args.edges, ports)
        fleet = DevFleet(
            plan,
            heartbeat_interval=edge_beat,
            progress=lambda _line: None,
            settings={Tier.REGIONAL: {"heartbeat_interval": REGIONAL_BEAT}},
        )
        await fleet.start()
        try:
            hub = plan.site("hub").server
            async with await FleetClient.connect(hub.client_url, creds=admin_creds(plan)) as client:
                want = args.regions * args.edges
                deadline = time.monotonic() + 60
                while sum(p.state is PresenceState.ONLINE for p in await client.presence()) < want:
                    if time.monotonic() > deadline:
                        msg = "the fleet did not come online within 60 s"
                        raise RuntimeError(msg)
                    await asyncio.sleep(0.2)  # polling the hub's view
            raw = await connect_as(plan, "hub") if raw_subscriber else None
            heard = 0

            async def count(_msg: object) -> None:
                nonlocal heard
                heard += 1

            if raw:
                await raw.subscribe("fleet.edge.*.*.hb", cb=count)
                await raw.flush()
            await asyncio.sleep(3)  # settle after start-up before measuring
            before = await varz(hub.health_url)
            heard = 0
            await asyncio.sleep(args.window)  # the measurement window
            after = await varz(hub.health_url)
            if raw:
                await raw.close()
        finally:
            await fleet.stop()
    seconds = after["t"] - before["t"]
    return {
        "in": (after["in"] - before["in"]) / seconds,
        "out": (after["out"] - before["out"]) / seconds,
        "heartbeats_at_hub": heard / seconds,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per case")
    parser.add_argument("--regions", type=int, default=2)
    parser.add_argument("--edges", type=int, default=3, help="edges per region")
    args = parser.parse_args()
    edges = args.regions * args.edges
    print(f"{edges} edges, regionals beat the hub every {REGIONAL_BEAT:g}s, window {args.window:g}s")
    print(f"{'case':<44} {'hub in/s':>9} {'hub out/s':>10}")
    results = {}
    for beat in (5.0, 1.0, 0.2):
        result = await run(beat, args, raw_subscriber=False)
        results[beat] = result
        name = f"fleetbus, edges beat every {beat:g}s ({edges / beat:.0f} beats/s)"
        print(f"{name:<44} {result['in']:>9.1f} {result['out']:>10.1f}")
    raw = await run(0.2, args, raw_subscriber=True)
    name = "raw nats-py: hub subscribes to edge beats (0.2s)"
    reach = f"({raw['heartbeats_at_hub']:.1f} beats/s reach it)"
    print(f"{name:<44} {raw['in']:>9.1f} {raw['out']:>10.1f}   {reach}")
    slow, fast = results[5.0], results[0.2]
    print(
        f"hub in/s at 25x the heartbeat rate: x{fast['in'] / slow['in']:.2f} (fleetbus);"
        f" raw baseline vs fleetbus at 0.2s: x{raw['in'] / fast['in']:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
