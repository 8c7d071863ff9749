"""What each operator role may ask the hub's desk to do (docs/security.md#roles).

Pure: a role, its regions and a request's target in, a reason to refuse (or None) out.

- `admin`: everything;
- `operator`: profiles (and their rollouts), secrets and overrides; with regions, only
  overrides of edges in those regions (profiles, secrets and group overrides reach every
  region, so a region-scoped operator writes none of them);
- `viewer`: reads only.
"""

from collections.abc import Collection

from schemas.desk import Role

READS = frozenset({"whoami", "trust", "operator.ls", "secret.ls", "rollout.status"})
ROLLOUT_CONTROL = frozenset({"rollout.pause", "rollout.resume", "rollout.abort", "rollout.promote"})
PROFILE_WRITES = (
    frozenset({"profile.apply", "profile.rollback", "profile.delete", "secret.set", "secret.rm"})
    | ROLLOUT_CONTROL
)
OVERRIDE_WRITES = frozenset({"override.set", "override.remove"})
ADMIN_ONLY = frozenset({"operator.add", "operator.revoke", "token.create", "keys.resign"})
OPS = READS | PROFILE_WRITES | OVERRIDE_WRITES | ADMIN_ONLY


def forbidden(
    role: Role,
    regions: Collection[str],
    op: str,
    *,
    scope: str | None = None,
    target_region: str | None = None,
) -> str | None:
    """Why `role` (scoped to `regions`, empty: all) may not do `op`; None if it may. For
    overrides, `scope` is `edge` or `group` and `target_region` the edge's region (None if
    the hub does not know the edge)."""
    if op not in OPS:
        return f"there is no operation {op!r}"
    if op in READS or role is Role.ADMIN:
        return None
    if role is Role.VIEWER or op in ADMIN_ONLY:
        return f"role {role.value} may not {op}"
    return _outside(regions, op, scope, target_region) if regions else None


def _outside(regions: Collection[str], op: str, scope: str | None, target_region: str | None) -> str | None:
    """Why an operator of `regions` may not do `op` (a profile or override write) there."""
    who = f"an operator of regions {', '.join(sorted(regions))}"
    if op in PROFILE_WRITES:
        why = f"{who} may not {op}: {op.split('.', maxsplit=1)[0]}s reach every region"
    elif scope != "edge":
        why = f"{who} may write overrides of its regions' edges only, not of groups"
    elif target_region is None:
        why = f"the hub does not hear this edge from exactly one region; {who} may not write its override"
    elif target_region not in regions:
        why = f"the edge is in region {target_region}; {who} may not write its override"
    else:
        return None
    return why
