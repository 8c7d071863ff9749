"""`fleetbus device send`: a command from the hub to one device at one edge."""

import json
from pathlib import Path
from typing import Annotated

import typer

from fleetbus.cli.kit import Actor, AsJson, Creds, HubUrl, StateDir, actor_name, out, with_client
from fleetbus.errors import ConfigError
from fleetbus.sdk.documents import load_mapping
from schemas.base import check_token

device_app = typer.Typer(help="Devices at the edges (MQTT): commands.", no_args_is_help=True)


@device_app.command("send")
def send(
    edge: Annotated[str, typer.Argument(help="The edge the device is at.")],
    device: Annotated[str, typer.Argument(help="The device id (its MQTT topics are devices/<id>/...).")],
    file: Annotated[Path, typer.Option("-f", "--file", help="JSON or YAML object: the command's payload.")],
    region: Annotated[
        str | None, typer.Option(help="The edge's region (default: from its inventory).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the edge's answer.")] = 5.0,
    actor: Actor = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Publish the payload on devices/<DEVICE>/cmd at EDGE; online edges only (exit 2 otherwise)."""
    for name, value in (("EDGE", edge), ("DEVICE", device)):
        try:
            check_token(value)
        except ValueError as exc:
            raise ConfigError(f"{name} {value!r}: {exc}") from exc
    if timeout <= 0:
        raise ConfigError(f"--timeout must be > 0, got {timeout}")
    payload = load_mapping(file)
    reply = with_client(
        hub,
        state_dir,
        lambda fleet: fleet.send_device_command(
            edge, device, payload, region=region, sent_by=actor_name(actor), timeout=timeout
        ),
    )
    if as_json:
        out.print_json(json.dumps(reply.model_dump(mode="json")))
    elif reply.delivered:
        seen = "online" if reply.device_online else "known, offline" if reply.device_known else "never heard"
        out.print(f"delivered to devices/{device}/cmd at {edge} (device {seen})")
    if not reply.delivered:
        raise ConfigError(f"edge {edge} could not deliver the command: {reply.reason}")
