"""Hub ingest: inventory snapshots per second through fleetbus's full path vs raw publish_async.

    .venv/bin/python benchmarks/ingest.py [--edges 1000] [--snapshots 20]

Full path: a real hub and regional (servers and daemons); `--edges` thin edges in this process
each build an InventorySnapshot (a new model per message, as the edge's publisher does) and
store it with `Bus.js_publish` (CloudEvents envelope, msgpack, awaiting the ack) into the
regional's INVENTORY, `--snapshots` times in a row, all edges at once; the regional's stream is
sourced into the hub's `inventory` bucket by the servers. The rate is snapshots / time until
the hub's bucket has received the last one.

Baseline, same run, same machine: raw nats-py `publish_async` of the same encoded bytes into
one stream on the hub server (≤ 4,000 in flight), until every ack is in. Prints both and the
ratio. Not a test: numbers, appended to benchmarks/RESULTS.md.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import append_results, table
from edge.inventory import host_facts
from fleetbus import log
from fleetbus.bus import connect
from fleetbus.devfleet.plan import plan_fleet, ports_needed
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.netutil import free_ports
from schemas import subjects
from schemas.base import utcnow
from schemas.headers import envelope
from schemas.inventory import InventorySnapshot, LinkState

REGION = "r1"


async def hub_received(js: nats.js.JetStreamContext) -> int:
    return (await js.stream_info(f"KV_{subjects.INVENTORY_BUCKET}")).state.last_seq


async def full_path(fleet: DevFleet, edges: int, snapshots: int) -> tuple[float, int]:
    """Snapshots per second arriving at the hub; and the encoded size of one."""
    host = host_facts(Path("/"))
    regional = await connect(fleet.plan.site(REGION).server.client_url, name="ingest-bench", source="/bench")
    hub = await nats.connect(fleet.plan.site("hub").server.client_url)
    hub_js = hub.jetstream()
    try:
        before = await hub_received(hub_js)
        size = 0

        async def edge(number: int) -> None:
            nonlocal size
            name = f"{REGION}-i{number}"
            bus = regional.sharing(f"/fleet/edge/{name}")
            for seq in range(1, snapshots + 1):
                snapshot = InventorySnapshot(
                    region=REGION,
                    edge=name,
                    seq=seq,
                    observed_at=utcnow(),
                    labels={"region": REGION, "env": "bench"},
                    host=host,
                    link=LinkState(upstream_connected=True, since=None),
                )
                await bus.js_publish(
                    subjects.thin_inventory(REGION, name), snapshot, message_id=f"{name}-inventory-{seq}"
                )
            size = len(envelope(snapshot, source="/bench")[0])

        began = time.monotonic()
        await asyncio.gather(*(edge(i) for i in range(edges)))
        published = time.monotonic() - began
        want = before + edges * snapshots
        while (got := await hub_received(hub_js)) < want:
            if time.monotonic() - began > 300:
                msg = f"the hub received {got - before} of {edges * snapshots} snapshots in 300 s"
                raise RuntimeError(msg)
            await asyncio.sleep(0.02)  # polling the hub's bucket for the last arrival
        took = time.monotonic() - began
        print(f"  full path: stored at the regional in {published:.2f}s, all at the hub after {took:.2f}s")
        return edges * snapshots / took, size
    finally:
        await regional.close()
        await hub.close()


async def raw_publish_async(url: str, body: bytes, count: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    try:
        await js.add_stream(StreamConfig(name="RAW_BENCH", subjects=["bench.raw.>"]))
        began = time.monotonic()
        for i in range(count):
            await js.publish_async(f"bench.raw.{i % 1000}", body)
        await js.publish_async_completed()
        took = time.monotonic() - began
        await js.delete_stream("RAW_BENCH")
        return count / took
    finally:
        await nc.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=1000, help="thin edges publishing at once")
    parser.add_argument("--snapshots", type=int, default=20, help="snapshots per edge")
    args = parser.parse_args()
    log.configure(level="warning")
    with tempfile.TemporaryDirectory() as tmp:
        ports = iter(free_ports(ports_needed(1, 0, mqtt=False)))
        plan = plan_fleet(Path(tmp), 1, 0, ports)
        fleet = DevFleet(plan, progress=lambda _line: None)
        await fleet.start()
        try:
            ours, size = await full_path(fleet, args.edges, args.snapshots)
            hub_url = plan.site("hub").server.client_url
            raw = await raw_publish_async(hub_url, b"x" * size, args.edges * args.snapshots)
        finally:
            await fleet.stop()
    lines = [
        f"Inventory ingest, {args.edges} edges x {args.snapshots} snapshots ({size} bytes each):",
        "",
        *table(
            ["path", "snapshots/s", "vs raw"],
            [
                ["fleetbus: edge -> regional INVENTORY -> hub bucket", f"{ours:,.0f}", f"{ours / raw:.0%}"],
                ["raw nats-py publish_async into one stream", f"{raw:,.0f}", "100%"],
            ],
        ),
    ]
    append_results("Hub ingest", lines)


if __name__ == "__main__":
    asyncio.run(main())
