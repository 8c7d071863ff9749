"""Heal-to-converge after link cuts, with heal acceleration and without (nats-server alone).

    .venv/bin/python benchmarks/heal.py [--edge-cuts 5,60,300] [--region-cuts 5,60]
    .venv/bin/python benchmarks/heal.py --fault blackhole --edge-cuts 30,300 --region-cuts 30

Two real dev fleets run side by side (1 hub, 2 regions; servers and daemons as processes, a TCP
proxy on every leaf link, heartbeats every 5 s): one with heal acceleration (the default), one
with `heal_acceleration = false` at every tier, which leaves catch-up to nats-server's own source
retry back-off: the baseline, measured in the same run. `--modes on,insecure` instead runs the
accelerated fleet with and without identities, permissions and TLS (the cost of them).

In each fleet, edge i of r1 has its uplink cut again and again for `--edge-cuts`[i] seconds, and
r2's uplink (the whole region) is cut in turn for each of `--region-cuts` seconds, until the
longest edge cut is done. During every cut the hub changes an override of each edge behind the
link, and an application at each such edge stores an event. Heal-to-converge is the time from
the heal until the hub shows, for every edge behind the link, an ApplyResult with the hash the
hub computes for it and that edge's event. Prints per (tier, cut length): samples, p50, p99
(nearest rank: with fewer than 100 samples that is the maximum) and the ratio. Not a test.

`--fault blackhole` makes the link fail silently instead (`LinkProxy.blackhole`: no reset,
sockets stay open, nothing passes), as real WAN failures do; each line then also says how long
the hub took to show the loss (the edges behind the link no longer `online`).
"""

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import admin_creds, append_results, nearest_rank
from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.plan import plan_fleet, ports_needed
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.runtime import log
from fleetbus.sdk.client import FleetClient
from schemas.heartbeat import Tier
from schemas.override import OverrideScope
from schemas.presence import PresenceState
from tests.fleetprobe import applied_hash, emit_event, hub_has_event
from tests.helpers import eventually

POLL = 0.05  # how often the hub's view is read while waiting for convergence


@dataclass(frozen=True)
class Sample:
    mode: str
    tier: str
    cut_s: float
    converge_s: float | None  # None: not converged within --timeout
    noticed_s: float | None = None  # until the hub showed the loss; None: not within the fault


