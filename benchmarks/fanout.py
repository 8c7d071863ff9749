"""Profile fan-out: from `profile apply` at the hub until the hub holds every edge's ApplyResult.

    .venv/bin/python benchmarks/fanout.py [--hollow 100,1000,5000] [--real 13] [--rounds 3]

For each N in `--hollow`, a fresh fleet (hub and 4 regionals as real servers and daemons, N
hollow edges spread over them, `fleetbus sim`'s processes) starts and fills: every edge has
reported an ApplyResult to the hub. Then, `--rounds` times, a profile that selects every edge
is changed at the hub, and the hub's `applied` bucket is watched until each edge's ApplyResult
carries the new revision; per edge, the time from the apply call to that arrival is a sample.
The same with `--real` real edges per region (each its own nats-server and edge daemon, behind
two leaf hops). Prints p50/p99/max per fleet, and per edge when its regional's assigner had
handed it the new revision (stored in the regional's `assigned` bucket): a real edge's replica
sources it from there, and hollow edges read their keys there, so it is on every edge's path.

While the fleet of `--idle-at` hollow edges is otherwise idle, the CPU of the hub's and the
regionals' servers and daemons is measured over `--idle-window` seconds, once per heartbeat
interval in `--beats`: heartbeats stop at the regionals, so the hub's CPU should not move.
Not a test: numbers, appended to benchmarks/RESULTS.md.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from benchmarks.common import CpuWindow, admin_creds, append_results, connect_as, summary, table
from fleetbus.devfleet.hollow import plan_hollow
from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.plan import plan_fleet, ports_needed
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.runtime import log
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.codec import decode_body
from schemas.event import Event
from schemas.headers import REVISION
from schemas.heartbeat import Tier
from schemas.profile import Profile, ProfileSpec
from tests.helpers import eventually

REGIONS = 4
PROFILE = "fanout-bench"


async def all_reported(client: FleetClient, edges: int) -> bool:
    """Whether the hub's `applied` bucket holds an ApplyResult of every edge."""
    info = await client._js.stream_info(subjects.kv_stream(subjects.APPLIED_BUCKET))
    return info.state.messages >= edges


async def watch_applied(client: FleetClient) -> JetStreamContext.PushSubscription:
    """A subscription to the ApplyResults the hub's `applied` bucket receives from now on."""
    return await client._js.subscribe(
        subjects.kv_subject(subjects.APPLIED_BUCKET),
        stream=subjects.kv_stream(subjects.APPLIED_BUCKET),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
    )


async def handed(fleet: DevFleet, began: float, revision: int | None) -> list[float]:
    """Per edge, seconds from `began` (wall clock) until its regional stored its copy of the
    profile's `revision` in `assigned` (the newest record of each edge's key)."""
    found: list[float] = []
    for site in fleet.plan.by_tier(Tier.REGIONAL):
        nc = await connect_as(fleet.plan, site.name)
        try:
            js = nc.jetstream(timeout=10)
            key = subjects.kv_subject(subjects.ASSIGNED_BUCKET, f"*.{subjects.ASSIGNED_PROFILE}.{PROFILE}")
            info = await js.stream_info(subjects.kv_stream(subjects.ASSIGNED_BUCKET), subjects_filter=key)
            if not info.state.subjects:
                continue
            sub = await js.subscribe(
                key, ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
            )
            for _ in range(len(info.state.subjects)):
                msg = await sub.next_msg(timeout=10)
                if (msg.headers or {}).get(REVISION) == str(revision):
                    found.append(msg.metadata.timestamp.timestamp() - began)
            await sub.unsubscribe()
        finally:
            await nc.close()
    return found


async def fan_out(
    client: FleetClient, fleet: DevFleet, edges: int, round_no: int, timeout: float
) -> tuple[list[float], list[float]]:
    """Apply a new revision; per edge, seconds until the hub holds its ApplyResult for it,
    and seconds until its regional handed it the revision."""
    sub = await watch_applied(client)
    try:
        began, began_wall = time.monotonic(), time.time()
        plan = await client.profiles.apply(
            Profile(name=PROFILE, spec=ProfileSpec(config={"round": round_no}))
        )
        revision = plan.new.revision if plan.new else None
        arrived: dict[str, float] = {}
        while len(arrived) < edges:
            left = timeout - (time.monotonic() - began)
            if left <= 0:
                break
            try:
                msg = await sub.next_msg(timeout=left)
            except TimeoutError:
                break
            event = decode_body(Event, msg.data, subject=msg.subject)
            result = event.apply_result
            if result and result.profile_revisions.get(PROFILE) == revision and event.edge not in arrived:
                arrived[event.edge] = time.monotonic() - began
        if len(arrived) < edges:
            print(f"    round {round_no}: only {len(arrived)}/{edges} within {timeout:g}s", flush=True)
        given = await handed(fleet, began_wall, revision)
        lost = [float("inf")] * (edges - len(arrived)), [float("inf")] * (edges - len(given))
        return list(arrived.values()) + lost[0], given + lost[1]
    finally:
        await sub.unsubscribe()


