"""The consistency suite: a seeded, random fault schedule over a real fleet, then proof that
nothing was lost.

    .venv/bin/python -m tests.consistency --seeds 20 --steps 80     # what `make soak` runs
    .venv/bin/python -m tests.consistency --seed 1234 --steps 80     # replay one seed
    .venv/bin/python -m tests.consistency --seed 7 --faults cut      # links only cut, no blackholes

A schedule is a pure function of its seed (`make_schedule`): profile changes and overrides at
the hub, facts changes and events at edges, cuts, blackholes (silent loss: nothing passes, no
reset) and heals of any leaf link, SIGKILL and restart of any daemon or nats-server, the hub's
included, each followed by a random pause. It runs on
a fleet of 1 hub, 2 regionals and 4 edges (real processes, a TCP proxy on every leaf link).
Afterwards every link is healed and every process restarted, and `check` must hold within
`converge_timeout`:

- every edge's applied hash (read from the edge's own driver state) is the desired hash the
  hub computes for it, and the hub's last report of it says the same;
- the hub's `inventory` equals every edge's latest snapshot;
- every event an edge's own stream acknowledged is in the hub's EVENTS exactly once (by id),
  unless the edge's limits evicted it and that eviction shows in the edge's stream;
- no process exited that the schedule did not kill.

On failure the seed and the whole schedule are printed so it can be replayed.
"""

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.drivers.local import LocalDriver
from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.plan import FleetPlan, plan_fleet, ports_needed
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.errors import MissingError, TemporaryError
from fleetbus.runtime import log
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.heartbeat import Tier
from schemas.override import OverrideScope
from schemas.profile import Profile
from tests.conftest import admin_creds, connect_as
from tests.fleetprobe import emit_event, inventory_differences, set_facts, stream_ids
from tests.helpers import eventually

REGIONS, EDGES_PER_REGION = 2, 2
PROFILES = ("base", "r1-tools", "canary")
# Settings that make a small fleet react quickly; the logic is the same as in production.
FLEET_SETTINGS: dict[Tier, dict[str, object]] = {
    Tier.EDGE: {"inventory_scan_interval": 0.5, "inventory_interval": 30.0},
    Tier.REGIONAL: {"offline_after": 10.0},
    Tier.HUB: {"region_offline_after": 10.0},
}


@dataclass(frozen=True)
class Step:
    """One action of a schedule, then a pause of `pause` seconds."""

    action: str  # profile | override | unoverride | facts | event | cut | blackhole | heal | kill | restart
    site: str = ""
    arg: str = ""  # a version, "server"/"daemon"/"both", a count, a facts value
    pause: float = 0.0

    def __str__(self) -> str:
        return f"{self.action:<10} {self.site:<6} {self.arg:<8} then {self.pause:.2f}s"


@dataclass
class FleetShape:
    edges: list[str]
    uplinks: list[str]  # sites with a link to cut: regionals and edges
    sites: list[str]


def fleet_shape(plan: FleetPlan) -> FleetShape:
    """What a schedule may act on; a clustered hub's nodes are killed one by one (`hub-n2`)."""
    edges = [s.name for s in plan.by_tier(Tier.EDGE)]
    return FleetShape(
        edges=edges,
        uplinks=[s.name for s in plan.sites if s.tier is not Tier.HUB],
        sites=[s.key for s in plan.sites],
    )


def hub_writable(down: dict[str, str], shape: FleetShape) -> bool:
    """Whether the hub takes writes: its server runs, or, clustered, a majority of its nodes'."""
    nodes = [s for s in shape.sites if s == "hub" or s.startswith("hub-n")]
    stopped = [s for s in nodes if down.get(s) in ("server", "both")]
    return len(stopped) * 2 < len(nodes)


