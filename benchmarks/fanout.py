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

Per round, and per fleet over its rounds, a table of the stages on the way, each in seconds
from the apply call (`STAGES`): the servers' own stored times (stream metadata; every process
shares this machine's clock), read after the round so that reading them costs the fan-out
nothing, and the time the edge put in its ApplyResult (`observed_at`). Beside each stage, the
per-edge increment from the stage before it: the dominant stage is the one that adds most.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

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
from schemas.headers import NATS_MSG_ID, REVISION
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


# The stages of a fan-out, in the order a profile's revision passes them; what each measures
# (seconds from the apply call): the stored time of the record (stream metadata) unless said.
STAGES = (
    "hub store",  # the revision in the hub's KV_profiles (one per round)
    "regional replica",  # in each regional's replica of KV_profiles (one per region)
    "handed",  # the edge's copy in its regional's `assigned` (the assigner wrote it)
    "edge applied",  # the edge's ApplyResult: its own `observed_at`, set after applying
    "regional EVENTS",  # that ApplyResult in its regional's EVENTS
    "hub EVENTS",  # in the hub's EVENTS (sourced from the regional's)
    "hub applied",  # in the hub's KV_applied (sourced from the hub's EVENTS)
    "watcher",  # received by this benchmark's watch of `applied` (monotonic clock)
)


@dataclass
class Stages:
    """One round's stages: per stage, seconds from the apply call, per edge (the first two:
    per round and per region, which every edge of the region shares)."""

    hub: float | None = None
    regions: dict[str, float] = field(default_factory=dict)  # region -> its replica stored it
    edges: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> edge -> s
    region_of: dict[str, str] = field(default_factory=dict)  # edge -> its region

    def at(self, stage: str) -> dict[str, float]:
        """Per edge, seconds until `stage` (the per-round and per-region ones spread over edges)."""
        if stage == STAGES[0]:
            return dict.fromkeys(self.region_of, self.hub) if self.hub is not None else {}
        if stage == STAGES[1]:
            return {e: self.regions[r] for e, r in self.region_of.items() if r in self.regions}
        return self.edges.get(stage, {})

    def samples(self, stage: str) -> list[float]:
        """The stage's own samples: one per round, per region, or per edge."""
        if stage == STAGES[0]:
            return [self.hub] if self.hub is not None else []
        if stage == STAGES[1]:
            return list(self.regions.values())
        return list(self.edges.get(stage, {}).values())

    def steps(self, stage: str) -> list[float]:
        """Per edge, what `stage` added to the stage before it (edges that reached both)."""
        index = STAGES.index(stage)
        if index == 0:
            return self.samples(stage)
        before, now = self.at(STAGES[index - 1]), self.at(stage)
        return [now[e] - before[e] for e in now if e in before]


def since(stamp: datetime | None, began: float) -> float | None:
    """Seconds from `began` (wall clock) to a server's stored time."""
    return None if stamp is None else stamp.timestamp() - began


