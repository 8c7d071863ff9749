"""Strict where people write: documents a person authors refuse keys the model does not have.

Wire messages accept unknown fields (a newer sender's additions pass through an older
reader), so the models themselves allow extras. A person's typo must not pass that way:
`match_lables: {env: dev}` became an empty selector and targeted every edge. Before an authored
document is validated, `unknown_keys` walks it beside its model and names every key the model
(or a nested model) does not know, with its path and the closest valid key. Free-form parts
(`config`, raw manifests, label maps) stay free-form: only model fields are checked.
"""

import difflib
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo

from schemas.profile import TelemetryRule


def _fields(cls: type[BaseModel]) -> dict[str, FieldInfo]:
    """Every key that sets a field of `cls` (its name and its aliases), to that field."""
    keys: dict[str, FieldInfo] = {}
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        aliases: list[object] = [name, field.alias, *choices]
        keys |= {a: field for a in aliases if isinstance(a, str)}
    return keys


def suggestion(key: str, valid: list[str]) -> str:
    """ "did you mean `x`?" for the closest valid key, else the list of valid keys."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    return "valid keys: " + ", ".join(f"`{v}`" for v in sorted(valid))


def unknown_keys(cls: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """One line per key of `data` (and of its nested models) that `cls` does not know:
    `selector.match_lables: unknown key; did you mean `match_labels`?`."""
    if not isinstance(data, dict):
        return []  # the wrong type is validation's to report
    fields = _fields(cls)
    problems = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        field = fields.get(key)
        if field is None:
            problems.append(f"{where}: unknown key; {suggestion(str(key), sorted(cls.model_fields))}")
        else:
            problems += _check(field.annotation, value, where)
    return problems


def _check(annotation: Any, value: Any, path: str) -> list[str]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _check(get_args(annotation)[0], value, path)
    if origin in (Union, types.UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return _check(models[0], value, path) if models else []
    if origin is list and isinstance(value, list):
        (inner,) = get_args(annotation) or (Any,)
        return [p for i, item in enumerate(value) for p in _check(inner, item, f"{path}[{i}]")]
    if origin is dict and isinstance(value, dict):
        args = get_args(annotation)
        inner = args[1] if len(args) == 2 else Any
        return [p for key, item in value.items() for p in _check(inner, item, f"{path}.{key}")]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return unknown_keys(annotation, value, path)
    return []


class _ComponentPatch(BaseModel):
    """The keys of one component in the desired document (`fleetbus.core.desired`)."""

    image: Any = None
    version: Any = None
    config: Any = None
    replicas: Any = None
    env: Any = None
    ports: Any = None
    resources: Any = None
    manifests: Any = None
    namespace: Any = None
    drift_policy: Any = None


class _DocumentPatch(BaseModel):
    """The keys of the desired document an override's merge patch may change."""

    components: dict[str, _ComponentPatch] = {}
    config: Any = None
    telemetry: dict[str, TelemetryRule] = {}


def unknown_patch_keys(patch: Any) -> list[str]:
    """`unknown_keys` for an override's JSON merge patch, which applies to the desired document
    (`components` keyed by name, `config`, `telemetry`), not to a profile."""
    return unknown_keys(_DocumentPatch, patch)