def make_schedule(seed: int, steps: int, shape: FleetShape, *, blackholes: bool = True) -> list[Step]:
    """`steps` random steps for `shape`, the same for the same seed. At most two faults are
    open at a time (more would leave too little of the fleet to exercise); the hub is only
    written to while its server runs, and events are only stored at edges whose server runs.
    With `blackholes`, half the link failures are silent; which ones is drawn from a second
    generator, so a seed's schedule is otherwise the same with or without them."""
    rng = random.Random(seed)
    silent = random.Random(f"blackhole-{seed}")
    cut: set[str] = set()
    down: dict[str, str] = {}  # site -> which of its processes: server | daemon | both
    schedule: list[Step] = []
    for _ in range(steps):
        hub_up = hub_writable(down, shape)
        choices: list[tuple[str, float]] = [("facts", 2.0)]
        if hub_up:
            choices += [("profile", 2.0), ("override", 1.5), ("unoverride", 0.5)]
        if any(down.get(e) not in ("server", "both") for e in shape.edges):
            choices.append(("event", 3.0))
        if len(cut) + len(down) < 2:
            choices += [("cut", 2.5), ("kill", 2.0)]
        if cut:
            choices.append(("heal", 2.0))
        if down:
            choices.append(("restart", 2.0))
        action = rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]
        # Mostly short pauses, sometimes long enough for heartbeats to go silent.
        pause = round(rng.uniform(0.05, 1.5) if rng.random() < 0.85 else rng.uniform(2.0, 8.0), 2)
        if action == "profile":
            step = Step(action, "hub", f"{rng.choice(PROFILES)}@{rng.randint(1, 99)}", pause)
        elif action in ("override", "unoverride"):
            step = Step(action, rng.choice(shape.edges), str(rng.randint(1, 99)), pause)
        elif action == "facts":
            step = Step(action, rng.choice(shape.edges), str(rng.randint(1, 999)), pause)
        elif action == "event":
            edges = [e for e in shape.edges if down.get(e) not in ("server", "both")]
            step = Step(action, rng.choice(edges), str(rng.randint(1, 5)), pause)
        elif action == "cut":
            site = rng.choice([s for s in shape.uplinks if s not in cut])
            cut.add(site)
            quiet = silent.random() < 0.5  # drawn for every cut, so the choice stays per cut
            step = Step("blackhole" if blackholes and quiet else "cut", site, "", pause)
        elif action == "heal":
            site = rng.choice(sorted(cut))
            cut.discard(site)
            step = Step(action, site, "", pause)
        elif action == "kill":
            site = rng.choice([s for s in shape.sites if s not in down])
            down[site] = rng.choice(("server", "daemon", "both"))
            step = Step(action, site, down[site], pause)
        else:  # restart
            site = rng.choice(sorted(down))
            step = Step(action, site, down.pop(site), pause)
        schedule.append(step)
    return schedule


def profile_for(name: str, version: str) -> Profile:
    selector = {"match_labels": {"region": "r1"}} if name == "r1-tools" else {}
    if name == "canary":
        selector = {"match_labels": {"env": "dev"}}
    return Profile.model_validate(
        {
            "name": name,
            "selector": selector,
            "priority": PROFILES.index(name),
            "spec": {"components": [{"name": name, "image": f"reg/{name}", "version": version}]},
        }
    )


@dataclass
class Outcome:
    seed: int
    schedule: list[Step]
    faults: int = 0
    acked: dict[str, set[str]] = field(default_factory=dict)  # edge -> event ids its stream acked
    unanswered: int = 0  # hub writes the hub did not acknowledge (its desk down or failing over)
    converge_s: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.converge_s is not None and not self.problems

    def replay_text(self) -> str:
        head = f"seed {self.seed}: {len(self.schedule)} steps, {self.faults} faults"
        lines = [f"{head}; replay with --seed {self.seed} --steps {len(self.schedule)}"]
        lines += [f"  {i:>3}  {step}" for i, step in enumerate(self.schedule)]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