async def last_per_subject(js: JetStreamContext, stream: str, subject: str) -> list[Msg]:
    """The last message of every subject under `subject` in `stream`, headers only (bodies
    are not sent): what the stages need is the stored time and the headers."""
    try:
        info = await js.stream_info(stream, subjects_filter=subject)
    except NotFoundError:
        return []
    count = len(info.state.subjects or {})
    if not count:
        return []
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        headers_only=True,
    )
    try:
        return [await sub.next_msg(timeout=10) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def stored_at(js: JetStreamContext, stream: str, subject: str, revision: int | None) -> float | None:
    """When `stream` stored the last message of `subject`, if it is the profile's `revision`
    (wall clock, s since the epoch)."""
    try:
        raw = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    if (raw.headers or {}).get(REVISION) != str(revision) or raw.time is None:
        return None
    return raw.time.timestamp()


def events_stored(
    found: Stages, stage: str, messages: Iterable[Msg], ids: dict[str, str], began: float
) -> None:
    """Each edge's ApplyResult of this round among `messages` (the last of each edge's
    subject), recognised by its event id (`Nats-Msg-Id`): when that stream stored it."""
    into = found.edges.setdefault(stage, {})
    for msg in messages:
        owner = subjects.edge_of(msg.subject)
        if owner is None:
            continue
        edge = owner[1]
        if ids.get(edge) is not None and (msg.headers or {}).get(NATS_MSG_ID) == ids[edge]:
            into[edge] = msg.metadata.timestamp.timestamp() - began


async def read_stages(
    client: FleetClient,
    fleet: DevFleet,
    found: Stages,
    ids: dict[str, str],
    began: float,
    revision: int | None,
) -> None:
    """Fill in, after the round, the stages the servers stored (see `STAGES`); per edge, the
    ApplyResult that is this round's is the one with the event id the watcher saw."""
    profile = subjects.kv_subject(subjects.PROFILES_BUCKET, PROFILE)
    profiles = subjects.kv_stream(subjects.PROFILES_BUCKET)
    hub = await stored_at(client._js, profiles, profile, revision)
    found.hub = None if hub is None else hub - began
    given = found.edges.setdefault("handed", {})
    for site in fleet.plan.by_tier(Tier.REGIONAL):
        nc = await connect_as(fleet.plan, site.name)
        try:
            js = nc.jetstream(timeout=10)
            replica = await stored_at(js, profiles, profile, revision)
            if replica is not None:
                found.regions[site.name] = replica - began
            prefix = subjects.kv_subject(subjects.ASSIGNED_BUCKET, "")
            key = f"{prefix}*.{subjects.ASSIGNED_PROFILE}.{PROFILE}"
            for msg in await last_per_subject(js, subjects.kv_stream(subjects.ASSIGNED_BUCKET), key):
                if (msg.headers or {}).get(REVISION) == str(revision):
                    edge = msg.subject.removeprefix(prefix).split(".")[0]
                    given[edge] = msg.metadata.timestamp.timestamp() - began
                    found.region_of.setdefault(edge, site.name)
            results = await last_per_subject(js, subjects.EVENTS_STREAM, subjects.apply_results(site.name))
            events_stored(found, "regional EVENTS", results, ids, began)
        finally:
            await nc.close()
    results = await last_per_subject(client._js, subjects.EVENTS_STREAM, subjects.apply_results())
    events_stored(found, "hub EVENTS", results, ids, began)


@dataclass
class Round:
    """One fan-out: per edge, seconds until the hub's watcher received its ApplyResult and
    until its regional handed it the revision (`inf`: never), and the stages."""

    took: list[float]
    given: list[float]
    stages: Stages


async def fan_out(
    client: FleetClient, fleet: DevFleet, edges: int, round_no: int, timeout: float
) -> tuple[list[float], list[float]]:
    """Apply a new revision; per edge, seconds until the hub holds its ApplyResult for it,
    and seconds until its regional handed it the revision."""
    done = await fan_out_stages(client, fleet, edges, round_no, timeout)
    return done.took, done.given


async def fan_out_stages(
    client: FleetClient, fleet: DevFleet, edges: int, round_no: int, timeout: float
) -> Round:
    """`fan_out`, and the stages on the way (read after the round)."""
    sub = await watch_applied(client)
    try:
        began, began_wall = time.monotonic(), time.time()
        plan = await client.profiles.apply(
            Profile(name=PROFILE, spec=ProfileSpec(config={"round": round_no}))
        )
        revision = plan.new.revision if plan.new else None
        arrived: dict[str, float] = {}
        found = Stages()
        ids: dict[str, str] = {}
        observed = found.edges.setdefault("edge applied", {})
        applied = found.edges.setdefault("hub applied", {})
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
                ids[event.edge] = event.id
                found.region_of[event.edge] = event.region
                observed[event.edge] = event.observed_at.timestamp() - began_wall
                applied[event.edge] = msg.metadata.timestamp.timestamp() - began_wall
        if len(arrived) < edges:
            print(f"    round {round_no}: only {len(arrived)}/{edges} within {timeout:g}s", flush=True)
        found.edges["watcher"] = dict(arrived)
        await read_stages(client, fleet, found, ids, began_wall, revision)
        given = list(found.edges["handed"].values())
        lost = [float("inf")] * (edges - len(arrived)), [float("inf")] * (edges - len(given))
        return Round(list(arrived.values()) + lost[0], given + lost[1], found)
    finally:
        await sub.unsubscribe()


def stage_table(rounds: list[Stages]) -> list[str]:
    """Per stage over `rounds`: its samples' p50/p99/max, and the p50/p99/max of what it
    added per edge to the stage before it."""
    rows: list[list[str]] = []
    for stage in STAGES:
        own = [v for r in rounds for v in r.samples(stage)]
        steps = [v for r in rounds for v in r.steps(stage)]
        at = [shown(v) for v in summary(own)] if own else ["-"] * 3
        step = [shown(v) for v in summary(steps)] if steps else ["-"] * 3
        rows.append([stage, str(len(own)), *at, *step])
    header = ["stage", "n", "p50 s", "p99 s", "max s", "+p50 s", "+p99 s", "+max s"]
    return table(header, rows)


def tier_pids(fleet: DevFleet) -> dict[str, int]:
    """PIDs of the hub's and every regional's server and daemon, and the hollow processes."""
    pids: dict[str, list[int]] = {}
    for site in fleet.plan.sites:
        if site.tier is Tier.EDGE:
            continue
        for what, proc in (("server", fleet.servers[site.key]), ("daemon", fleet.daemons[site.key])):
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


@dataclass
class Measured:
    """One fleet's fan-outs: per edge and round, seconds to the hub and to being handed the
    revision; seconds until all reported after the start; idle CPU per role; each round's stages."""

    samples: list[float]
    given: list[float]
    up: float
    cpu: dict[str, float] | None
    stages: list[Stages]


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
    hub_nodes: int = 1,
) -> "Measured":
    """Start a fleet, wait until every edge reported, and measure `rounds` fan-outs (and, for
    the `--idle-at` fleet, the idle CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        needed = ports_needed(REGIONS, edges_per_region, mqtt=False, hub_nodes=hub_nodes)
        ports = iter(free_ports(needed + REGIONS))
        plan = plan_fleet(Path(tmp), REGIONS, edges_per_region, ports, hub_nodes=hub_nodes)
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
                plan.hub_url, creds=None if insecure else admin_creds(plan)
            ) as client:
                await eventually(
                    lambda: all_reported(client, edges), timeout=args.timeout, what=f"{edges} edges reporting"
                )
                up = time.monotonic() - began
                print(f"  {label}: {edges} edges reporting {up:.0f}s after start", flush=True)
                samples: list[float] = []
                given: list[float] = []
                stages: list[Stages] = []
                for round_no in range(1, rounds + 1):
                    done = await fan_out_stages(client, fleet, edges, round_no, args.timeout)
                    samples += done.took
                    given += done.given
                    stages.append(done.stages)
                    p50, p99, top = summary(done.took)
                    h50, h99, _ = summary(done.given)
                    print(
                        f"    round {round_no}: p50 {p50:.2f}s p99 {p99:.2f}s max {top:.2f}s"
                        f" (handed by the regional: p50 {h50:.2f}s p99 {h99:.2f}s)",
                        flush=True,
                    )
                    print("\n".join(f"      {line}" for line in stage_table([done.stages])), flush=True)
                cpu = await idle_cpu(fleet, args.idle_window) if hollow and hollow == args.idle_at else None
                return Measured(samples, given, up, cpu, stages)
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
    measured = await run_fleet(label, per_region, hollow, args, beat=beat, rounds=args.rounds, **kind)
    samples, given = measured.samples, measured.given
    p50, p99, top = summary(samples)
    rows.append([label, str(len(samples)), shown(p50), shown(p99), shown(top), handed_p99(given), ""])
    return p50, p99


def fleet_stages(label: str, rounds: list[Stages]) -> list[str]:
    """The stage table of one fleet over its rounds, titled (none without rounds)."""
    if not rounds:
        return []
    title = (
        f"Stages of the fan-out, {label}, {len(rounds)} rounds (s from the apply call; +: what the"
        " stage added per edge to the one before it):"
    )
    return ["", title, "", *stage_table(rounds)]


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hollow", type=numbers, default=[100, 1000, 5000], help="hollow edges per fleet")
    parser.add_argument("--real", type=int, default=13, help="real edges per region (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="profile changes per fleet")
    parser.add_argument(
        "--hub-nodes",
        type=numbers,
        default=[1],
        help="hub nodes per fleet: 1,3 measures each fleet on a hub of one server and on a 3-node "
        "cluster with every bucket and stream at R3 (docs/clustering.md)",
    )
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
    return parser.parse_args()


async def main() -> None:
    args = parse_args()
    log.configure(level="warning")
    beats = [float(b) for b in args.beats.split(",") if b]
    rows: list[list[str]] = []
    ratios: list[list[str]] = []
    verify_ratios: list[list[str]] = []
    cpu_rows = []
    stage_tables: list[str] = []
    sizes = [(f"{n} hollow", 0, n) for n in args.hollow]
    if args.real:
        sizes.append((f"{REGIONS * args.real} real", args.real, 0))
    fleets = [
        (label if nodes == 1 else f"{label}, {nodes}-node hub", per_region, hollow, nodes)
        for label, per_region, hollow in sizes
        for nodes in args.hub_nodes
    ]

    # Baselines measured in this run, each fleet without one layer: identities and
    # permissions (--insecure), or edges verifying signed desired state (unverified).
    baselines: list[tuple[str, dict[str, bool], list[list[str]]]] = []
    if args.security == "both":
        baselines.append(("--insecure", {"insecure": True}, ratios))
    if args.signatures == "both":
        baselines.append(("unverified", {"verify": False}, verify_ratios))
    for label, per_region, hollow, nodes in fleets:
        measured = [
            (await variant(rows, f"{label} {suffix}", per_region, hollow, args, beats[0], **kind), into)
            for suffix, kind, into in baselines
        ]
        fleet = await run_fleet(
            label, per_region, hollow, args, beat=beats[0], rounds=args.rounds, hub_nodes=nodes
        )
        samples, given, filled, cpu = fleet.samples, fleet.given, fleet.up, fleet.cpu
        stage_tables += fleet_stages(label, fleet.stages)
        p50, p99, top = summary(samples)
        rows.append(
            [label, str(len(samples)), shown(p50), shown(p99), shown(top), handed_p99(given), f"{filled:.1f}"]
        )
        for (base50, base99), into in measured:
            into.append([label, f"{p50 / base50:.2f}", f"{p99 / base99:.2f}"])
        if cpu is not None:
            cpu_rows.append((beats[0], cpu))
            for beat in beats[1:]:
                more = (await run_fleet(label, 0, hollow, args, beat=beat, rounds=0, hub_nodes=nodes)).cpu
                if more is not None:
                    cpu_rows.append((beat, more))
    lines = [f"Profile fan-out over {REGIONS} regionals, {args.rounds} profile changes per fleet:", ""]
    lines += table(
        ["edges", "samples", "p50 s", "p99 s", "max s", "handed p99 s", "all reporting, s after start"], rows
    )
    lines += stage_tables
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