class Run:
    def __init__(self, mode: str, fleet: DevFleet, client: FleetClient, timeout: float, fault: str) -> None:
        self.mode, self.fleet, self.client, self.timeout = mode, fleet, client, timeout
        self.fault = fault
        self.samples: list[Sample] = []

    async def notice(self, edges: list[tuple[str, str]], began: float) -> float:
        """Seconds from `began` until the hub shows none of `edges` online."""
        names = {edge for _, edge in edges}
        while True:
            shown = {p.edge: p.state for p in await self.client.presence()}
            if all(shown.get(edge) != PresenceState.ONLINE for edge in names):
                return time.monotonic() - began
            await asyncio.sleep(POLL)  # polling the hub's view

    async def cycle(self, tier: str, link_site: str, edges: list[tuple[str, str]], cut_s: float) -> None:
        link = self.fleet.link(link_site)
        names = {edge for _, edge in edges}

        async def online() -> bool:  # after a heal, presence returns with the next heartbeat
            shown = {p.edge: p.state for p in await self.client.presence()}
            return all(shown.get(edge) == PresenceState.ONLINE for edge in names)

        await eventually(online, timeout=self.timeout, what=f"{sorted(names)} online before the fault")
        link.cut() if self.fault == "cut" else link.blackhole()
        began = time.monotonic()
        noticing = asyncio.create_task(self.notice(edges, began))
        marker = uuid.uuid4().hex[:12]
        expected, events = {}, {}
        for region, edge in edges:  # changes that can only arrive once the link is back
            await self.client.overrides.set(
                OverrideScope.EDGE, edge, {"config": {"heal": marker}}, reason="benchmark"
            )
            expected[edge] = (await self.client.explain(edge))[0].hash
            url = self.fleet.plan.site(edge).server.client_url
            creds = None if self.fleet.insecure else self.fleet.plan.site(edge).creds_path
            event_id = await emit_event(url, region, edge, creds=creds, data={"heal": marker})
            if event_id is None:
                msg = f"{edge}'s own stream did not acknowledge an event"
                raise RuntimeError(msg)
            events[edge] = event_id
        await asyncio.sleep(max(0.0, cut_s - (time.monotonic() - began)))  # the cut itself
        link.heal()
        healed = time.monotonic()
        noticed = noticing.result() if noticing.done() else None
        noticing.cancel()
        hub_js = self.client._js
        pending = set(expected)
        while pending and time.monotonic() - healed < self.timeout:
            for region, edge in edges:
                if (
                    edge in pending
                    and await applied_hash(self.client, edge) == expected[edge]
                    and await hub_has_event(hub_js, region, edge, events[edge])
                ):
                    pending.discard(edge)
            if pending:
                await asyncio.sleep(POLL)  # polling the hub's view
        took = None if pending else time.monotonic() - healed
        self.samples.append(Sample(self.mode, tier, cut_s, took, noticed))
        shown = f"{took:.2f}s" if took is not None else f"> {self.timeout:g}s"
        seen = f"{noticed:.1f}s" if noticed is not None else "not during the fault"
        print(
            f"  [{self.mode:>3}] {tier:<8} {link_site:<6} {self.fault} {cut_s:>5g}s  loss shown after "
            f"{seen}, converged {shown} after the heal",
            flush=True,
        )

    async def cycles(
        self, tier: str, link_site: str, edges: list[tuple[str, str]], cuts: list[float], until: float
    ) -> None:
        """Cut `link_site` for each length in `cuts` in turn, over and over, while a cut can
        still end before `until`; a pause between cuts lets the link settle."""
        index = 0
        while time.monotonic() + cuts[index % len(cuts)] <= until:
            await self.cycle(tier, link_site, edges, cuts[index % len(cuts)])
            index += 1
            await asyncio.sleep(2.0)  # settle between cuts


async def run_mode(mode: str, args: argparse.Namespace) -> list[Sample]:
    accelerate = mode != "off"
    insecure = mode == "insecure"  # accelerated, without identities, permissions or TLS
    edges_r1 = len(args.edge_cuts)
    settings: dict[Tier, dict[str, object]] = {
        tier: {"heal_acceleration": accelerate} for tier in (Tier.HUB, Tier.REGIONAL, Tier.EDGE)
    }
    with tempfile.TemporaryDirectory() as tmp:
        ports = iter(free_ports(ports_needed(2, edges_r1, mqtt=False, links=True)))
        plan = plan_fleet(Path(tmp), 2, edges_r1, ports, links=True)
        fleet = DevFleet(
            plan,
            heartbeat_interval=args.heartbeat,
            progress=lambda _l: None,
            settings=settings,
            insecure=insecure,
        )
        await fleet.start()
        try:
            async with await FleetClient.connect(
                plan.site("hub").server.client_url, creds=None if insecure else admin_creds(plan)
            ) as client:
                run = Run(mode, fleet, client, args.timeout, args.fault)
                edges = {r: [(r, f"{r}-e{i}") for i in range(1, edges_r1 + 1)] for r in ("r1", "r2")}
                everyone = [e for pairs in edges.values() for _, e in pairs]

                async def all_reported() -> bool:
                    return all([await applied_hash(client, e) for e in everyone])

                await eventually(all_reported, timeout=120, what="every edge reporting")
                print(f"  [{mode:>3}] fleet up: {len(everyone)} edges reporting", flush=True)
                until = time.monotonic() + max(args.edge_cuts) + 1
                await asyncio.gather(
                    *(
                        run.cycles("edge", edge, [(region, edge)], [cut], until)
                        for (region, edge), cut in zip(edges["r1"], args.edge_cuts, strict=True)
                    ),
                    run.cycles("region", "r2", edges["r2"], args.region_cuts, until),
                )
                return run.samples
        finally:
            await fleet.stop()


