"""What every `fleetbus` command shares: consoles and the options that find the hub."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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


def check_range(name: str, value: float, low: float, high: float) -> None:
    """`ConfigError` naming the option unless `low <= value <= high`."""
    if not low <= value <= high:
        msg = f"{name} must be between {low} and {high}, got {value}"
        raise ConfigError(msg)
