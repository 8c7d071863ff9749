"""Footprint of one edge: RSS and idle CPU of its daemon and of its nats-server.

    .venv/bin/python benchmarks/footprint.py [--edges 3] [--settle 20] [--window 30]

A real dev fleet (hub, one regional, `--edges` edges; servers and daemons as processes,
default intervals: heartbeat 5 s, inventory scan 5 s). Once every edge reports to the hub
and `--settle` seconds have passed, each edge daemon's and edge server's RSS is read and its
CPU measured over `--window` seconds; the table shows the mean and the worst edge. Baseline in
the same run: a bare nats-server with JetStream and nothing in it. Not a test: numbers,
appended to benchmarks/RESULTS.md.
"""

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CpuWindow, admin_creds, append_results, rss_bytes, table
from fleetbus.devfleet.natsconf import ServerSpec
from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.plan import plan_fleet, ports_needed
from fleetbus.devfleet.servers import NatsServer
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.runtime import log
from fleetbus.sdk.client import FleetClient
from schemas.heartbeat import Tier
from tests.helpers import eventually

MB = 2**20


async def measure(
    args: argparse.Namespace, *, insecure: bool
) -> tuple[dict[str, int], dict[str, float], list[str]]:
    """RSS and CPU per process of one fleet (and the bare server beside it), and its edges."""
    with tempfile.TemporaryDirectory() as tmp:
        ports = iter(free_ports(ports_needed(1, args.edges, mqtt=False) + 2))
        plan = plan_fleet(Path(tmp), 1, args.edges, ports)
        bare = NatsServer(
            ServerSpec(
                name="bare",
                tier=Tier.HUB,  # no upstream, nothing in it: a bare server with JetStream
                host="127.0.0.1",
                store_dir=Path(tmp) / "bare",
                client_port=next(ports),
                http_port=next(ports),
            ),
            Path(tmp) / "bare",
        )
        fleet = DevFleet(plan, progress=lambda _line: None, insecure=insecure)
        await fleet.start()
        await bare.start()
        try:
            edges = [s.name for s in plan.by_tier(Tier.EDGE)]
            async with await FleetClient.connect(
                plan.site("hub").server.client_url, creds=None if insecure else admin_creds(plan)
            ) as client:

                async def all_reported() -> bool:
                    return {r.edge for r in await client.reports()} >= set(edges)

                await eventually(all_reported, timeout=120, what="every edge reporting")
            await asyncio.sleep(args.settle)  # let start-up work finish: idle is what is measured
            pids = {f"daemon {e}": fleet.daemons[e].pid for e in edges}
            pids |= {f"server {e}": fleet.servers[e].pid for e in edges}
            pids["bare"] = bare.pid
            known = {name: pid for name, pid in pids.items() if pid}
            cpu = CpuWindow(known)
            cpu.start()
            await asyncio.sleep(args.window)  # the measurement window itself
            used = cpu.stop()
            rss = {name: rss_bytes(pid) for name, pid in known.items()}
        finally:
            await bare.stop()
            await fleet.stop()
    return rss, used, edges


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=3, help="edges in the fleet")
    parser.add_argument("--settle", type=float, default=20.0, help="s after every edge reports")
    parser.add_argument("--window", type=float, default=30.0, help="CPU window, s")
    parser.add_argument(
        "--security",
        choices=("on", "both"),
        default="on",
        help="both: also a fleet --insecure (no identities, permissions or TLS), for the cost ratio",
    )
    args = parser.parse_args()
    log.configure(level="warning")
    rows = []
    means: dict[tuple[str, bool], tuple[float, float]] = {}
    for insecure in (False, True) if args.security == "both" else (False,):
        rss, used, edges = await measure(args, insecure=insecure)
        suffix = " --insecure" if insecure else ""
        for role, label in (("daemon", "edge daemon"), ("server", "edge nats-server")):
            names = [n for n in rss if n.startswith(role)]
            mean_rss = sum(rss[n] for n in names) / len(names) / MB
            mean_cpu = sum(used[n] for n in names) / len(names)
            means[(role, insecure)] = (mean_rss, mean_cpu)
            rows.append(
                [
                    label + suffix,
                    f"{mean_rss:.1f}",
                    f"{max(rss[n] for n in names) / MB:.1f}",
                    f"{mean_cpu:.2f}",
                    f"{max(used[n] for n in names):.2f}",
                ]
            )
        rows.append(
            [
                f"bare nats-server (JetStream, empty){suffix and ' beside it'}",
                f"{rss['bare'] / MB:.1f}",
                "",
                f"{used['bare']:.2f}",
                "",
            ]
        )
    title = f"Edge footprint, {len(edges)} idle edges (5 s beats and scans), CPU over {args.window:g} s:"
    lines = [title, "", *table(["process", "RSS MB", "worst", "CPU % of a core", "worst"], rows)]
    if args.security == "both":
        ratio_rows = [
            [role, f"{means[(role, False)][0] / means[(role, True)][0]:.2f}"] for role in ("daemon", "server")
        ]
        lines += ["", "Secure / --insecure, same run:", "", *table(["edge", "RSS ratio"], ratio_rows)]
    append_results("Edge footprint", lines)


if __name__ == "__main__":
    asyncio.run(main())
