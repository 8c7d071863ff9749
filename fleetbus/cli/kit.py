"""What every `fleetbus` command shares: consoles, the options that find the hub (and connecting
to it), `--actor`, `--json`, `--fresh`."""

import asyncio
import contextlib
import getpass
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from fleetbus.devfleet import identities, state
from fleetbus.errors import ConfigError
from fleetbus.sdk.client import CREDS_ENV, HUB_URL_ENV, FleetClient, resolve_ca, resolve_creds
from schemas.base import check_token

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Dev fleet state directory (default: $FLEETBUS_STATE_DIR or ~/.local/state/fleetbus/dev).",
        show_default=False,
    ),
]
HubUrl = Annotated[
    str | None,
    typer.Option(
        "--hub",
        help="Hub nats URL (default: $FLEETBUS_HUB_URL, else the running dev fleet).",
        show_default=False,
    ),
]


def _take_creds(value: Path | None) -> Path | None:
    if value is not None:
        os.environ[CREDS_ENV] = str(value)  # read by `FleetClient.connect` through `hub_creds`
    return value


Creds = Annotated[
    Path | None,
    typer.Option(
        "--creds",
        envvar=CREDS_ENV,
        callback=_take_creds,
        help="Your identity: an nkey seed file or JWT .creds file (default: the running dev fleet's admin).",
        show_default=False,
    ),
]

AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Reason = Annotated[
    str,
    typer.Option("--reason", help="Why: kept with the change in the hub's audit trail (`fleetbus audit`)."),
]
Actor = Annotated[
    str | None,
    typer.Option("--actor", help="Who is making the change (default: user@host).", show_default=False),
]

Fresh = Annotated[
    bool,
    typer.Option(
        "--fresh",
        help="Start from nothing: delete the state dir's fleet data (every site's JetStream "
        "data, settings, logs) first.",
    ),
]


def start_fresh(directory: Path) -> None:
    """`--fresh`: empty the fleet data of `directory` (the caller refused a running fleet)."""
    deleted = state.empty(directory)
    names = ", ".join(p.name for p in deleted) or "nothing (already empty)"
    out.print(f"--fresh: deleted {names} in {directory}", soft_wrap=True, highlight=False)


def check_range(name: str, value: float, low: float, high: float) -> None:
    """`ConfigError` naming the option unless `low <= value <= high`."""
    if not low <= value <= high:
        msg = f"{name} must be between {low} and {high}, got {value}"
        raise ConfigError(msg)


def check_ids(*named: tuple[str, str]) -> None:
    """`ConfigError` naming the argument unless each (name, value) is a valid id token."""
    for name, value in named:
        try:
            check_token(value)
        except ValueError as exc:
            msg = f"{name} {value!r}: {exc}"
            raise ConfigError(msg) from exc


def actor_name(actor: str | None) -> str:
    return actor or f"{getpass.getuser()}@{socket.gethostname()}"


def hub_url(hub: str | None, state_dir: Path | None) -> str:
    """`--hub`, else $FLEETBUS_HUB_URL, else the hub of the dev fleet running in `state_dir`."""
    if hub:
        return hub
    if env := os.environ.get(HUB_URL_ENV):
        return env
    return _dev_fleet(state_dir).hub_url


def hub_creds(url: str, state_dir: Path | None) -> Path | None:
    """`--creds`/$FLEETBUS_CREDS, else the admin identity of the dev fleet whose hub is `url`
    (found like the hub itself), else None."""
    if explicit := resolve_creds():
        return explicit
    record = _dev_fleet_of(url, state_dir)
    return identities.operator_creds(Path(record.state_dir)) if record and not record.insecure else None


def hub_ca(url: str, state_dir: Path | None) -> Path | None:
    """`--ca`/$FLEETBUS_CA, else the CA of the dev fleet whose hub is `url`, else None."""
    if explicit := resolve_ca():
        return explicit
    record = _dev_fleet_of(url, state_dir)
    return Path(record.hub.ca) if record and record.hub.ca else None


def _dev_fleet_of(url: str, state_dir: Path | None) -> state.FleetRecord | None:
    """The dev fleet running in `state_dir` (or the default one) if its hub is `url`."""
    with contextlib.suppress(ConfigError):
        record = state.running_fleet(state_dir or state.default_state_dir())
        if record is not None and url in (record.hub_url, record.hub.client_url):
            return record
    return None


def _dev_fleet(state_dir: Path | None) -> state.FleetRecord:
    directory = state_dir or state.default_state_dir()
    record = state.running_fleet(directory)
    if record is None:
        msg = (
            f"no hub given and no dev fleet running in {directory}; pass --hub nats://HOST:PORT, "
            f"set {HUB_URL_ENV}, or start one with `fleetbus dev up`"
        )
        raise ConfigError(msg)
    return record


async def connect(hub: str | None, state_dir: Path | None) -> FleetClient:
    """A client of the hub `hub_url` finds (within the `--timeout` deadline), as the identity
    `hub_creds` finds, trusting the CA `hub_ca` finds."""
    url = hub_url(hub, state_dir)
    return await FleetClient.connect(url, creds=hub_creds(url, state_dir), ca=hub_ca(url, state_dir))


def with_client(hub: str | None, state_dir: Path | None, work: Callable[[FleetClient], Awaitable[T]]) -> T:
    """Run `work` with a client of the hub, in a fresh event loop: one command, one connection."""

    async def go() -> T:
        async with await connect(hub, state_dir) as fleet:
            return await work(fleet)

    return asyncio.run(go())