class Runner:
    def __init__(self, fleet: DevFleet, client: FleetClient, outcome: Outcome) -> None:
        self.fleet, self.client, self.outcome = fleet, client, outcome

    async def apply(self, step: Step) -> None:
        if step.action in ("profile", "override", "unoverride"):
            try:
                await self._write(step)
            except TemporaryError:
                # Not acknowledged (the hub's daemon down, a clustered hub failing over): it
                # may or may not be stored; the check compares with what the hub holds.
                self.outcome.unanswered += 1
            return
        await self._act(step)

    async def _write(self, step: Step) -> None:
        client = self.client
        if step.action == "profile":
            name, version = step.arg.split("@")
            await client.profiles.apply(profile_for(name, version))
        elif step.action == "override":
            await client.overrides.set(
                OverrideScope.EDGE, step.site, {"config": {"knob": int(step.arg)}}, reason="suite"
            )
        elif step.action == "unoverride":
            with contextlib.suppress(MissingError):  # nothing to remove is fine
                await client.overrides.remove(OverrideScope.EDGE, step.site)

    async def _act(self, step: Step) -> None:
        fleet = self.fleet
        if step.action == "facts":
            set_facts(fleet, step.site, {"rack": int(step.arg)})
        elif step.action == "event":
            site = fleet.plan.site(step.site)
            for i in range(int(step.arg)):
                event_id = await emit_event(
                    site.server.client_url, site.region, site.name, creds=site.creds_path, data={"i": i}
                )
                if event_id is not None:
                    self.outcome.acked.setdefault(site.name, set()).add(event_id)
        elif step.action == "cut":
            fleet.link(step.site).cut()
        elif step.action == "blackhole":
            fleet.link(step.site).blackhole()
        elif step.action == "heal":
            fleet.link(step.site).heal()
        elif step.action == "kill":
            await fleet.kill(step.site, server=step.arg != "daemon", daemon=step.arg != "server")
        elif step.action == "restart":
            await fleet.restart(step.site, server=step.arg != "daemon", daemon=step.arg != "server")
        if step.action in ("cut", "blackhole", "kill"):
            self.outcome.faults += 1

    async def heal_everything(self) -> None:
        for link in self.fleet.links.values():
            link.heal()
        hubs = [self.fleet.servers[s.key] for s in self.fleet.plan.by_tier(Tier.HUB)]
        await asyncio.gather(*(s.start() for s in hubs if not s.running))  # a cluster's nodes need each other
        for site in self.fleet.plan.sites:  # servers first, hub first; then daemons
            server = self.fleet.servers[site.key]
            if not server.running:
                await server.start()
        for site in self.fleet.plan.sites:
            daemon = self.fleet.daemons[site.key]
            if not daemon.running:
                await daemon.start()


async def check(fleet: DevFleet, client: FleetClient, outcome: Outcome) -> list[str]:
    """What is not (yet) consistent; empty when everything holds."""
    problems: list[str] = []
    edges = fleet.plan.by_tier(Tier.EDGE)
    for site in edges:
        desired, report = await client.explain(site.name)
        applied = await LocalDriver(site.workdir / "daemon").applied_hash()
        if applied != desired.hash:
            problems.append(f"{site.name}: applied {str(applied)[:19]}, hub wants {desired.hash[:19]}")
        elif (
            report is None or report.apply_result is None or report.apply_result.desired_hash != desired.hash
        ):
            problems.append(f"{site.name}: hub's last report is not the desired hash yet")
    problems += await inventory_differences(fleet, client, [s.name for s in edges])
    hub = await connect_as(fleet.plan, "hub")
    try:
        at_hub, hub_first = await stream_ids(hub.jetstream(), subjects.EVENTS_STREAM)
    finally:
        await hub.close()
    if hub_first != 1:
        problems.append(f"hub EVENTS evicted {hub_first - 1} messages")
    problems += [f"event {i} is at the hub {n} times" for i, n in at_hub.items() if n > 1]
    for site in edges:
        nc = await connect_as(fleet.plan, site.name)
        try:
            stored, first = await stream_ids(nc.jetstream(), subjects.EVENTS_STREAM)
        finally:
            await nc.close()
        evicted = first - 1
        lost_acked = outcome.acked.get(site.name, set()) - stored.keys()
        if lost_acked and not evicted:
            problems.append(f"{site.name}: {len(lost_acked)} acknowledged events gone from its own stream")
        missing = [i for i in stored if at_hub[i] != 1]
        if missing:
            problems.append(f"{site.name}: {len(missing)} of {len(stored)} events not at the hub")
    return problems


