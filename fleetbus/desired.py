"""The effective desired state of one edge: the pure function edges, `explain` and
compliance all share.

    profiles matching the edge's labels, in priority order (low to high, then by name)
      -> merged with JSON merge patch semantics
      -> then active group overrides, then active edge overrides (oldest first)
      = a document, its content hash, the profile revisions and overrides it came from,
        and for every value the layer that set it.

The document's shape: `{"components": {name: {"image", "version", "config"}}, "config": {}}`;
components are keyed by name so a higher-priority profile can change one component's version
without restating the others.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleetbus.mergepatch import Path, apply_tracked
from fleetbus.selector import matches
from schemas.base import TOKEN
from schemas.override import Override, OverrideScope
from schemas.profile import Profile

HASH_PREFIX = "sha256:"
DEFAULTS = "defaults"
GROUP_LABEL = "group"


@dataclass(frozen=True)
class DesiredState:
    document: dict[str, Any]
    hash: str
    profile_revisions: dict[str, int]
    overrides: tuple[str, ...]
    provenance: dict[Path, str] = field(compare=False)

    def explain(self) -> list[tuple[str, Any, str]]:
        """(dotted path, value, layer that set it) for every value, sorted by path."""
        rows = []
        for path, layer in sorted(self.provenance.items()):
            value: Any = self.document
            for key in path:
                value = value[key]
            rows.append((".".join(path) or "<root>", value, layer))
        return rows


def profile_layer(profile: Profile) -> dict[str, Any]:
    spec = profile.spec
    components = {
        c.name: {"image": c.image, "version": c.version, "config": dict(c.config)} for c in spec.components
    }
    return {"components": components, "config": dict(spec.config)}


def profile_source(profile: Profile) -> str:
    revision = f"@{profile.revision}" if profile.revision is not None else ""
    return f"profile {profile.name}{revision}"


def override_source(override: Override) -> str:
    return (
        f"override {override.target.scope.value}/{override.target.name} ({override.owner}: {override.reason})"
    )


def content_hash(document: Mapping[str, Any]) -> str:
    """Hash of the canonical JSON form: equal documents hash equal, whatever their key order."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return HASH_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


def edge_groups(region: str, labels: Mapping[str, str]) -> list[str]:
    """The groups an edge belongs to for overrides: its region, and its `group` label if that
    is a valid id (a group is a KV key token)."""
    group = labels.get(GROUP_LABEL, "")
    return [region, group] if TOKEN.match(group) and group != region else [region]


def applicable_overrides(
    overrides: Iterable[Override], *, edge: str, groups: Sequence[str], now: datetime
) -> list[Override]:
    """Active overrides for this edge: its groups' first, then its own; oldest first in each."""
    chosen = [
        o
        for o in overrides
        if o.active(now)
        and (
            (o.target.scope is OverrideScope.EDGE and o.target.name == edge)
            or (o.target.scope is OverrideScope.GROUP and o.target.name in groups)
        )
    ]
    return sorted(chosen, key=lambda o: (o.target.scope is OverrideScope.EDGE, o.created_at, o.target.name))


def compute(
    profiles: Iterable[Profile],
    labels: Mapping[str, str],
    *,
    edge: str,
    groups: Sequence[str] = (),
    overrides: Iterable[Override] = (),
    now: datetime,
) -> DesiredState:
    """The effective desired state of `edge`; pure: same inputs, same result and hash."""
    chosen = sorted((p for p in profiles if matches(p.selector, labels)), key=lambda p: (p.priority, p.name))
    provenance: dict[Path, str] = {}
    document: Any = apply_tracked(
        {}, {"components": {}, "config": {}}, source=DEFAULTS, provenance=provenance
    )
    for profile in chosen:
        document = apply_tracked(
            document, profile_layer(profile), source=profile_source(profile), provenance=provenance
        )
    applied = applicable_overrides(overrides, edge=edge, groups=groups, now=now)
    for override in applied:
        document = apply_tracked(
            document, override.patch, source=override_source(override), provenance=provenance
        )
    return DesiredState(
        document=document,
        hash=content_hash(document),
        profile_revisions={p.name: p.revision or 0 for p in chosen},
        overrides=tuple(override_source(o) for o in applied),
        provenance=provenance,
    )
