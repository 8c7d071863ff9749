"""What a regional hands each of its edges (docs/security.md#edges-receive-only-what-concerns-them).

An edge's link may read only its own keys of its regional's `assigned` bucket, so it holds
only the desired state that concerns it: copies of the signed records of the profiles that
select it and of its groups' overrides. A copy keeps the hub's signature, so the regional
decides only *which* records an edge gets, never what they say; and since an edge keeps
what it took until a signed record replaces it, leaving a record out deletes nothing.

Per (edge, profile): a profile selecting the edge (by the labels it enrolled with) is
handed as it is; where a profile the edge holds stops selecting it (its selector or the
edge's labels changed), the edge gets the revision's *stub*, its name and selector signed
by the hub, which the edge takes only if the selector indeed does not select it; a deleted
profile's signed delete reaches the edges that hold it. Per (edge, group override): the
current record while the edge is in the group; after it leaves, nothing more (the edge
computes its groups from its own labels and ignores the override).

Pure: the shell (`regional.assigner`) reads the regional's replicas and writes the copies.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace

from fleetbus.core.selector import matches
from fleetbus.core.trust import DELETE, PUT, STUB_OPERATION, Record
from schemas import subjects
from schemas.profile import LabelSelector


@dataclass(frozen=True)
class Current:
    """The regional's latest record of a profile or group override: its signed revision,
    PUT or DEL, and a profile's selector (None for an override or a delete)."""

    revision: int
    operation: str
    selector: LabelSelector | None = None


@dataclass(frozen=True)
class Held:
    """What the `assigned` bucket holds for one edge and key: a revision and PUT, DEL or STUB."""

    revision: int
    operation: str


def origin(record: Record) -> Record:
    """A record of `assigned` as the hub signed it: `<edge>.profile.<name>` is the hub's
    `profiles` record `<name>`, `<edge>.group.<group>` its `overrides` record `group.<group>`
    (what an edge's replica stores it as, by a subject transform; a reader of `assigned`
    itself, a hollow edge, verifies it as that). Any other record: as it is."""
    if record.bucket != subjects.ASSIGNED_BUCKET:
        return record
    _edge, kind, name = [*record.key.split(".", 2), "", ""][:3]
    if kind == subjects.ASSIGNED_PROFILE and name:
        return replace(record, bucket=subjects.PROFILES_BUCKET, key=name)
    if kind == subjects.ASSIGNED_GROUP and name:
        return replace(record, bucket=subjects.OVERRIDES_BUCKET, key=f"{subjects.ASSIGNED_GROUP}.{name}")
    return record


def for_profile(current: Current, labels: Mapping[str, str], held: Held | None) -> Held | None:
    """What to write for one profile and one edge with `labels`, given what it holds; None:
    nothing (what it holds is right).

    A stub or a delete goes only to an edge that holds a record of the profile: its
    revision, or an older stub (kept current, so that a label change never makes an older
    revision's selector decide)."""
    if current.operation == DELETE:
        want = DELETE
    elif current.selector is not None and matches(current.selector, labels):
        want = PUT
    else:
        want = STUB_OPERATION
    if want != PUT and (held is None or held.operation == DELETE):
        return None  # nothing of it held: nothing to take back
    return _unless_held(Held(current.revision, want), held)


def for_group(current: Current, held: Held | None, *, member: bool) -> Held | None:
    """What to write for one group's override and one edge (`member`: of that group)."""
    if not member or (current.operation == DELETE and held is None):
        return None
    return _unless_held(Held(current.revision, current.operation), held)


def _unless_held(want: Held, held: Held | None) -> Held | None:
    return None if want == held else want
