"""`fleetbus status` and `fleetbus watch inventory|presence|events`: the fleet as the hub sees it.

`status` prints one table and exits; `watch` prints the current state, then each change as
it reaches the hub, until Ctrl-C (or `--count` items). `--json` prints one JSON object per
line, for piping into `jq` or a script.
"""

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from fleetbus.cli.kit import AsJson, Creds, HubUrl, StateDir, connect, out
from fleetbus.cli.profiles import parse_expiry
from fleetbus.core.compliance import State
from fleetbus.core.views import EdgePresence, EdgeStatus
from fleetbus.sdk.client import FleetClient
from schemas.base import utcnow
from schemas.event import Event
from schemas.inventory import InventorySnapshot
from schemas.presence import PresenceState

T = TypeVar("T")

watch_app = typer.Typer(
    help="Follow the fleet live: current state first, then each change (Ctrl-C to stop).",
    no_args_is_help=True,
)

Count = Annotated[
    int | None, typer.Option("--count", min=1, help="Exit after this many items.", show_default=False)
]
Region = Annotated[str | None, typer.Option("--region", help="Only this region.", show_default=False)]

PRESENCE_STYLE = {
    PresenceState.ONLINE: "green",
    PresenceState.STALE: "yellow",
    PresenceState.OFFLINE: "red",
    PresenceState.UNREACHABLE: "magenta",
}
COMPLIANCE_STYLE = {
    State.CONVERGED: "green",
    State.PENDING: "yellow",
    State.FAILED: "red",
    State.UNKNOWN: "dim",
}


def ago(when: datetime | None, now: datetime) -> str:
    """`when` as a short age: 4s, 3m, 2h, 5d ago."""
    if when is None:
        return "never"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _clock(when: datetime) -> str:
    return when.astimezone().strftime("%H:%M:%S")


def describe_inventory(snap: InventorySnapshot) -> str:
    applied = snap.applied.desired_hash[:19] if snap.applied else "nothing applied"
    link = "link up" if snap.link and snap.link.upstream_connected else "link down"
    backlog = ", ".join(
        f"{b.stream} {b.pending} pending"
        + (f" {b.evicted_unforwarded} LOST" if b.evicted_unforwarded else "")
        for b in snap.backlog
    )
    facts = f" facts {json.dumps(snap.facts, sort_keys=True)}" if snap.facts else ""
    return (
        f"{_clock(snap.observed_at)} {snap.region}/{snap.edge} #{snap.seq} {applied}, {link}"
        f"{', ' + backlog if backlog else ''}{facts}"
    )


def describe_presence(row: EdgePresence) -> str:
    was = f" (reported {row.reported.value})" if row.state is not row.reported else ""
    return f"{_clock(row.since)} {row.region}/{row.edge} {row.state.value}{was}: {row.reason}"


def describe_event(event: Event) -> str:
    return (
        f"{_clock(event.observed_at)} {event.region}/{event.edge} {event.kind} "
        f"{event.severity.value}: {event.message}"
    )


def _stream(
    hub: str | None,
    state_dir: Path | None,
    items: Callable[[FleetClient], AsyncGenerator[T, None]],
    show: Callable[[T], str],
    as_json: Callable[[T], dict[str, Any]] | None,
    count: int | None,
) -> None:
    async def go() -> None:
        async with await connect(hub, state_dir) as fleet:
            seen = 0
            async with contextlib.aclosing(items(fleet)) as stream:
                async for item in stream:
                    if as_json:
                        print(json.dumps(as_json(item), sort_keys=True), flush=True)
                    else:
                        out.print(show(item), highlight=False, markup=False)
                    seen += 1
                    if count is not None and seen >= count:
                        return

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())


@watch_app.command("inventory")
def watch_inventory(
    region: Region = None,
    as_json: AsJson = False,
    count: Count = None,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Each edge's latest inventory snapshot, then each new one."""
    _stream(
        hub,
        state_dir,
        lambda f: f.watch_inventory(region=region),
        describe_inventory,
        (lambda s: s.model_dump(mode="json")) if as_json else None,
        count,
    )


@watch_app.command("presence")
def watch_presence(
    as_json: AsJson = False,
    count: Count = None,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Each edge's presence (online/stale/offline/unreachable), then each change."""
    _stream(
        hub,
        state_dir,
        lambda f: f.watch_presence(),
        describe_presence,
        (lambda p: p.as_json()) if as_json else None,
        count,
    )


@watch_app.command("events")
def watch_events(
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind", help="Only this kind (repeatable): apply_result, drift, ...", show_default=False
        ),
    ] = None,
    region: Region = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Replay from this long ago (10m, 2h, 1d) or an ISO time.", show_default=False
        ),
    ] = None,
    as_json: AsJson = False,
    count: Count = None,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """The latest event of each kind from each edge (or all since --since), then each new one."""
    start = parse_expiry(since, utcnow(), option="--since", past=True) if since else None
    _stream(
        hub,
        state_dir,
        lambda f: f.watch_events(kind, region=region, since=start),
        describe_event,
        (lambda e: e.model_dump(mode="json")) if as_json else None,
        count,
    )


def _status_table(rows: list[EdgeStatus], now: datetime) -> Table:
    table = Table("region", "edge", "presence", "last seen", "converged", "backlog", "detail")
    for row in rows:
        presence = row.presence
        state = presence.state if presence else None
        compliance = row.compliance.state if row.compliance else State.UNKNOWN
        last_seen = (
            "live" if state is PresenceState.ONLINE else ago(presence.last_seen if presence else None, now)
        )
        backlog = f"{row.pending}" + (f" ({row.lost} lost)" if row.lost else "") if row.inventory else "-"
        detail = (row.compliance.error if row.compliance else None) or (presence.reason if presence else "")
        table.add_row(
            row.region,
            row.edge,
            f"[{PRESENCE_STYLE[state]}]{state.value}[/]" if state else "[dim]unknown[/]",
            last_seen,
            f"[{COMPLIANCE_STYLE[compliance]}]{compliance.value}[/]",
            backlog,
            detail,
        )
    return table


UNKNOWN = "unknown"
PRESENCE_ORDER = (*(p.value for p in PresenceState), UNKNOWN)
COMPLIANCE_ORDER = tuple(s.value for s in State)


def summary(total: int, presence: Counter[str], compliance: Counter[str]) -> str:
    """`6 edges: 3 online, 3 unreachable · 3 converged, 3 pending`: every state that has an
    edge, in a fixed order, so the counts always add up to the total."""

    def counts(counter: Counter[str], order: tuple[str, ...]) -> str:
        return ", ".join(f"{counter[state]} {state}" for state in order if counter[state]) or "none"

    if not total:
        return "0 edges"
    return f"{total} edges: {counts(presence, PRESENCE_ORDER)} · {counts(compliance, COMPLIANCE_ORDER)}"


def status(
    as_json: AsJson = False, hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None
) -> None:
    """Every edge: presence, last seen, converged?, uplink backlog."""

    async def fetch() -> list[EdgeStatus]:
        async with await connect(hub, state_dir) as fleet:
            return await fleet.status()

    rows = asyncio.run(fetch())
    if as_json:
        out.print_json(data={"edges": [r.as_json() for r in rows]})
        return
    now = utcnow()
    presence = Counter(r.presence.state.value if r.presence else UNKNOWN for r in rows)
    compliance = Counter(r.compliance.state.value if r.compliance else UNKNOWN for r in rows)
    out.print(summary(len(rows), presence, compliance), highlight=False)
    if rows:
        out.print(_status_table(rows, now))