def _ratio(p99s: dict[str, float], a: str, b: str) -> str:
    return f"x{p99s[a] / p99s[b]:.2f}" if {a, b} <= p99s.keys() and p99s[b] else "-"


MODES = {"on": "with acceleration", "off": "nats-server alone", "insecure": "accelerated, --insecure"}


def report(samples: list[Sample], timeout: float, fault: str) -> list[str]:
    groups: dict[tuple[str, float], dict[str, list[float | None]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        groups[(s.tier, s.cut_s)][s.mode].append(s.converge_s)
    head = f"{'n':>3} {'p50':>7} {'p99':>7} {'max':>6}"
    present = [m for m in MODES if any(m in modes for modes in groups.values())]
    lines = [
        f"Heal-to-converge after a {fault} (s from heal until the hub shows every edge converged):",
        "",
        "```",
        f"{'tier':<7} {fault[:6]:>6} | "
        + " | ".join(f"{MODES[m]:^26}" for m in present)
        + " | p99 off/on | p99 on/insecure",
        f"{'':<7} {'':>6} | " + " | ".join(head for _ in present) + " |",
    ]
    for (tier, cut), modes in sorted(groups.items()):
        cells, p99s = [], {}
        for mode in present:
            values = modes.get(mode, [])
            done = [v for v in values if v is not None]
            missed = len(values) - len(done)
            if not done:
                cells.append(f"{len(values):>3} {'-':>7} {'-':>7} {'-':>6}")
                continue
            worst = math.inf if missed else nearest_rank(done, 0.99)
            p99s[mode] = worst
            shown = f">{timeout:g}" if missed else f"{worst:.2f}"
            cells.append(f"{len(values):>3} {statistics.median(done):>7.2f} {shown:>7} {max(done):>6.2f}")
        ratios = " | ".join(_ratio(p99s, a, b) for a, b in (("off", "on"), ("on", "insecure")))
        lines.append(f"{tier:<7} {cut:>5g}s | " + " | ".join(cells) + f" | {ratios}")
    noticed = sorted((s.tier, s.cut_s, s.noticed_s) for s in samples if s.noticed_s is not None)
    if noticed:
        lines += ["", "Loss shown at the hub (s from the fault until no edge behind it was online):"]
    for (tier, cut), group in groupby(noticed, key=lambda x: (x[0], x[1])):
        seen = [n for _, _, n in group if n is not None]
        median, worst = statistics.median(seen), max(seen)
        lines.append(f"{tier:<7} {cut:>5g}s | n {len(seen)}  median {median:.1f}  max {worst:.1f}")
    return [*lines, "```"]


def seconds_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge-cuts", type=seconds_list, default=[5, 60, 300], help="s, one edge each")
    parser.add_argument("--region-cuts", type=seconds_list, default=[5, 60], help="s, in turn")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat interval, s (every tier)")
    parser.add_argument("--timeout", type=float, default=200.0, help="give up on one convergence after, s")
    parser.add_argument(
        "--modes",
        default="on,off",
        help="on (accelerated), off (nats-server alone), insecure (accelerated, no identities: their cost)",
    )
    parser.add_argument("--fault", choices=("cut", "blackhole"), default="cut", help="how the link fails")
    args = parser.parse_args()
    log.configure(level="warning")
    modes = [m for m in args.modes.split(",") if m]
    print(
        f"edge cuts {args.edge_cuts} s (one r1 edge each), region cuts {args.region_cuts} s (r2), "
        f"heartbeats every {args.heartbeat:g}s; modes {modes}; fault {args.fault}; "
        f"about {max(args.edge_cuts) / 60:.0f} min"
    )
    results = await asyncio.gather(*(run_mode(m, args) for m in modes))
    samples = [s for run in results for s in run]
    append_results(
        "Heal" if args.fault == "cut" else "Heal after blackholes", report(samples, args.timeout, args.fault)
    )


if __name__ == "__main__":
    asyncio.run(main())
