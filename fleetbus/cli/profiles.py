"""`fleetbus profile|override|explain|status`: the hub's profile authority from a terminal.

Every command connects to the hub (`--hub`, $FLEETBUS_HUB_URL, or the running dev fleet),
does one thing and exits with the code `fleetbus.errors.EXIT_CODES` gives: 0 on success, 2 on
a user error (bad file, unknown name), 3 when the hub cannot be reached, 4 when a
compare-and-set lost (`--expect-revision`).
"""

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from fleetbus.cli import rollouts
from fleetbus.cli.kit import AsJson, Creds, HubUrl, Reason, StateDir, err, out, with_client
from fleetbus.core.selector import matches
from fleetbus.errors import ConfigError, ConflictError
from fleetbus.sdk.client import FleetClient
from fleetbus.sdk.documents import (
    Plan,
    content,
    diff,
    load_document,
    load_mapping,
    render_yaml,
)
from fleetbus.sdk.stores import StoredOverride
from schemas.authoring import unknown_patch_keys
from schemas.base import check_token, utcnow
from schemas.override import OverrideScope
from schemas.profile import Profile

T = TypeVar("T")

profile_app = typer.Typer(help="Profiles: versioned desired state, stored at the hub.", no_args_is_help=True)
override_app = typer.Typer(help="Overrides: per-edge or per-group exceptions.", no_args_is_help=True)


def _print_diff(text: str) -> None:
    for line in text.splitlines():
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
        out.print(line, style=style, highlight=False, markup=False)


def _report_plan(plan: Plan, *, dry_run: bool) -> None:
    name = plan.new.name
    if not plan.changed:
        revision = plan.current.revision if plan.current else "?"
        out.print(f"profile {name!r} unchanged (revision {revision}); nothing published")
        return
    _print_diff(plan.diff)
    if dry_run:
        out.print(f"dry run: profile {name!r} would become revision {plan.new.revision}; nothing published")
    else:
        out.print(f"profile {name!r} is now revision {plan.new.revision}")


@profile_app.command("apply")
def profile_apply(
    file: Annotated[Path, typer.Option("-f", "--file", help="Profile as YAML or JSON.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show the diff only.")] = False,
    expect_revision: Annotated[
        int | None,
        typer.Option("--expect-revision", help="Apply only if the current revision is N (0: new).", min=0),
    ] = None,
    reason: Reason = "",
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow its rollout until done, like `rollout status --wait`.")
    ] = False,
    timeout: rollouts.Timeout = None,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Validate a profile, show its diff against the current revision, publish it."""
    profile = load_document(file, Profile)  # before connecting: a bad file never reaches the hub
    limit = rollouts.parse_timeout(timeout)

    async def work(fleet: FleetClient) -> tuple[Plan, int, int]:
        # The edges the hub knows now (their last inventory carries their labels).
        known = await fleet.inventory()
        selected = sum(1 for snapshot in known if matches(profile.selector, snapshot.labels))
        if dry_run:
            plan = await fleet.profiles.plan(profile)
            current = plan.current.revision or 0 if plan.current else 0
            if expect_revision is not None and expect_revision != current:
                msg = f"profile {profile.name!r} is at revision {current}, not {expect_revision}"
                raise ConflictError(msg)
            return plan, selected, len(known)
        plan = await fleet.profiles.apply(profile, expect_revision=expect_revision, reason=reason)
        return plan, selected, len(known)

    plan, selected, known = with_client(hub, state_dir, work)  # a ConflictError exits 4
    _report_plan(plan, dry_run=dry_run)
    would = "would select" if dry_run else "selects"
    out.print(f"profile {profile.name!r} {would} {selected} of {known} edges the hub knows now")
    if dry_run or not wait:
        return
    # Unchanged: follow the current revision's rollout (a re-run waits for what runs).
    stored = plan.new if plan.changed else plan.current
    if stored is None or stored.rollout is None:
        out.print(f"profile {profile.name!r} has no rollout: every edge it selects gets it now")
        return

    async def follow(fleet: FleetClient) -> int:
        return await rollouts.follow(
            fleet, profile.name, revision=stored.revision, timeout=limit, as_json=False
        )

    raise typer.Exit(with_client(hub, state_dir, follow))


@profile_app.command("ls")
def profile_ls(
    as_json: AsJson = False, hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None
) -> None:
    """List profiles in merge order (priority, then name)."""

    async def work(fleet: FleetClient) -> list[Profile]:
        found = await fleet.profiles.all()
        for problem in fleet.profiles.undecodable:
            err.print(
                f"[yellow]warning:[/] skipped an undecodable value under key {problem}", highlight=False
            )
        return found

    profiles = with_client(hub, state_dir, work)
    if as_json:
        out.print_json(data=[p.model_dump(mode="json") for p in profiles])
        return
    table = Table("name", "revision", "priority", "selector", "components", "updated")
    for p in profiles:
        selector = ", ".join(f"{k}={v}" for k, v in p.selector.match_labels.items())
        selector += (", " if selector else "") + ", ".join(
            f"{r.key} {r.operator.value} {r.values}" for r in p.selector.match_expressions
        )
        table.add_row(
            p.name,
            str(p.revision),
            str(p.priority),
            selector or "(every site)",
            ", ".join(f"{c.name}:{c.version}" for c in p.spec.components),
            f"{p.updated_at:%Y-%m-%d %H:%M} {p.updated_by or ''}" if p.updated_at else "",
        )
    out.print(table if profiles else "no profiles")


@profile_app.command("show")
def profile_show(
    name: str,
    revision: Annotated[int | None, typer.Option("--revision", help="An earlier revision.", min=1)] = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Print a profile (current revision, or `--revision N`)."""
    profile = with_client(hub, state_dir, lambda f: f.profiles.get(name, revision))
    if as_json:
        out.print_json(data=profile.model_dump(mode="json"))
    else:
        out.print(f"# revision {profile.revision}, by {profile.updated_by} at {profile.updated_at}")
        out.print(render_yaml(content(profile)), highlight=False, markup=False, end="")