def tier_pids(fleet: DevFleet) -> dict[str, int]:
    """PIDs of the hub's and every regional's server and daemon, and the hollow processes."""
    pids: dict[str, list[int]] = {}
    for site in fleet.plan.sites:
        if site.tier is Tier.EDGE:
            continue
        for what, proc in (("server", fleet.servers[site.name]), ("daemon", fleet.daemons[site.name])):
            if proc.pid:
                pids.setdefault(f"{site.tier.value} {what}", []).append(proc.pid)
    for proc in fleet.hollow.values():
        if proc.pid:
            pids.setdefault("hollow edges", []).append(proc.pid)
    return {f"{name} #{i}": pid for name, group in pids.items() for i, pid in enumerate(group, 1)}


async def idle_cpu(fleet: DevFleet, window: float) -> dict[str, float]:
    """% of one core per role (regionals and hollow processes: their sum) over `window`."""
    pids = tier_pids(fleet)
    cpu = CpuWindow(pids)
    cpu.start()
    await asyncio.sleep(window)  # the measurement window itself
    per_process = cpu.stop()
    roles: dict[str, float] = {}
    for name, value in per_process.items():
        role = name.split(" #")[0]
        roles[role] = roles.get(role, 0.0) + value
    return roles


async def run_fleet(
    label: str,
    edges_per_region: int,
    hollow: int,
    args: argparse.Namespace,
    *,
    beat: float,
    rounds: int,
    insecure: bool = False,
    verify: bool = True,
) -> tuple[list[float], list[float], float, dict[str, float] | None]:
    with tempfile.TemporaryDirectory() as tmp:
        ports = iter(free_ports(ports_needed(REGIONS, edges_per_region, mqtt=False) + REGIONS))
        plan = plan_fleet(Path(tmp), REGIONS, edges_per_region, ports)
        fleet = DevFleet(
            plan,
            heartbeat_interval=beat,
            progress=lambda _line: None,
            hollow=plan_hollow(plan, hollow, ports) if hollow else None,
            hollow_settings={"log_level": "warning", "start_rate": args.start_rate}
            | ({} if verify else {"verify_desired_state": False}),
            settings={
                Tier.EDGE: {"log_level": "warning"} | ({} if verify else {"verify_desired_state": False})
            },
            insecure=insecure,
        )
        edges = hollow or REGIONS * edges_per_region
        began = time.monotonic()
        await fleet.start()
        try:
            async with await FleetClient.connect(
                plan.site("hub").server.client_url, creds=None if insecure else admin_creds(plan)
            ) as client:
                await eventually(
                    lambda: all_reported(client, edges), timeout=args.timeout, what=f"{edges} edges reporting"
                )
                up = time.monotonic() - began
                print(f"  {label}: {edges} edges reporting {up:.0f}s after start", flush=True)
                samples: list[float] = []
                given: list[float] = []
                for round_no in range(1, rounds + 1):
                    took, handed_at = await fan_out(client, fleet, edges, round_no, args.timeout)
                    samples += took
                    given += handed_at
                    p50, p99, top = summary(took)
                    h50, h99, _ = summary(handed_at)
                    print(
                        f"    round {round_no}: p50 {p50:.2f}s p99 {p99:.2f}s max {top:.2f}s"
                        f" (handed by the regional: p50 {h50:.2f}s p99 {h99:.2f}s)",
                        flush=True,
                    )
                cpu = await idle_cpu(fleet, args.idle_window) if hollow and hollow == args.idle_at else None
                return samples, given, up, cpu
        finally:
            await fleet.stop()


def shown(v: float) -> str:
    return f"{v:.2f}" if v != float("inf") else "lost"


def handed_p99(given: list[float]) -> str:
    """p99 of the regional handing each edge the new revision (`-` before there was any)."""
    return shown(summary(given)[1]) if given else "-"


