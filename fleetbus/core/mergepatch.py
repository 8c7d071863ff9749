"""JSON Merge Patch (RFC 7386), recording which layer set each value.

One mechanism merges profiles (in priority order) and overrides on top of them: objects
merge key by key, `null` deletes, anything else (lists included) replaces.
"""

from collections.abc import Mapping
from typing import Any

Path = tuple[str, ...]


def apply(target: Any, patch: Any) -> Any:
    """RFC 7386 MergePatch(target, patch); never mutates its arguments."""
    return apply_tracked(target, patch, source="", provenance=None)


def apply_tracked(
    target: Any, patch: Any, *, source: str, provenance: dict[Path, str] | None, path: Path = ()
) -> Any:
    """`apply`, also recording in `provenance` that `source` set every leaf it wrote."""
    if not isinstance(patch, Mapping):
        _forget(provenance, path)
        _record(provenance, path, patch, source)
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    if not isinstance(target, Mapping):
        _forget(provenance, path)
    for key, value in patch.items():
        child = (*path, key)
        if value is None:
            result.pop(key, None)
            _forget(provenance, child)
        else:
            result[key] = apply_tracked(
                result.get(key), value, source=source, provenance=provenance, path=child
            )
    if provenance is not None:
        if result:
            provenance.pop(path, None)  # no longer a leaf: its children carry the sources
        else:
            provenance.setdefault(path, source)  # an empty object is a leaf value of its own
    return result


def leaves(document: Any, path: Path = ()) -> dict[Path, Any]:
    """Every leaf (a non-object, or an empty object) of `document`, by path."""
    if isinstance(document, Mapping) and document:
        out: dict[Path, Any] = {}
        for key, value in document.items():
            out |= leaves(value, (*path, key))
        return out
    return {path: document}


def _record(provenance: dict[Path, str] | None, path: Path, value: Any, source: str) -> None:
    if provenance is None:
        return
    for leaf_path in leaves(value, path):
        provenance[leaf_path] = source


def _forget(provenance: dict[Path, str] | None, path: Path) -> None:
    if provenance is None:
        return
    for known in [p for p in provenance if p[: len(path)] == path]:
        del provenance[known]
