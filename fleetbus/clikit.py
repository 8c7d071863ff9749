"""What every `fleetbus` command shares: consoles, the options that find the hub, `--fresh`."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fleetbus.devfleet import state
from fleetbus.errors import ConfigError

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
