"""Compliance at the hub: does each edge run what the hub wants it to run?

Pure. For each edge that reported, the hub recomputes the edge's desired state from the
current profiles and overrides and the labels/groups the edge reported, with the same
function the edge uses (`fleetbus.core.desired.compute`), and compares hashes:

    converged   last report's hash = desired hash, and that apply did not fail
    failed      the last report is a failed apply of the current desired hash
    pending     the edge has not yet reported the current desired hash
    unknown     the edge is known (e.g. heard) but never reported an apply
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from fleetbus.core.desired import DesiredState, applicable_overrides, compute
from fleetbus.core.rollout import Earlier, under_rollouts
from schemas.event import ApplyStatus, Event
from schemas.override import Override
from schemas.profile import Profile
from schemas.rollout import RolloutState

# Desired states by (profiles chosen with their revisions, labels, overrides that apply): see
# `assess`.
DesiredMemo = dict[tuple[Any, ...], DesiredState]


class State(StrEnum):
    CONVERGED = "converged"
    PENDING = "pending"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class EdgeCompliance:
    region: str
    edge: str
    state: State
    desired_hash: str | None = None
    reported_hash: str | None = None
    reported_status: str | None = None
    error: str | None = None
    observed_at: datetime | None = None
    profile_revisions: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The documented `fleetbus status --json` shape of one edge (docs/operations.md)."""
        return {
            "region": self.region,
            "edge": self.edge,
            "state": self.state.value,
            "desired_hash": self.desired_hash,
            "reported_hash": self.reported_hash,
            "reported_status": self.reported_status,
            "error": self.error,
            "observed_at": self.observed_at.isoformat() if self.observed_at else None,
            "profile_revisions": self.profile_revisions,
        }


def assess(
    profiles: Iterable[Profile],
    overrides: Iterable[Override],
    reports: Iterable[Event],
    *,
    now: datetime,
    known: Iterable[tuple[str, str]] = (),
    secrets: Mapping[str, int] | None = None,
    rollouts: Mapping[str, RolloutState] | None = None,
    earlier: Earlier | None = None,
    memo: DesiredMemo | None = None,
) -> list[EdgeCompliance]:
    """One row per edge (reported, or in `known` as (region, edge)), sorted by region, edge.
    `secrets`: the current version of each secret (what a converged edge has pinned);
    `rollouts`, `earlier`: profiles' rollouts under way, and the revisions they hold edges at
    (`fleetbus.core.rollout.under_rollouts`). `memo`: desired states already computed with
    these same profiles, overrides, secrets and rollouts (the caller empties it when one of
    them changes): edges with the same labels, profile revisions and overrides share one."""
    profiles, overrides = list(profiles), list(overrides)
    rows: dict[tuple[str, str], EdgeCompliance] = {}
    for report in reports:
        result = report.apply_result
        if result is None:
            continue
        chosen = profiles
        if rollouts:
            chosen, _ = under_rollouts(profiles, rollouts, earlier or {}, report.edge, result.labels)
        desired, key = None, None
        if memo is not None:
            applied = applicable_overrides(overrides, edge=report.edge, groups=result.groups, now=now)
            key = (
                tuple((p.name, p.revision or p.model_dump_json()) for p in chosen),
                tuple(sorted(result.labels.items())),
                tuple((o.target.scope, o.target.name, o.created_at) for o in applied),
            )
            desired = memo.get(key)
        if desired is None:
            desired = compute(
                chosen,
                result.labels,
                edge=report.edge,
                groups=result.groups,
                overrides=overrides,
                now=now,
                secrets=secrets,
            )
            if memo is not None and key is not None:
                memo[key] = desired
        if result.desired_hash != desired.hash:
            state = State.PENDING
        elif result.status is ApplyStatus.FAILED:
            state = State.FAILED
        else:
            state = State.CONVERGED
        rows[report.region, report.edge] = EdgeCompliance(
            region=report.region,
            edge=report.edge,
            state=state,
            desired_hash=desired.hash,
            reported_hash=result.desired_hash,
            reported_status=result.status.value,
            error=result.error,
            observed_at=report.observed_at,
            profile_revisions=result.profile_revisions,
        )
    for region, edge in known:
        rows.setdefault((region, edge), EdgeCompliance(region=region, edge=edge, state=State.UNKNOWN))
    return [rows[k] for k in sorted(rows)]
