"""Who a site's server admits beyond its fixed users, kept in files beside its config.

A regional's or an edge's nats-server config includes `admission/users.conf`; that file is
rendered from two others in the same directory:

- `base.json`: the users every start has (the site itself, the simulator), written by
  whoever renders the server's config (the dev fleet, `fleetbus compose init`);
- a registry the site's daemon keeps: a regional's `edges.json` (edges admitted, pending and
  revoked, as tokens are redeemed and edges approved or revoked; `fleetbus.core.admission`
  decides), an edge's `devices.json` (its MQTT devices' credentials, `fleetbus device add`),
  the hub's `operators.json` (`fleetbus operator add|revoke`, through the hub's desk).

The daemon rewrites `users.conf` and asks its server to reload (`fleetbus.nats.sysadmin`); a
revoked key is then unknown to the server, which refuses its reconnects. Every write is
atomic (a temporary file renamed over the old one): a reload never reads half a file.
"""

import json
import os
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetbus.core import permissions
from fleetbus.core.admission import Registry
from fleetbus.core.permissions import Permissions
from fleetbus.errors import ConfigError
from schemas.desk import OperatorRecord, Role

DIR = "admission"
USERS_FILE = "users.conf"
BASE_FILE = "base.json"
EDGES_FILE = "edges.json"
DEVICES_FILE = "devices.json"
OPERATORS_FILE = "operators.json"
R = TypeVar("R", bound=BaseModel)


class User(BaseModel):
    """One identity a server admits: an nkey (public key) or, for the MQTT listener's
    anonymous devices, a name; `permissions` None means everything (the site itself)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    who: str = Field(description="Rendered as a comment: whose key this is.")
    nkey: str | None = None
    name: str | None = None
    password: str | None = None
    permissions: Permissions | None = None
    # Which listeners may admit it (nats-server's `allowed_connection_types`, e.g. "MQTT");
    # empty: any.
    connection_types: tuple[str, ...] = ()


def _q(value: object) -> str:
    """Quote a value for the nats-server config grammar (a JSON string is valid there)."""
    return json.dumps(str(value))


def _subjects(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def render_user(user: User, indent: str = "    ") -> list[str]:
    fields = []
    if user.nkey:
        fields.append(f"nkey: {_q(user.nkey)}")
    if user.name:
        fields += [f"user: {_q(user.name)}", f"password: {_q(user.password or '')}"]
    if user.connection_types:
        fields.append(f"allowed_connection_types: {_subjects(user.connection_types)}")
    if user.permissions is not None:
        allow = user.permissions
        deny = f", deny: {_subjects(allow.deny_publish)}" if allow.deny_publish else ""
        unsub = f", deny: {_subjects(allow.deny_subscribe)}" if allow.deny_subscribe else ""
        fields.append(
            f"permissions: {{publish: {{allow: {_subjects(allow.publish)}{deny}}}, "
            f"subscribe: {{allow: {_subjects(allow.subscribe)}{unsub}}}}}"
        )
    return [f"{indent}# {user.who}", indent + "{" + ", ".join(fields) + "}"]


def edge_users(registry: Registry, region: str) -> tuple[User, ...]:
    """Each edge a regional admits, with its link's permissions. Pending and revoked edges
    are not there: the server refuses them."""
    return tuple(
        User(
            who=f"edge {edge} (admitted {entry.at})",
            nkey=entry.nkey,
            permissions=permissions.edge_link(region, edge),
        )
        for edge, entry in sorted(registry.admitted.items())
    )


def render_users(admitted: tuple[User, ...]) -> str:
    lines = [
        "# Rendered by fleetbus from base.json and edges.json beside this file; the regional",
        "# daemon rewrites it as edges are admitted and revoked.",
        "users: [",
    ]
    for user in admitted:
        lines += render_user(user, "  ")
    return "\n".join([*lines, "]"]) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # no two writers share one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: tuple[User, ...]


class DeviceEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    password_hash: str = Field(description="bcrypt; the password itself was shown once, to the operator.")
    gateway: bool = False  # may speak for every device of the edge (a site gateway)
    at: datetime


class Devices(BaseModel):
    """An edge's MQTT credentials, by device id (`fleetbus device add`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: dict[str, DeviceEntry] = Field(default_factory=dict)


