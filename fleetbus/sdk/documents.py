"""Authored documents: read a profile or override file strictly, diff and render profiles.

Strict where people write: `load_document` refuses unknown keys with a suggestion, and every
error names the file, the field path and the problem. Nothing here talks to the hub.
"""

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from fleetbus.errors import ConfigError
from schemas.authoring import unknown_keys
from schemas.base import Message
from schemas.codec import check_text, check_tree
from schemas.profile import Profile

M = TypeVar("M", bound=Message)

# Fields the authority sets; not part of what a user writes or what a diff compares.
STAMPS = {"revision", "updated_by", "updated_at"}


def load_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON file whose top level is a mapping; errors name the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        msg = f"{path}: cannot read: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        raise ConfigError(msg) from exc
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        msg = f"{path}: not valid YAML or JSON: {exc}"
        raise ConfigError(msg) from exc
    except RecursionError as exc:
        msg = f"{path}: nested too deeply to read"
        raise ConfigError(msg) from exc
    except (ValueError, TypeError) as exc:  # e.g. an integer of 5,000 digits
        msg = f"{path}: cannot read a value: {exc}"
        raise ConfigError(msg) from exc
    # e.g. aliases of aliases that expand to billions of values; "\ud800", which cannot be sent
    if problem := check_tree(data) or check_text(data):
        msg = f"{path}: refused: {problem}"
        raise ConfigError(msg)
    if not isinstance(data, dict):
        msg = f"{path}: expected a mapping at the top level, got {type(data).__name__}"
        raise ConfigError(msg)
    return data


def load_document(path: Path, cls: type[M]) -> M:
    """Read a YAML or JSON file as a `cls`; errors name the file, the field path and the problem."""
    data = load_mapping(path)
    # Strict where people write: the models accept unknown fields (from newer senders on the
    # wire), a person's typo must not pass that way.
    if unknown := unknown_keys(cls, data):
        noun = cls.SCHEMA.removeprefix("fleet.")
        raise ConfigError("\n".join([f"{path}: not a valid {noun}:", *(f"  {u}" for u in unknown)]))
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: not a valid {cls.SCHEMA.removeprefix('fleet.')}:"]
        for item in exc.errors():
            # A dict key's own error ends its path with "[key]": the key is the place.
            where = ".".join(str(p) for p in item["loc"] if p not in ("[key]", "")) or "<document>"
            got = f" (got {item['input']!r})" if item["type"] != "missing" else ""
            lines.append(f"  {where}: {item['msg']}{got}")
        raise ConfigError("\n".join(lines)) from None


def content(profile: Profile) -> dict[str, Any]:
    """What a user wrote: the profile without the authority's stamps, and without the fields
    left at their defaults (a diff shows the change, not `replicas: null` on every line)."""
    return profile.model_dump(mode="json", exclude=STAMPS, exclude_defaults=True)


def render_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def diff(old: Profile | None, new: Profile, *, old_label: str = "current", new_label: str = "new") -> str:
    """Unified diff of two profiles' content (empty when equal)."""
    before = render_yaml(content(old)).splitlines(keepends=True) if old else []
    after = render_yaml(content(new)).splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, fromfile=old_label, tofile=new_label))


@dataclass(frozen=True)
class Plan:
    """What `apply` would do: the profile as it would be stored, and the diff to the current."""

    current: Profile | None
    new: Profile
    diff: str

    @property
    def changed(self) -> bool:
        return self.current is None or content(self.current) != content(self.new)
