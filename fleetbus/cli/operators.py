"""`fleetbus operator add|ls|revoke`, `fleetbus secret set|ls|rm` and `fleetbus audit`: who may
write, what they keep secret, and who did what.

Each is a request to the hub's desk, signed with your operator key (`hub.desk`); `audit`
reads the hub's AUDIT stream.
"""

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fleetbus.cli.kit import AsJson, Creds, HubUrl, Reason, StateDir, check_ids, out, with_client
from fleetbus.cli.sites import parse_duration
from fleetbus.errors import ConfigError
from fleetbus.runtime import identity
from fleetbus.sdk.client import FleetClient
from schemas.base import utcnow
from schemas.desk import Role

operator_app = typer.Typer(help="Operators of the fleet and their roles (admin only).", no_args_is_help=True)


@operator_app.command("add")
def operator_add(
    name: Annotated[str, typer.Argument(help="The operator's name, e.g. alice (the audit trail shows it).")],
    role: Annotated[Role, typer.Option(help="admin (all), operator (profiles, overrides), viewer (read).")],
    region: Annotated[
        list[str] | None,
        typer.Option("--region", help="An operator of these regions only writes their edges' overrides."),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where the new key is written (<out>/<name>.nk, mode 0600).")
    ] = Path(),
    reason: Reason = "",
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Make an operator: a key pair is generated here (hand the seed file to the operator,
    who passes it with --creds); the hub learns the public key and the role."""
    check_ids(("NAME", name), *(("--region", r) for r in region or ()))
    if region and role is not Role.OPERATOR:
        msg = (
            f"--region scopes an operator; a {role.value} has no scope (drop --region or use --role operator)"
        )
        raise ConfigError(msg)
    if (out_dir / f"{name}{identity.SEED_SUFFIX}").exists():
        msg = f"{out_dir / (name + identity.SEED_SUFFIX)} exists already: choose another --out or name"
        raise ConfigError(msg)
    key = identity.ensure(out_dir, name)

    async def add(fleet: FleetClient) -> dict[str, Any]:
        args = {"name": name, "public_key": key.public_key, "role": role.value, "regions": list(region or [])}
        return (await fleet.desk.call("operator.add", reason=reason, **args)).result

    try:
        record = with_client(hub, state_dir, add)
    except BaseException:
        key.seed_path.unlink(missing_ok=True)  # not admitted: no key left lying around
        raise
    if as_json:
        out.print_json(json.dumps(record | {"creds": str(key.seed_path)}))
        return
    scope = f" of regions {', '.join(region)}" if region else ""
    out.print(f"operator {name} added as {role.value}{scope}; its key: {key.seed_path} (--creds)")


@operator_app.command("ls")
def operator_ls(
    as_json: AsJson = False, hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None
) -> None:
    """List the operators the hub knows, with their roles (revoked ones marked)."""

    async def ls(fleet: FleetClient) -> list[dict[str, Any]]:
        found = (await fleet.desk.call("operator.ls")).result.get("operators")
        return [dict(r) for r in found] if isinstance(found, list) else []  # type: ignore[arg-type]

    rows = with_client(hub, state_dir, ls)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "role", "regions", "added by", "revoked")
    for row in rows:
        table.add_row(
            row["name"],
            row["role"],
            ", ".join(row.get("regions") or []) or "all",
            row["added_by"],
            row.get("revoked_at") or "",
        )
    out.print(table)


@operator_app.command("revoke")
def operator_revoke(
    name: str, reason: Reason = "", hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None
) -> None:
    """Revoke an operator: the hub's server refuses its key and closes its connections."""
    check_ids(("NAME", name))
    with_client(hub, state_dir, lambda f: f.desk.call("operator.revoke", reason=reason, name=name))
    out.print(f"operator {name} revoked: its key is refused")


token_app = typer.Typer(
    help="Tokens for the hub's dashboard and JSON API (admin only).", no_args_is_help=True
)


@token_app.command("create")
def token_create(
    role: Annotated[Role, typer.Option(help="viewer (reads; what dashboards need), or admin/operator.")],
    expires: Annotated[str, typer.Option(help="How long it is valid: 30m, 24h, 30d (up to 365d).")] = "30d",
    region: Annotated[
        list[str] | None,
        typer.Option("--region", help="Show only these regions' edges (repeat it); every region without."),
    ] = None,
    reason: Reason = "",
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Print a token for the dashboard and API (`Authorization: Bearer <token>`), signed by
    the hub; the audit trail records who asked for it (never the token)."""
    check_ids(*(("--region", r) for r in region or ()))
    seconds = int(parse_duration("--expires", expires).total_seconds())
    regions = list(region or [])
    reply = with_client(
        hub,
        state_dir,
        lambda f: f.desk.call(
            "token.create", reason=reason, role=role.value, expires_seconds=seconds, regions=regions
        ),
    )
    if as_json:
        out.print_json(json.dumps(reply.result))
        return
    print(reply.result["token"])  # alone on stdout: TOKEN=$(fleetbus token create --role viewer)


keys_app = typer.Typer(help="The hub's desired-state signing keys (docs/security.md).", no_args_is_help=True)


@keys_app.command("ls")
def keys_ls(hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None) -> None:
    """The public keys the hub signs desired state with (what edges pin: `trusted_keys`)."""
    for key in with_client(hub, state_dir, lambda f: f.hub_keys()):
        print(key)


@keys_app.command("resign")
def keys_resign(
    reason: Reason = "", hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None
) -> None:
    """Store every profile and override again, signed with the hub's current key: the step
    of a key rotation after the hub switched keys, before edges drop the old one."""
    reply = with_client(hub, state_dir, lambda f: f.desk.call("keys.resign", reason=reason))
    done = reply.result
    out.print(
        f"{done['profiles']} profile(s) and {done['overrides']} override(s) now signed by {done['key']}"
    )


def audit(
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d.")] = "24h",
    actor: Annotated[str | None, typer.Option("--actor", help="Only this operator's requests.")] = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Every write request the hub handled: who (as the hub verified it), what, why, when, and
    whether it was done, refused or failed."""
    window = parse_duration("--since", since)
    records = with_client(hub, state_dir, lambda f: f.audit(since=utcnow() - window))
    records = [r for r in records if actor is None or r.actor == actor]
    if as_json:
        out.print_json(json.dumps([r.model_dump(mode="json") for r in records]))
        return
    table = Table("time", "actor", "op", "target", "rev", "outcome", "reason", "detail")
    for r in records:
        detail = r.detail.splitlines()[0] if r.detail else ""
        table.add_row(
            f"{r.at:%Y-%m-%d %H:%M:%S}",
            r.actor,
            r.op,
            r.target,
            str(r.revision or ""),
            r.outcome,
            r.reason,
            detail,
        )
    out.print(table if records else f"no audit records in the last {since}")


secret_app = typer.Typer(
    help="Secrets profiles reference as {secretRef: NAME}, sealed end to end (docs/security.md).",
    no_args_is_help=True,
)


@secret_app.command("set")
def secret_set(
    name: Annotated[str, typer.Argument(help="The secret's name, as profiles reference it.")],
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="Read the value from this file (as bytes).")
    ] = None,
    from_env: Annotated[
        str | None, typer.Option("--from-env", help="Read the value from this environment variable.")
    ] = None,
    reason: Reason = "",
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Store the next version of a secret: the value is sealed to the hub's key here (read
    from --from-file, --from-env or standard input, never from the command line), and reaches
    only the edges whose desired state references it, sealed to each edge's key."""
    check_ids(("NAME", name))
    value = _secret_value(from_file, from_env)
    version = with_client(hub, state_dir, lambda f: f.secrets.set(name, value, reason=reason))
    out.print(f"secret {name} is at version {version}; edges that reference it get it sealed to their key")


