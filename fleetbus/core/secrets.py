"""Secret references in desired state, and what the hub seals for whom (docs/security.md#sealed-secrets).

Pure. A config value `{"secretRef": "<name>"}` anywhere in a profile's or an override's
document names a secret; the document itself never holds a value. `compute` pins each
reference to the secret's version (`{"secretRef": name, "version": n}`), so the desired hash
changes when a secret is rotated and an edge applies the new value; `explain` shows exactly
that, never the value.

`plan` is the hub's decision: given each edge's key and the secrets its desired state
references, and what the `sealed` bucket holds, which edges' bundles to (re)write and which
to delete.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fleetbus.core.mergepatch import Path
from schemas.base import TOKEN

REF = "secretRef"
VERSION = "version"
REGION_LABEL = "region"  # the label the hub sets from where it hears an edge (`hub/sealer.py`)


def _walk(value: Any, path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every mapping in `value` whose `secretRef` is a string (a reference), with its path.
    A `secretRef` holding anything else is not ours (Kubernetes' `envFrom: [{secretRef:
    {name: …}}]` in raw manifests) and is walked like any other value."""
    if isinstance(value, Mapping):
        if isinstance(value.get(REF), str):
            yield path, dict(value)
            return
        for key, child in value.items():
            yield from _walk(child, (*path, str(key)))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _walk(child, (*path, str(i)))


def located(document: Any) -> Iterator[tuple[Path, str]]:
    """(path, secret name) of every reference in `document`."""
    for path, ref in _walk(document):
        yield path, ref[REF]


def check_refs(document: Any, *, where: str) -> None:
    """ValueError naming the first malformed reference in an authored document: a reference
    is exactly `{"secretRef": "<name>"}`, the name a secret id (lower case, digits, - and _)."""
    for path, ref in _walk(document):
        at = ".".join((where, *path))
        name = ref[REF]
        if not TOKEN.match(name):
            msg = f"{at}: secretRef must name a secret (lower case, digits, - and _), not {name!r}"
            raise ValueError(msg)
        if set(ref) != {REF}:
            extra = ", ".join(sorted(set(ref) - {REF}))
            msg = f"{at}: a secret reference is {{secretRef: {name}}} alone; remove {extra}"
            raise ValueError(msg)


def refs(document: Any) -> set[str]:
    """The secrets `document` references."""
    return {ref[REF] for _, ref in _walk(document)}


def pin(document: Any, versions: Mapping[str, int]) -> tuple[Any, dict[Path, str]]:
    """`document` with each reference to a secret in `versions` pinned to its version, and
    the path of each pinned version with its source (`secret <name>`). References to secrets
    not in `versions` stay as they are (the edge does not hold that secret yet)."""
    pinned: dict[Path, str] = {}

    def visit(value: Any, path: Path) -> Any:
        if isinstance(value, Mapping):
            name = value.get(REF)
            if isinstance(name, str):
                if name in versions:
                    pinned[(*path, VERSION)] = f"secret {name}"
                    return {REF: name, VERSION: versions[name]}
                return dict(value)
            return {key: visit(child, (*path, key)) for key, child in value.items()}
        if isinstance(value, list):
            return [visit(child, (*path, str(i))) for i, child in enumerate(value)]
        return value

    return visit(document, ()), pinned


def unpinned(document: Any) -> set[str]:
    """References in a computed document that no version was pinned to."""
    return {ref[REF] for _, ref in _walk(document) if VERSION not in ref}


@dataclass(frozen=True)
class Wanted:
    """What one edge should hold: the key its boxes are sealed to, and secret -> version."""

    key: str
    versions: dict[str, int]


@dataclass(frozen=True)
class Plan:
    """The hub's writes to the `sealed` bucket: per edge to (re)write, the secrets to seal
    anew (the others keep their boxes); edges whose bundle goes."""

    write: dict[str, set[str]]
    delete: set[str]


def plan(wanted: Mapping[str, Wanted], held: Mapping[str, Wanted]) -> Plan:
    """Compare what each edge should hold with what its bundle holds (both as `Wanted`)."""
    write: dict[str, set[str]] = {}
    for edge, want in wanted.items():
        have = held.get(edge)
        if not want.versions:
            continue
        if have is None or have.key != want.key:
            write[edge] = set(want.versions)
        elif have.versions != want.versions:
            write[edge] = {n for n, v in want.versions.items() if have.versions.get(n) != v}
    delete = {edge for edge in held if not (wanted.get(edge) and wanted[edge].versions)}
    return Plan(write=write, delete=delete)
