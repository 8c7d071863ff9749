"""`fleetbus device send|add|remove`: a command from the hub to one device at one edge, and
the devices' MQTT credentials (docs/security.md#devices)."""

import contextlib
import json
import secrets
from pathlib import Path
from typing import Annotated

import bcrypt
import typer

from fleetbus.cli.kit import (
    Actor,
    AsJson,
    Creds,
    HubUrl,
    StateDir,
    actor_name,
    check_ids,
    err,
    out,
    with_client,
)
from fleetbus.devfleet import identities, state
from fleetbus.errors import ConfigError
from fleetbus.sdk.documents import load_mapping

device_app = typer.Typer(help="Devices at the edges (MQTT): credentials, commands.", no_args_is_help=True)
BCRYPT_ROUNDS = 10  # the edge's server checks the hash on every MQTT connect: ~50 ms here


Region = Annotated[str | None, typer.Option(help="The edge's region (default: from its inventory).")]


@device_app.command("add")
def add(
    edge: Annotated[str, typer.Argument(help="The edge the device connects to.")],
    device: Annotated[
        str, typer.Argument(help="The device id: its MQTT username, its topics devices/<id>/...")
    ],
    gateway: Annotated[
        bool, typer.Option("--gateway", help="It may publish for every device of the edge (a site gateway).")
    ] = False,
    region: Region = None,
    actor: Actor = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Create DEVICE's MQTT password at EDGE (online edges only); shown once, here.

    The device logs in with username DEVICE and this password; it may publish only
    devices/DEVICE/... and receive only devices/DEVICE/cmd. Adding it again replaces the
    password."""
    check_ids(("EDGE", edge), ("DEVICE", device))
    password = secrets.token_urlsafe(18)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    with_client(
        hub,
        state_dir,
        lambda fleet: fleet.device_credentials(
            edge,
            device,
            "add",
            password_hash=hashed,
            gateway=gateway,
            region=region,
            sent_by=actor_name(actor),
        ),
    )
    url, ca = _listener(hub, state_dir, edge)
    if as_json:
        login = {
            "edge": edge,
            "device": device,
            "username": device,
            "password": password,
            "url": url,
            "ca": ca,
        }
        out.print_json(json.dumps(login))
        return
    kind = "gateway" if gateway else "device"
    out.print(f"{kind} {device} at {edge}: username {device}, password {password}", highlight=False)
    if url:
        out.print(f"connect to {url} (TLS: verify with the CA in {ca})", highlight=False)
    err.print("the password is shown only now; `fleetbus device add` again replaces it")


def _listener(hub: str | None, state_dir: Path | None, edge: str) -> tuple[str | None, str | None]:
    """The edge's MQTT URL and the CA that verifies it, when it is a site of the running dev
    fleet the command talks to; (None, None) otherwise."""
    with contextlib.suppress(ConfigError):
        record = state.running_fleet(state_dir or state.default_state_dir())
        if record is not None and (hub is None or record.hub.client_url == hub):
            site = next((s for s in record.sites if s.name == edge), None)
            if site is not None and site.mqtt_url:
                ca = None if record.insecure else str(identities.ca_cert(Path(record.state_dir)))
                return site.mqtt_url, ca
    return None, None


@device_app.command("remove")
def remove(
    edge: Annotated[str, typer.Argument(help="The edge the device connects to.")],
    device: Annotated[str, typer.Argument(help="The device id.")],
    region: Region = None,
    actor: Actor = None,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Remove DEVICE's MQTT credentials at EDGE: its connection is closed and refused."""
    check_ids(("EDGE", edge), ("DEVICE", device))
    with_client(
        hub,
        state_dir,
        lambda fleet: fleet.device_credentials(
            edge, device, "remove", region=region, sent_by=actor_name(actor)
        ),
    )
    out.print(f"removed device {device} at {edge}: its MQTT login is refused")


@device_app.command("send")
def send(
    edge: Annotated[str, typer.Argument(help="The edge the device is at.")],
    device: Annotated[str, typer.Argument(help="The device id (its MQTT topics are devices/<id>/...).")],
    file: Annotated[Path, typer.Option("-f", "--file", help="JSON or YAML object: the command's payload.")],
    region: Region = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the edge's answer.")] = 5.0,
    actor: Actor = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Publish the payload on devices/<DEVICE>/cmd at EDGE; online edges only (exit 2 otherwise)."""
    check_ids(("EDGE", edge), ("DEVICE", device))
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