def _secret_value(from_file: Path | None, from_env: str | None) -> bytes:
    if from_file is not None and from_env is not None:
        msg = "give --from-file or --from-env, not both"
        raise ConfigError(msg)
    if from_file is not None:
        try:
            value = from_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read --from-file {from_file}: {exc.strerror or exc}") from None
    elif from_env is not None:
        if from_env not in os.environ:
            raise ConfigError(f"--from-env {from_env}: that variable is not set")
        value = os.environ[from_env].encode()
    elif sys.stdin.isatty():  # typed: not echoed, one line
        value = getpass.getpass("secret value (not echoed): ").encode()
    else:  # piped: as given, bytes and all (a trailing newline too)
        value = sys.stdin.buffer.read()
    if not value:
        msg = "the secret's value is empty: give it with --from-file, --from-env or on stdin"
        raise ConfigError(msg)
    return value


@secret_app.command("ls")
def secret_ls(
    as_json: AsJson = False, hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None
) -> None:
    """Each secret's name and version, and who set it when (never a value)."""
    rows = with_client(hub, state_dir, lambda f: f.secrets.ls())
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "version", "sealed to", "set by", "at")
    for r in rows:
        table.add_row(
            r["name"],
            str(r["version"]),
            str(r["sealed_to"])[:12] + "…",
            str(r.get("updated_by") or ""),
            str(r.get("updated_at") or ""),
        )
    out.print(table if rows else "no secrets")


@secret_app.command("rm")
def secret_rm(
    name: Annotated[str, typer.Argument(help="The secret to remove.")],
    reason: Reason = "",
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Remove a secret: edges keep what they applied; a desired state still referencing it
    waits (nothing is applied) until it is set again."""
    check_ids(("NAME", name))
    with_client(hub, state_dir, lambda f: f.secrets.rm(name, reason=reason))
    out.print(f"secret {name} removed")
