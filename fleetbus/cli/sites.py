"""`fleetbus edge …` and `fleetbus region …`: manage the fleet's sites from the hub.

`forget` deletes what the fleet keeps about an edge (or every edge of a region) that is gone
for good: presence, inventory, last apply report and enrollment, at the hub and at the
regional (`fleetbus.nats.forget`). Refused for what is online, unless `--force`.
"""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer

from fleetbus.cli.kit import Creds, HubUrl, StateDir, connect, err, out
from fleetbus.nats.forget import ForgetResult
from fleetbus.sdk.client import FleetClient

edge_app = typer.Typer(help="Manage edges (the daemons run with `fleetbus run edge`).", no_args_is_help=True)
region_app = typer.Typer(
    help="Manage regions (the daemons run with `fleetbus run regional`).", no_args_is_help=True
)

Forget = Callable[[FleetClient], Awaitable[ForgetResult]]
Force = Annotated[bool, typer.Option("--force", help="Forget it even while it is online.")]


def _report(what: str, result: ForgetResult) -> None:
    edges = ", ".join(result.edges) or "no edges"
    out.print(f"forgot {what}: {edges} (presence, inventory, apply report, enrollment)")
    if not result.regional_answered:
        err.print(
            f"warning: the regional of {result.region} did not answer: only the hub's records are "
            "gone; its own come back if it returns, so forget again then"
        )


@edge_app.command("forget")
def edge_forget(
    edge: Annotated[str, typer.Argument(help="Edge id, e.g. r1-e3.")],
    region: Annotated[
        str | None, typer.Option(help="The edge's region (found from the hub's records if not given).")
    ] = None,
    force: Force = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Delete what the fleet keeps about EDGE (refused while it is online).

    Its presence, inventory, last apply report and enrollment go, at the hub and at its
    regional; if it runs again it enrolls afresh."""
    result = _forget(hub, state_dir, lambda fleet: fleet.forget_edge(edge, region=region, force=force))
    _report(f"edge {edge} of region {result.region}", result)


@region_app.command("forget")
def region_forget(
    region: Annotated[str, typer.Argument(help="Region id, e.g. r3.")],
    force: Force = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Forget REGION and every edge of it (refused while the hub hears its regional).

    As `edge forget` for each of its edges, and the hub's record of the regional: e.g. the
    regions of a past `fleetbus sim`."""
    result = _forget(hub, state_dir, lambda fleet: fleet.forget_region(region, force=force))
    _report(f"region {region}", result)


def _forget(hub: str | None, state_dir: Path | None, work: Forget) -> ForgetResult:
    async def go() -> ForgetResult:
        async with await connect(hub, state_dir) as fleet:
            return await work(fleet)

    return asyncio.run(go())
