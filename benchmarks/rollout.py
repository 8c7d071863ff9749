"""A staged rollout over hollow edges: per wave, from the wave's start until its edges applied.

    .venv/bin/python benchmarks/rollout.py [--hollow 1000] [--soak 5]

A fresh fleet (hub and 4 regionals as real servers and daemons, `--hollow` hollow edges spread
over them) starts and fills. A plain fan-out (a revision without `rollout`) is measured first,
as the baseline of this run. Then a revision rolls out in three waves (`canary` 1 %, `early`
10 %, `rest` the others; `--soak` seconds each). Every ApplyResult the hub's `applied` bucket
receives is read; per wave it prints, from the wave's start (the controller's clock) to each
member's apply of the new revision (the edge's clock, the same machine), p50/p99/max, and
the ratio of its p99 to the plain fan-out's. It also counts the edges that applied the new
revision before their wave started: the regionals' assigners must make that 0.

Hollow edges take their profiles from their regional's `assigned` bucket, as real edges
do, so the waves reach them as they reach real edges. Not a test: numbers, appended to
benchmarks/RESULTS.md.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks.common import admin_creds, append_results, summary, table
from benchmarks.fanout import PROFILE, REGIONS, all_reported, fan_out, watch_applied
from fleetbus.devfleet.hollow import plan_hollow
from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.plan import plan_fleet, ports_needed
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.runtime import log
from fleetbus.sdk.client import FleetClient
from schemas.codec import decode_body
from schemas.event import ApplyStatus, Event
from schemas.profile import Profile, ProfileSpec
from schemas.rollout import RolloutSpec, RolloutState, RolloutStatus
from tests.helpers import eventually


def spec(soak: float) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {
            "waves": [
                {"name": "canary", "percent": 1},
                {"name": "early", "percent": 10},
                {"name": "rest", "percent": 100},
            ],
            "soak": soak,
            "wave_timeout": 300,
        }
    )


async def roll_out(
    client: FleetClient, edges: int, soak: float, timeout: float
) -> tuple[RolloutState, dict[str, datetime]]:
    """Apply a revision that rolls out in waves; its final state, and each edge's first
    apply of it (the edge's clock)."""
    sub = await watch_applied(client)
    try:
        profile = Profile(name=PROFILE, spec=ProfileSpec(config={"round": "waves"}), rollout=spec(soak))
        plan = await client.profiles.apply(profile, reason="benchmark")
        revision = plan.new.revision
        applied: dict[str, datetime] = {}
        began = time.monotonic()
        while len(applied) < edges and time.monotonic() - began < timeout:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except TimeoutError:
                continue
            event = decode_body(Event, msg.data, subject=msg.subject)
            result = event.apply_result
            if (
                result
                and result.status is not ApplyStatus.FAILED
                and result.profile_revisions.get(PROFILE) == revision
            ):
                applied.setdefault(event.edge, event.observed_at)
        state = await eventually(
            lambda: _done(client, revision), timeout=timeout, what="the rollout complete"
        )
        assert state is not None  # eventually returns only a truthy value
        return state, applied
    finally:
        await sub.unsubscribe()


async def _done(client: FleetClient, revision: int | None) -> RolloutState | None:
    state = (await client.rollouts.status(PROFILE, revision=revision)).state
    return state if state.status is RolloutStatus.COMPLETE else None


async def run(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        ports = iter(free_ports(ports_needed(REGIONS, 0, mqtt=False) + REGIONS))
        plan = plan_fleet(Path(tmp), REGIONS, 0, ports)
        fleet = DevFleet(
            plan,
            heartbeat_interval=5.0,
            progress=lambda _line: None,
            hollow=plan_hollow(plan, args.hollow, ports),
            hollow_settings={"log_level": "warning", "start_rate": 250.0},
        )
        await fleet.start()
        try:
            async with await FleetClient.connect(
                plan.site("hub").server.client_url, creds=admin_creds(plan)
            ) as client:
                await eventually(
                    lambda: all_reported(client, args.hollow), timeout=300, what="every edge reporting"
                )
                plain, _ = await fan_out(client, fleet, args.hollow, 1, args.timeout)
                p50, p99, top = summary(plain)
                print(f"  plain fan-out: p50 {p50:.2f}s p99 {p99:.2f}s max {top:.2f}s", flush=True)
                state, applied = await roll_out(client, args.hollow, args.soak, args.timeout)
        finally:
            await fleet.stop()
    rows = [
        ["all at once (baseline)", str(len(plain)), f"{p50:.2f}", f"{p99:.2f}", f"{top:.2f}", "1.00", "-"]
    ]
    early = 0
    for index, wave in enumerate(state.spec.waves):
        at = state.waves[index]
        members = [e for e, w in state.members.items() if w == index]
        started = at.started_at
        if started is None:
            rows.append([wave.name, str(len(members)), "-", "-", "-", "-", "never started"])
            continue
        took = [(applied[e] - started).total_seconds() for e in members if e in applied]
        early += sum(1 for t in took if t < 0)
        missing = len(members) - len(took)
        w50, w99, wtop = summary(took) if took else (float("nan"),) * 3
        soaked = (at.passed_at - at.converged_at).total_seconds() if at.passed_at and at.converged_at else 0.0
        rows.append(
            [
                wave.name,
                str(len(members)),
                f"{w50:.2f}",
                f"{w99:.2f}",
                f"{wtop:.2f}",
                f"{w99 / p99:.2f}",
                f"soaked {soaked:.1f}s" + (f", {missing} never applied" if missing else ""),
            ]
        )
    first, end = state.waves[0].started_at, state.updated_at
    total = (end - first).total_seconds() if first and end else 0.0
    return [
        (
            f"A rollout over {args.hollow} hollow edges in {REGIONS} regions: canary 1 %, early 10 %, rest;"
            f" soak {args.soak:g} s. Seconds from each wave's start to each member's apply:"
        ),
        "",
        *table(["wave", "edges", "p50", "p99", "max", "p99 / baseline p99", "note"], rows),
        "",
        f"Edges that applied the revision before their wave started: {early}.",
        f"From the first wave's start to complete: {total:.1f} s.",
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hollow", type=int, default=1000, help="hollow edges")
    parser.add_argument("--soak", type=float, default=5.0, help="soak per wave, s")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after, s")
    args = parser.parse_args()
    log.configure(level="warning")
    lines = await run(args)
    print("\n".join(lines))
    append_results("Staged rollout over hollow edges (benchmarks/rollout.py)", lines)


if __name__ == "__main__":
    asyncio.run(main())