def device_users(devices: Devices) -> tuple[User, ...]:
    """Each device as a user of the MQTT listener only, pinned to its own topics."""
    return tuple(
        User(
            who=f"{'gateway' if entry.gateway else 'device'} {device} (added {entry.at})",
            name=device,
            password=entry.password_hash,
            permissions=permissions.gateway() if entry.gateway else permissions.device(device),
            connection_types=("MQTT",),
        )
        for device, entry in sorted(devices.devices.items())
    )


class AdmissionFiles(Generic[R]):
    """The admission directory beside one server's config: `base.json`, a registry (a
    regional's edges, an edge's devices) and the `users.conf` rendered from both."""

    def __init__(
        self,
        directory: Path,
        registry_file: str,
        model: type[R],
        registry_users: Callable[[R], tuple[User, ...]],
    ) -> None:
        self.directory, self.registry_file, self.model = directory, registry_file, model
        self.registry_users = registry_users

    @property
    def users_path(self) -> Path:
        return self.directory / USERS_FILE

    def base(self) -> tuple[User, ...]:
        path = self.directory / BASE_FILE
        try:
            return _Base.model_validate_json(path.read_text()).users
        except (OSError, ValidationError) as exc:
            msg = f"cannot read the admission base {path}: {exc}; render the server's config again"
            raise ConfigError(msg) from exc

    def registry(self) -> R:
        path = self.directory / self.registry_file
        try:
            return self.model.model_validate_json(path.read_text())
        except FileNotFoundError:
            return self.model()
        except (OSError, ValidationError) as exc:
            msg = f"cannot read the admission registry {path}: {exc}"
            raise ConfigError(msg) from exc

    def write(self, registry: R) -> None:
        """Save `registry` and render `users.conf` from it (the server reads it on reload)."""
        _write(self.directory / self.registry_file, registry.model_dump_json(indent=2) + "\n")
        _write(self.users_path, render_users((*self.base(), *self.registry_users(registry))))

    def setup(self, base: tuple[User, ...], initial: R) -> None:
        """Before the server starts: its base users now, the registry only if there is none
        yet (what the daemon admitted and revoked outlives a restart of the fleet)."""
        _write(self.directory / BASE_FILE, _Base(users=base).model_dump_json(indent=2) + "\n")
        registry = self.registry() if (self.directory / self.registry_file).exists() else initial
        self.write(registry)


class Operators(BaseModel):
    """The operators `fleetbus operator add` made, by name (revoked ones kept, refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    operators: dict[str, OperatorRecord] = Field(default_factory=dict)


def operator_users(registry: Operators) -> tuple[User, ...]:
    """Each operator not revoked, with its role's permissions at the hub."""
    return tuple(
        User(
            who=f"operator {name} ({record.role.value}, added by {record.added_by})",
            nkey=record.public_key,
            permissions=permissions.admin() if record.role is Role.ADMIN else permissions.viewer(),
        )
        for name, record in sorted(registry.operators.items())
        if record.revoked_at is None
    )


def hub_files(directory: Path) -> AdmissionFiles[Operators]:
    return AdmissionFiles(directory, OPERATORS_FILE, Operators, operator_users)


def regional_files(directory: Path, region: str) -> AdmissionFiles[Registry]:
    return AdmissionFiles(directory, EDGES_FILE, Registry, lambda registry: edge_users(registry, region))


def edge_files(directory: Path) -> AdmissionFiles[Devices]:
    return AdmissionFiles(directory, DEVICES_FILE, Devices, device_users)