async def run_seed(
    seed: int,
    steps: int,
    workdir: Path,
    *,
    converge_timeout: float = 120.0,
    progress: Any = print,
    blackholes: bool = True,
    hub_nodes: int = 1,
) -> Outcome:
    ports = iter(
        free_ports(ports_needed(REGIONS, EDGES_PER_REGION, mqtt=False, links=True, hub_nodes=hub_nodes))
    )
    plan = plan_fleet(
        workdir / f"seed-{seed}", REGIONS, EDGES_PER_REGION, ports, links=True, hub_nodes=hub_nodes
    )
    outcome = Outcome(seed, make_schedule(seed, steps, fleet_shape(plan), blackholes=blackholes))
    fleet = DevFleet(plan, heartbeat_interval=1.0, progress=lambda _l: None, settings=FLEET_SETTINGS)
    await fleet.start()
    try:
        # Persistent: the schedule kills and restarts the hub's server under this client.
        hub_url = plan.hub_url
        async with await FleetClient.connect(hub_url, persistent=True, creds=admin_creds(plan)) as client:
            runner = Runner(fleet, client, outcome)
            await eventually(lambda: _all_reported(client, plan), timeout=60, what="every edge reported")
            for step in outcome.schedule:
                await runner.apply(step)
                await asyncio.sleep(step.pause)  # the schedule's own pacing, part of the fault pattern
            await runner.heal_everything()
            healed = time.monotonic()
            last: list[str] = []

            async def consistent() -> bool:
                nonlocal last
                last = await check(fleet, client, outcome)
                return not last

            with contextlib.suppress(AssertionError):  # not converged: `last` says what is left
                await eventually(consistent, timeout=converge_timeout, what="consistent")
                outcome.converge_s = time.monotonic() - healed
            outcome.problems = last
            crashes = fleet.crashes()
            outcome.problems += [f"{name} exited {n}x without being killed" for name, n in crashes.items()]
    finally:
        await fleet.stop()
    shown = f"{outcome.converge_s:.2f}s" if outcome.converge_s is not None else "never"
    progress(
        f"seed {seed}: {len(outcome.schedule)} steps, {outcome.faults} faults, "
        f"{sum(map(len, outcome.acked.values()))} events acked, {outcome.unanswered} hub writes "
        f"unanswered; converged {shown} after the final heal"
    )
    return outcome


async def _all_reported(client: FleetClient, plan: FleetPlan) -> bool:
    return len(await client.reports()) == len(plan.by_tier(Tier.EDGE))


def seeds_from(args: argparse.Namespace) -> Iterator[int]:
    if args.seed is not None:
        yield args.seed
        return
    yield from range(args.first_seed, args.first_seed + args.seeds)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds (from --first-seed)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None, help="run only this seed (replay)")
    parser.add_argument("--steps", type=int, default=80, help="steps per schedule")
    parser.add_argument("--converge-timeout", type=float, default=180.0)
    parser.add_argument("--print-schedule", action="store_true", help="print the schedule and exit")
    parser.add_argument(
        "--hub-nodes", type=int, default=1, help="3: a clustered hub, its nodes killed one by one"
    )
    parser.add_argument(
        "--faults", choices=("cut", "cut,blackhole"), default="cut,blackhole", help="how links fail"
    )
    args = parser.parse_args()
    log.configure(level="error")  # the suite's own client retrying while the hub is down is expected
    failed = []
    blackholes = "blackhole" in args.faults
    with tempfile.TemporaryDirectory(prefix="fleetbus-soak-") as tmp:
        for seed in seeds_from(args):
            if args.print_schedule:
                ports = iter(range(20000, 21000))
                plan = plan_fleet(
                    Path(tmp), REGIONS, EDGES_PER_REGION, ports, links=True, hub_nodes=args.hub_nodes
                )
                schedule = make_schedule(seed, args.steps, fleet_shape(plan), blackholes=blackholes)
                print("\n".join(str(s) for s in schedule))
                continue
            outcome = await run_seed(
                seed,
                args.steps,
                Path(tmp),
                converge_timeout=args.converge_timeout,
                blackholes=blackholes,
                hub_nodes=args.hub_nodes,
            )
            if not outcome.ok:
                failed.append(outcome)
                print(outcome.replay_text(), flush=True)
    if failed:
        print(f"FAILED seeds: {[o.seed for o in failed]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