async def variant(
    rows: list[list[str]],
    label: str,
    per_region: int,
    hollow: int,
    args: argparse.Namespace,
    beat: float,
    **kind: bool,
) -> tuple[float, float]:
    """A fleet measured only to compare with (a row, no fill time): its p50 and p99."""
    samples, given, _, _ = await run_fleet(
        label, per_region, hollow, args, beat=beat, rounds=args.rounds, **kind
    )
    p50, p99, top = summary(samples)
    rows.append([label, str(len(samples)), shown(p50), shown(p99), shown(top), handed_p99(given), ""])
    return p50, p99


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hollow", type=numbers, default=[100, 1000, 5000], help="hollow edges per fleet")
    parser.add_argument("--real", type=int, default=13, help="real edges per region (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="profile changes per fleet")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on one fan-out after, s")
    parser.add_argument("--start-rate", type=float, default=250.0, help="hollow edges started/s per region")
    parser.add_argument("--idle-at", type=int, default=1000, help="hollow fleet whose idle CPU is measured")
    parser.add_argument("--idle-window", type=float, default=20.0, help="idle CPU window, s")
    parser.add_argument("--beats", default="5,1", help="heartbeat intervals (s) for the idle CPU runs")
    parser.add_argument(
        "--security",
        choices=("on", "both"),
        default="on",
        help="both: each fleet also --insecure (no identities, no permissions), for the cost ratio",
    )
    parser.add_argument(
        "--signatures",
        choices=("on", "both"),
        default="on",
        help="both: each fleet also with edges that verify no signature, for the cost of verifying",
    )
    args = parser.parse_args()
    log.configure(level="warning")
    beats = [float(b) for b in args.beats.split(",") if b]
    rows: list[list[str]] = []
    ratios: list[list[str]] = []
    verify_ratios: list[list[str]] = []
    cpu_rows = []
    fleets = [(f"{n} hollow", 0, n) for n in args.hollow]
    if args.real:
        fleets.append((f"{REGIONS * args.real} real", args.real, 0))

    # Baselines measured in this run, each fleet without one layer: identities and
    # permissions (--insecure), or edges verifying signed desired state (unverified).
    baselines: list[tuple[str, dict[str, bool], list[list[str]]]] = []
    if args.security == "both":
        baselines.append(("--insecure", {"insecure": True}, ratios))
    if args.signatures == "both":
        baselines.append(("unverified", {"verify": False}, verify_ratios))
    for label, per_region, hollow in fleets:
        measured = [
            (await variant(rows, f"{label} {suffix}", per_region, hollow, args, beats[0], **kind), into)
            for suffix, kind, into in baselines
        ]
        samples, given, filled, cpu = await run_fleet(
            label, per_region, hollow, args, beat=beats[0], rounds=args.rounds
        )
        p50, p99, top = summary(samples)
        rows.append(
            [label, str(len(samples)), shown(p50), shown(p99), shown(top), handed_p99(given), f"{filled:.1f}"]
        )
        for (base50, base99), into in measured:
            into.append([label, f"{p50 / base50:.2f}", f"{p99 / base99:.2f}"])
        if cpu is not None:
            cpu_rows.append((beats[0], cpu))
            for beat in beats[1:]:
                _, _, _, more = await run_fleet(label, 0, hollow, args, beat=beat, rounds=0)
                if more is not None:
                    cpu_rows.append((beat, more))
    lines = [f"Profile fan-out over {REGIONS} regionals, {args.rounds} profile changes per fleet:", ""]
    lines += table(
        ["edges", "samples", "p50 s", "p99 s", "max s", "handed p99 s", "all reporting, s after start"], rows
    )
    for title, found in (
        ("Cost of identities and permissions (secure / --insecure, same run):", ratios),
        ("Cost of verifying signed desired state (verifying / unverified edges, same run):", verify_ratios),
    ):
        if found:
            lines += ["", title, "", *table(["edges", "p50 ratio", "p99 ratio"], found)]
    if cpu_rows:
        roles = list(cpu_rows[0][1])
        lines += ["", f"Idle CPU (% of one core, summed per role) with {args.idle_at} hollow edges:", ""]
        lines += table(
            ["edge heartbeat", *roles],
            [[f"{beat:g} s", *(f"{cpu[r]:.1f}" for r in roles)] for beat, cpu in cpu_rows],
        )
    append_results("Profile fan-out", lines)


if __name__ == "__main__":
    asyncio.run(main())
