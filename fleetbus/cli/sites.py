"""`fleetbus edge …` and `fleetbus region …`: manage the fleet's sites from the hub.

`edge token create`, `approve`, `revoke` and `ls` ask a regional's admission desk
(`regional.admission`) which edges its server admits (docs/security.md#enrollment).

`forget` deletes what the fleet keeps about an edge (or every edge of a region) that is gone
for good: presence, inventory, last apply report and enrollment, at the hub and at the
regional (`fleetbus.nats.forget`). Refused for what is online, unless `--force`.
"""

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from fleetbus.cli.kit import (
    Actor,
    AsJson,
    Creds,
    HubUrl,
    StateDir,
    actor_name,
    check_ids,
    connect,
    err,
    hub_creds,
    hub_url,
    out,
    with_client,
)
from fleetbus.core.admission import Claims
from fleetbus.errors import ConfigError
from fleetbus.nats.forget import ForgetResult
from fleetbus.runtime import enrolltoken
from fleetbus.sdk.client import FleetClient
from schemas.base import utcnow

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


# --- admission: enrollment tokens, approval, revocation (docs/security.md#enrollment) -------

token_app = typer.Typer(help="One-time enrollment tokens for new edges.", no_args_is_help=True)
edge_app.add_typer(token_app, name="token")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TOKEN_LIFETIME = timedelta(days=365)


def parse_duration(name: str, text: str) -> timedelta:
    """`90s`, `30m`, `24h`, `7d`; `ConfigError` naming the option otherwise."""
    match = _DURATION.match(text)
    seconds = float(match[1]) * _UNIT[match[2]] if match else 0.0
    if not 0 < seconds <= MAX_TOKEN_LIFETIME.total_seconds():
        msg = f"{name} {text!r}: give a positive duration up to 365d, such as 30m, 24h or 7d"
        raise ConfigError(msg)
    return timedelta(seconds=seconds)


def _signing_seed(hub: str | None, state_dir: Path | None) -> str:
    creds = hub_creds(hub_url(hub, state_dir), state_dir)
    if creds is None:
        msg = "signing a token needs your operator identity (an nkey seed file): pass --creds FILE"
        raise ConfigError(msg)
    text = creds.read_text()
    if "-----BEGIN" in text:
        msg = f"{creds} is a JWT .creds file; signing a token needs an nkey seed file (--creds)"
        raise ConfigError(msg)
    return text.strip()


@token_app.command("create")
def token_create(
    edge: Annotated[str, typer.Argument(help="The new edge's id, e.g. r1-e7.")],
    region: Annotated[str, typer.Option(help="The region it joins.")],
    expires: Annotated[str, typer.Option(help="How long the token may be redeemed: 30m, 24h, 7d.")] = "24h",
    url: Annotated[
        str | None,
        typer.Option(help="The regional's client URL for the edge (default: what the regional says)."),
    ] = None,
    actor: Actor = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Print a one-time token that lets EDGE join REGION (signed with your operator key),
    carrying the hub's desired-state signing keys the edge pins.

    Start the edge with it (`enroll_token`, FLEETBUS_ENROLL_TOKEN or `enroll_token_file`): it
    generates its key and redeems the token once; the regional records the issue and the
    redemption as audit events."""
    check_ids(("EDGE", edge), ("--region", region))
    lifetime = parse_duration("--expires", expires)
    seed = _signing_seed(hub, state_dir)

    async def issue(fleet: FleetClient) -> tuple[str, Claims]:
        where = url or (await fleet.admission(region, "list")).enroll_url
        # The hub's signing keys the edge is to pin: asked of the hub, not of the regional.
        keys = await fleet.hub_keys()
        token, claims = enrolltoken.create(
            edge=edge, region=region, expires=utcnow() + lifetime, seed=seed, url=where, hub_keys=keys
        )
        await fleet.admission(
            region,
            "issued",
            edge,
            sent_by=actor_name(actor),
            token_id=claims.token_id,
            expires=claims.expires,
        )
        return token, claims

    token, claims = with_client(hub, state_dir, issue)
    if as_json:
        out.print_json(json.dumps({"token": token} | claims.model_dump(mode="json")))
        return
    print(token)  # alone on stdout: `TOKEN=$(fleetbus edge token create ...)`
    err.print(
        f"token for edge {edge} of region {region}, valid until "
        f"{claims.expires:%Y-%m-%d %H:%M:%S} UTC, one use; redeemed at {claims.url or '(no URL)'}"
    )


def _home(fleet: FleetClient, edge: str, region: str | None, want: set[str]) -> Awaitable[str]:
    async def find() -> str:
        if region:
            return region
        registries = await fleet.admitted_edges()
        homes = [
            r for r, reply in registries.items() for e in reply.edges if e.edge == edge and e.status in want
        ]
        if len(homes) != 1:
            found = "no regional" if not homes else f"regions {', '.join(homes)}"
            msg = f"{found} lists edge {edge!r} as {' or '.join(sorted(want))}; pass --region"
            raise ConfigError(msg)
        return homes[0]

    return find()


Region = Annotated[
    str | None, typer.Option(help="The edge's region (found from the regionals if not given).")
]


@edge_app.command("approve")
def edge_approve(
    edge: Annotated[str, typer.Argument(help="A pending edge (`fleetbus edge ls --pending`).")],
    region: Region = None,
    actor: Actor = None,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Admit EDGE, which redeemed a valid token in a region whose policy is `approve`."""

    async def go(fleet: FleetClient) -> str:
        home = await _home(fleet, edge, region, {"pending"})
        await fleet.admission(home, "approve", edge, sent_by=actor_name(actor))
        return home

    home = with_client(hub, state_dir, go)
    out.print(f"approved edge {edge} of region {home}: its link is admitted")


@edge_app.command("revoke")
def edge_revoke(
    edge: Annotated[str, typer.Argument(help="An admitted or pending edge.")],
    region: Region = None,
    actor: Actor = None,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Refuse EDGE's key from now on and close its link; only a new token brings it back."""

    async def go(fleet: FleetClient) -> tuple[str, str]:
        home = await _home(fleet, edge, region, {"admitted", "pending"})
        reply = await fleet.admission(home, "revoke", edge, sent_by=actor_name(actor))
        return home, reply.reason

    home, detail = with_client(hub, state_dir, go)
    out.print(f"revoked edge {edge} of region {home}: its key is refused ({detail})")


@edge_app.command("ls")
def edge_ls(
    pending: Annotated[bool, typer.Option("--pending", help="Only edges waiting for approval.")] = False,
    region: Annotated[str | None, typer.Option(help="Only this region.")] = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """The edges each regional admits, holds pending, or has revoked."""
    registries = with_client(hub, state_dir, lambda fleet: fleet.admitted_edges(region))
    rows = [
        {"region": r, **e.model_dump(mode="json")}
        for r, reply in sorted(registries.items())
        for e in reply.edges
        if not pending or e.status == "pending"
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no pending edges" if pending else "no edges")
        return
    for row in rows:
        since = (row["since"] or "")[:19].replace("T", " ")
        out.print(
            f"{row['region']:<8} {row['edge']:<16} {row['status']:<9} since {since}  "
            f"machine {row['machine_id'] or '-'}  key {row['public_key'][:12]}…",
            highlight=False,
        )