@profile_app.command("history")
def profile_history(name: str, hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None) -> None:
    """Revisions of a profile still kept at the hub (16 most recent)."""
    history = with_client(hub, state_dir, lambda f: f.profiles.history(name))
    if not history:
        raise ConfigError(f"no profile named {name!r} in the hub's history")
    table = Table("revision", "updated", "by", "components")
    for p in history:
        table.add_row(
            str(p.revision),
            f"{p.updated_at:%Y-%m-%d %H:%M:%S}" if p.updated_at else "",
            p.updated_by or "",
            ", ".join(f"{c.name}:{c.version}" for c in p.spec.components),
        )
    out.print(table)


@profile_app.command("diff")
def profile_diff(
    name: str,
    a: Annotated[int, typer.Argument(help="Older revision.")],
    b: Annotated[int, typer.Argument(help="Newer revision.")],
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Show what changed between two revisions."""

    async def work(fleet: FleetClient) -> str:
        old, new = await fleet.profiles.get(name, a), await fleet.profiles.get(name, b)
        return diff(old, new, old_label=f"{name}@{a}", new_label=f"{name}@{b}")

    text = with_client(hub, state_dir, work)
    if text:
        _print_diff(text)
    else:
        out.print(f"revisions {a} and {b} of {name!r} have the same content")


@profile_app.command("rollback")
def profile_rollback(
    name: str,
    to: Annotated[int, typer.Option("--to", help="Revision whose content to publish again.", min=1)],
    reason: Reason = "",
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Publish an earlier revision's content as a new revision."""
    plan = with_client(hub, state_dir, lambda f: f.profiles.rollback(name, to, reason=reason))
    _report_plan(plan, dry_run=False)


@profile_app.command("delete")
def profile_delete(
    name: str, reason: Reason = "", hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None
) -> None:
    """Delete a profile: edges stop applying it (its history stays at the hub)."""
    profile = with_client(hub, state_dir, lambda f: f.profiles.delete(name, reason=reason))
    out.print(f"profile {name!r} deleted (was revision {profile.revision})")


_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_expiry(text: str, now: datetime, *, option: str = "--expires", past: bool = False) -> datetime:
    """`30m`, `2h`, `7d` from now (`past`: before now), or an ISO-8601 time with a zone."""
    if match := _DURATION.match(text.strip()):
        span = timedelta(**{_UNITS[match[2]]: int(match[1])})
        return now - span if past else now + span
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        msg = f"{option} {text!r}: use a duration (30m, 2h, 7d) or an ISO-8601 time with a zone"
        raise ConfigError(msg)
    return when


def _target(target: str, *, group: bool) -> tuple[OverrideScope, str]:
    try:
        check_token(target)
    except ValueError as exc:
        raise ConfigError(f"override target: {exc}") from None
    return (OverrideScope.GROUP if group else OverrideScope.EDGE), target


GroupFlag = Annotated[
    bool, typer.Option("--group", help="TARGET is a group (a region id or a `group` label value).")
]


@override_app.command("set")
def override_set(
    target: Annotated[str, typer.Argument(help="Edge id (or group name with --group).")],
    file: Annotated[Path, typer.Option("-f", "--file", help="JSON merge patch, YAML or JSON.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; shown by `explain`.")],
    expires: Annotated[
        str | None, typer.Option("--expires", help="30m, 2h, 7d or an ISO time; stops applying after.")
    ] = None,
    group: GroupFlag = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Set the override of one edge or group (replaces the previous one)."""
    scope, name = _target(target, group=group)
    patch = _load_patch(file)
    expires_at = parse_expiry(expires, utcnow()) if expires else None
    if not reason.strip():
        msg = "--reason must not be empty: say why this site is an exception"
        raise ConfigError(msg)
    stored = with_client(
        hub,
        state_dir,
        lambda f: f.overrides.set(scope, name, patch, reason=reason, expires_at=expires_at),
    )
    until = (
        f", expires {stored.override.expires_at:%Y-%m-%d %H:%M:%S %Z}" if stored.override.expires_at else ""
    )
    out.print(f"override {stored.key} set{until}")


def _load_patch(file: Path) -> dict[str, Any]:
    data = load_mapping(file)
    if not data:
        msg = f"{file}: a merge patch must be a non-empty mapping"
        raise ConfigError(msg)
    if unknown := unknown_patch_keys(data):
        lines = [f"{file}: not a valid patch of the desired state:", *(f"  {u}" for u in unknown)]
        raise ConfigError("\n".join(lines))
    return data


@override_app.command("ls")
def override_ls(
    as_json: AsJson = False, hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None
) -> None:
    """List overrides, with who set them, why, and until when."""

    async def work(fleet: FleetClient) -> tuple[list[StoredOverride], list[str]]:
        return await fleet.overrides.all(), fleet.overrides.undecodable

    stored, problems = with_client(hub, state_dir, work)
    for problem in problems:
        err.print(f"[yellow]warning:[/] skipped an undecodable value under key {problem}", highlight=False)
    now = utcnow()
    if as_json:
        out.print_json(data=[{"key": s.key, **s.override.model_dump(mode="json")} for s in stored])
        return
    table = Table("target", "owner", "reason", "expires", "patch")
    for s in stored:
        o = s.override
        expiry = f"{o.expires_at:%Y-%m-%d %H:%M}" if o.expires_at else "never"
        if not o.active(now):
            expiry += " (expired)"
        table.add_row(s.key, o.owner, o.reason, expiry, json.dumps(o.patch, sort_keys=True))
    out.print(table if stored else "no overrides")


@override_app.command("rm")
def override_rm(
    target: str,
    group: GroupFlag = False,
    reason: Reason = "",
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """Remove the override of one edge or group."""
    scope, name = _target(target, group=group)
    with_client(hub, state_dir, lambda f: f.overrides.remove(scope, name, reason=reason))
    out.print(f"override {scope.value}.{name} removed")


def explain(
    edge: Annotated[str, typer.Argument(help="Edge id.")],
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="KEY=VALUE; explain for these labels instead of the reported ones."),
    ] = None,
    region: Annotated[str | None, typer.Option("--region", help="Region, with --label.")] = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """The effective desired state of an edge and, for each value, the layer that set it."""
    labels = None
    if label:
        labels = {}
        for item in label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--label {item!r}: use KEY=VALUE")
            labels[key] = value
    desired, report = with_client(hub, state_dir, lambda f: f.explain(edge, labels=labels, region=region))
    if as_json:
        out.print_json(
            data={
                "edge": edge,
                "hash": desired.hash,
                "profile_revisions": desired.profile_revisions,
                "overrides": list(desired.overrides),
                "document": desired.document,
                "values": [{"path": p, "value": v, "source": s} for p, v, s in desired.explain()],
            }
        )
        return
    out.print(f"edge {edge}: desired {desired.hash}")
    revisions = ", ".join(f"{n}@{r}" for n, r in desired.profile_revisions.items()) or "none"
    out.print(f"profiles: {revisions}")
    if report and report.apply_result:
        result = report.apply_result
        same = "same" if result.desired_hash == desired.hash else "DIFFERENT"
        out.print(
            f"last report: {result.status.value} {result.desired_hash} ({same}) at {report.observed_at}"
        )
    table = Table("path", "value", "set by")
    for path, value, source in desired.explain():
        table.add_row(path, json.dumps(value), source)
    out.print(table)
