"""The effective desired state of one edge: the pure function edges, `explain` and
compliance all share.

    profiles matching the edge's labels, in priority order (low to high, then by name)
      -> merged with JSON merge patch semantics
      -> then active group overrides, then active edge overrides (oldest first)
      = a document, its content hash, the profile revisions and overrides it came from,
        and for every value the layer that set it.

The document's shape: `{"components": {name: {"image", "version", "config", ...}}, "config": {}}`;
components are keyed by name so a higher-priority profile can change one component's version
without restating the others. A component carries only the fields its profiles set (so adding
a field to the schema does not change existing hashes); its profile's `drift_policy` and
`namespace` are copied into it when the profile sets them. `telemetry` (device readings to
forward, keyed by topic filter, so a higher layer can change one rule's interval) appears only
when a layer sets it.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleetbus.core import secrets as secret_refs
from fleetbus.core.mergepatch import Path, apply_tracked
from fleetbus.core.selector import matches
from schemas.base import TOKEN
from schemas.override import Override, OverrideScope
from schemas.profile import Component, Profile, ProfileSpec

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
    # Component name -> the profile that introduced it (the lowest in merge order that lists
    # it): where a driver puts a component whose namespace no layer set, so an overlay that
    # changes its version does not move it. Components only an override adds have none.
    origins: dict[str, str] = field(default_factory=dict, compare=False)
    # Secret name -> plaintext, for the driver: filled in only at the edge, which opened its
    # sealed bundle; never part of the document or its hash (those carry versions only).
    secrets: Mapping[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    def explain(self) -> list[tuple[str, Any, str]]:
        """(dotted path, value, layer that set it) for every value, sorted by path."""
        rows = []
        for path, layer in sorted(self.provenance.items()):
            value: Any = self.document
            for key in path:
                value = value[key]
            rows.append((".".join(path) or "<root>", value, layer))
        return rows


_OPTIONAL_FIELDS = ("image", "version", "replicas", "env", "ports", "resources", "manifests", "namespace")


def component_layer(component: Component, spec: ProfileSpec) -> dict[str, Any]:
    layer: dict[str, Any] = {"config": dict(component.config)}
    dumped = component.model_dump(mode="json", include=set(_OPTIONAL_FIELDS), exclude_none=True)
    layer |= {key: value for key, value in dumped.items() if value not in ({}, [])}
    if "namespace" not in layer and spec.namespace:
        layer["namespace"] = spec.namespace
    if spec.drift_policy is not None:
        layer["drift_policy"] = spec.drift_policy.value
    return layer


def profile_layer(profile: Profile) -> dict[str, Any]:
    spec = profile.spec
    components = {c.name: component_layer(c, spec) for c in spec.components}
    layer: dict[str, Any] = {"components": components, "config": dict(spec.config)}
    if spec.telemetry:  # only when set: profiles without it keep their hashes
        layer["telemetry"] = {
            topic: rule.model_dump(mode="json", exclude_unset=True) for topic, rule in spec.telemetry.items()
        }
    return layer


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
    secrets: Mapping[str, int] | None = None,
    notes: Mapping[str, str] | None = None,
) -> DesiredState:
    """The effective desired state of `edge`; pure: same inputs, same result and hash.
    `secrets` (name -> version): pin each `secretRef` to that version (`fleetbus.core.secrets`).
    `notes` (profile name -> why): said beside that profile's layer (a rollout holding it back)."""
    chosen = sorted((p for p in profiles if matches(p.selector, labels)), key=lambda p: (p.priority, p.name))
    provenance: dict[Path, str] = {}
    origins: dict[str, str] = {}
    for profile in chosen:
        for component in profile.spec.components:
            origins.setdefault(component.name, profile.name)
    document: Any = apply_tracked(
        {}, {"components": {}, "config": {}}, source=DEFAULTS, provenance=provenance
    )
    for profile in chosen:
        source = profile_source(profile)
        if notes and profile.name in notes:
            source = f"{source} ({notes[profile.name]})"
        document = apply_tracked(document, profile_layer(profile), source=source, provenance=provenance)
    applied = applicable_overrides(overrides, edge=edge, groups=groups, now=now)
    for override in applied:
        document = apply_tracked(
            document, override.patch, source=override_source(override), provenance=provenance
        )
    if secrets is not None:
        document, pinned = secret_refs.pin(document, secrets)
        provenance.update(pinned)
    return DesiredState(
        document=document,
        hash=content_hash(document),
        profile_revisions={p.name: p.revision or 0 for p in chosen},
        overrides=tuple(override_source(o) for o in applied),
        provenance=provenance,
        origins={name: origins[name] for name in _component_names(document) if name in origins},
    )


def _component_names(document: Mapping[str, Any]) -> list[str]:
    components = document.get("components")
    return list(components) if isinstance(components, Mapping) else []
