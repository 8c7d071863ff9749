"""Hub ingest: inventory snapshots per second through fleetbus's full path vs raw publish_async.

    .venv/bin/python benchmarks/ingest.py [--edges 20000] [--concurrency 1000]

Full path: a real hub and regional (servers and daemons); `--concurrency` publishers in this
process store one InventorySnapshot for each of `--edges` distinct thin edges (a new model per
message, as the edge's publisher builds it) with `Bus.js_publish` (CloudEvents envelope,
msgpack, awaiting the ack) into the regional's INVENTORY, which the servers source into the
hub's `inventory` bucket. One snapshot per edge, because INVENTORY keeps the latest per edge:
a newer one replaces an older one not yet forwarded, by design, so the hub would not receive
every message. The rate is snapshots / time until the hub's bucket has received the last one.

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

from benchmarks.common import append_results, connect_as, table
from edge.inventory import host_facts
from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.plan import FleetPlan, plan_fleet, ports_needed
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.nats.bus import connect
from fleetbus.runtime import log
from schemas import subjects
from schemas.base import utcnow
from schemas.headers import envelope
from schemas.inventory import InventorySnapshot, LinkState

REGION = "r1"


async def hub_received(js: nats.js.JetStreamContext) -> int:
    return (await js.stream_info(subjects.kv_stream(subjects.INVENTORY_BUCKET))).state.last_seq


async def full_path(fleet: DevFleet, edges: int, concurrency: int) -> tuple[float, int]:
    """Snapshots per second arriving at the hub; and the encoded size of one."""
    host = host_facts(Path("/"))
    regional = await connect(
        fleet.plan.site(REGION).server.client_url,
        name="ingest-bench",
        source="/bench",
        creds=fleet.plan.site(REGION).creds_path,
        site=REGION,
    )
    hub = await connect_as(fleet.plan, "hub")
    hub_js = hub.jetstream()
    try:
        before = await hub_received(hub_js)
        size = 0

        async def publisher(first: int) -> None:
            nonlocal size
            for number in range(first, edges, concurrency):
                name = f"{REGION}-i{number}"
                snapshot = InventorySnapshot(
                    region=REGION,
                    edge=name,
                    seq=1,
                    observed_at=utcnow(),
                    labels={"region": REGION, "env": "bench"},
                    host=host,
                    link=LinkState(upstream_connected=True, since=None),
                )
                bus = regional.sharing(f"/fleet/edge/{name}")
                await bus.js_publish(
                    subjects.outbox_inventory(REGION, name), snapshot, message_id=f"{name}-inventory-1"
                )
            size = len(envelope(snapshot, source="/bench")[0])

        began = time.monotonic()
        await asyncio.gather(*(publisher(i) for i in range(concurrency)))
        published = time.monotonic() - began
        want = before + edges
        while (got := await hub_received(hub_js)) < want:
            if time.monotonic() - began > 300:
                msg = f"the hub received {got - before} of {edges} snapshots in 300 s"
                raise RuntimeError(msg)
            await asyncio.sleep(0.02)  # polling the hub's bucket for the last arrival
        took = time.monotonic() - began
        print(f"  full path: stored at the regional in {published:.2f}s, all at the hub after {took:.2f}s")
        return edges / took, size
    finally:
        await regional.close()
        await hub.close()


async def raw_publish_async(plan: FleetPlan, body: bytes, count: int) -> float:
    nc = await connect_as(plan, "hub")
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
    parser.add_argument("--edges", type=int, default=20000, help="thin edges, one snapshot each")
    parser.add_argument("--concurrency", type=int, default=1000, help="publishers at once")
    args = parser.parse_args()
    log.configure(level="warning")
    with tempfile.TemporaryDirectory() as tmp:
        ports = iter(free_ports(ports_needed(1, 0, mqtt=False)))
        plan = plan_fleet(Path(tmp), 1, 0, ports)
        fleet = DevFleet(plan, progress=lambda _line: None)
        await fleet.start()
        try:
            ours, size = await full_path(fleet, args.edges, args.concurrency)
            raw = await raw_publish_async(fleet.plan, b"x" * size, args.edges)
        finally:
            await fleet.stop()
    lines = [
        f"Inventory ingest, {args.edges} snapshots ({size} bytes each), {args.concurrency} publishers:",
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
