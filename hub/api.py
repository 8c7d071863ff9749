"""What the hub's JSON API answers, built from the `FleetView`. Pure (no I/O).

The models are the API's documented shapes (docs/api/openapi.json is generated from them).

Nothing old is shown as live: while the hub daemon has lost its own nats-server, it hears no
heartbeat and no record, so every edge and region is shown `unknown` (with what was last
known in its reason) and `HubStatus` says since when the data is stale.
"""

from collections import Counter
from collections.abc import Collection
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, JsonValue

from fleetbus.core import rollout
from fleetbus.core.compliance import State
from fleetbus.core.desired import compute, edge_groups
from fleetbus.core.rollout import under_rollouts
from fleetbus.core.views import EdgePresence
from hub.fleetview import EdgeView, FleetView
from hub.rollouts import observed_in
from schemas.event import Event, Severity
from schemas.inventory import InventorySnapshot
from schemas.presence import PresenceState
from schemas.rollout import RolloutState

UNKNOWN = "unknown"  # presence of an edge the hub has no presence record for (yet)


class PresenceFilter(StrEnum):
    """Presence as shown: `PresenceState`, or `unknown` before the first record."""

    ONLINE = PresenceState.ONLINE.value
    STALE = PresenceState.STALE.value
    OFFLINE = PresenceState.OFFLINE.value
    UNREACHABLE = PresenceState.UNREACHABLE.value
    UNKNOWN = UNKNOWN


class HubStatus(BaseModel):
    """The hub's own connection to its nats-server: whether what the API shows is live."""

    connected: bool = Field(description="False: the hub hears nothing; every answer is stale.")
    since: datetime | None = Field(default=None, description="When it last connected or lost it.")
    data_as_of: datetime = Field(description="Now while connected; else when the connection was lost.")
    stale_seconds: float = Field(description="0 while connected; else seconds since it was lost.")
    message: str


class EdgeRow(BaseModel):
    """One edge as the fleet page shows it: one tile."""

    region: str
    edge: str
    presence: PresenceFilter
    presence_reason: str = ""
    presence_since: datetime | None = None
    last_seen: datetime | None = Field(
        default=None,
        description="The last moment the edge is known to have been heard: its last heartbeat its "
        "regional reported (while reported online: as late as the hub last heard that regional), "
        "or its last inventory, whichever is later.",
    )
    uplink: str = Field(
        default=UNKNOWN,
        description="Its link to its regional as far as the hub can tell now: `connected` or `down` "
        "(its last inventory's, while the edge is shown online), else `unknown`.",
    )
    uplink_reported: bool | None = Field(
        default=None, description="What its last inventory (`inventory_observed_at`) said of its link."
    )
    uplink_since: datetime | None = Field(default=None, description="Since when, by that inventory.")
    compliance: State
    desired_hash: str | None = None
    reported_hash: str | None = None
    reported_status: str | None = None
    error: str | None = None
    profile_revisions: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    backlog_pending: int = Field(default=0, description="Messages waiting on the edge for its uplink.")
    backlog_lost: int = Field(default=0, description="Messages its limits evicted before they went up.")
    backlog_oldest_age_seconds: float = 0.0
    inventory_observed_at: datetime | None = None


class EdgeList(BaseModel):
    total: int = Field(description="Edges matching the filters (before limit/offset).")
    edges: list[EdgeRow]
    hub: HubStatus


class ExplainRow(BaseModel):
    path: str
    value: JsonValue
    source: str = Field(description="The layer that set it: `profile NAME@REV` or `override ...`.")


class EdgeDetail(BaseModel):
    edge: EdgeRow
    inventory: InventorySnapshot | None
    desired_hash: str | None = Field(description="What the hub computes for it now.")
    explain: list[ExplainRow]
    explain_note: str = ""
    events: list[Event] = Field(description="Its recent events, newest first.")


class RegionRow(BaseModel):
    region: str
    state: str = Field(
        description="The regional's presence as the hub hears it (`unknown` while the hub hears nothing)."
    )
    since: datetime | None = None
    last_seen: datetime | None = Field(default=None, description="When the hub last heard its heartbeat.")
    edges: int
    presence: dict[str, int] = Field(description="Its edges by presence as shown.")
    compliance: dict[str, int] = Field(description="Its edges by compliance state.")


class Revision(BaseModel):
    revision: int | None
    updated_by: str | None
    updated_at: datetime | None


class ProfileRow(BaseModel):
    name: str
    revision: int | None
    priority: int
    description: str
    selector: dict[str, Any]
    updated_by: str | None
    updated_at: datetime | None
    running: dict[str, list[str]] = Field(
        description="Revision (as text; `none` = not running it) -> edges whose last apply used it."
    )
    history: list[Revision]


class WaveRow(BaseModel):
    """One wave of a rollout, as `fleetbus rollout status` shows it."""

    name: str
    phase: str = Field(description="waiting, converging, soaking, passed, halted, rolled back, aborted")
    members: int
    converged: int
    pending: int
    offline: int
    skipped: int
    failed: dict[str, str] = Field(description="edge -> why it failed")
    soak_left: float | None = Field(description="seconds of soak left, while soaking")
    line: str


class RolloutView(BaseModel):
    """A profile revision's staged rollout (docs/rollouts.md): its state and each wave's progress."""

    key: str
    profile: str
    revision: int
    previous: int | None
    status: str
    reason: str
    rollback: int | None
    started_by: str
    updated_at: datetime | None
    waves: list[WaveRow]
    steps: list[dict[str, JsonValue]]
    exit_code: int | None = Field(description="what `rollout status --wait` exits with; null while under way")


class ComplianceSummary(BaseModel):
    total: int
    counts: dict[str, int]
    by_region: dict[str, dict[str, int]]
    edges: list[dict[str, Any]]


def hub_status(fleet: FleetView) -> HubStatus:
    hub, now = fleet.hub, fleet.clock()
    if hub.connected:
        return HubStatus(connected=True, since=hub.since, data_as_of=now, stale_seconds=0.0, message="live")
    lost = hub.since or now
    return HubStatus(
        connected=False,
        since=lost,
        data_as_of=lost,
        stale_seconds=max(0.0, (now - lost).total_seconds()),
        message="the hub has lost its own nats-server: it hears nothing, everything shown is as of then",
    )


def shown_presence(fleet: FleetView, presence: EdgePresence | None) -> tuple[PresenceFilter, str]:
    """What an edge's row says of its presence, and why: `unknown` while the hub hears nothing."""
    if presence is None:
        return PresenceFilter.UNKNOWN, ""
    shown, reason = PresenceFilter(presence.state.value), presence.reason
    if not fleet.hub.connected:
        reason = f"the hub hears nothing (lost its nats-server); last known {shown.value}: {reason}"
        shown = PresenceFilter.UNKNOWN
    return shown, reason


def counts(fleet: FleetView) -> Counter[tuple[str, str]]:
    """How many edges' rows say each (presence, compliance), without making the rows."""
    return Counter(
        (shown_presence(fleet, fleet.presence_of(v))[0].value, fleet.compliance_of(v).state.value)
        for v in _views(fleet, None)
    )


def edge_row(fleet: FleetView, view: EdgeView) -> EdgeRow:
    presence = fleet.presence_of(view)
    compliance = fleet.compliance_of(view)
    snap = view.inventory
    seen = [t for t in (presence.last_seen if presence else None, snap.observed_at if snap else None) if t]
    backlog = snap.backlog if snap else []
    shown, reason = shown_presence(fleet, presence)
    link = snap.link if snap else None
    uplink = UNKNOWN
    if link is not None and shown is PresenceFilter.ONLINE:
        uplink = "connected" if link.upstream_connected else "down"
    return EdgeRow(
        region=view.region,
        edge=view.edge,
        presence=shown,
        presence_reason=reason,
        presence_since=presence.since if presence else None,
        last_seen=max(seen, default=None),
        uplink=uplink,
        uplink_reported=link.upstream_connected if link else None,
        uplink_since=link.since if link else None,
        compliance=compliance.state,
        desired_hash=compliance.desired_hash,
        reported_hash=compliance.reported_hash,
        reported_status=compliance.reported_status,
        error=compliance.error,
        profile_revisions=compliance.profile_revisions,
        labels=snap.labels if snap else {},
        backlog_pending=sum(b.pending for b in backlog),
        backlog_lost=sum(b.evicted_unforwarded for b in backlog),
        backlog_oldest_age_seconds=max((b.oldest_age_seconds for b in backlog), default=0.0),
        inventory_observed_at=snap.observed_at if snap else None,
    )


def _views(fleet: FleetView, shown: Collection[str] | None) -> list[EdgeView]:
    """Every edge (of the regions `shown`, if given), sorted by region and id."""
    views = (v for v in fleet.edges.values() if shown is None or v.region in shown)
    return sorted(views, key=lambda v: (v.region, v.edge))


def rows(fleet: FleetView, shown: Collection[str] | None = None) -> list[EdgeRow]:
    """Every edge's row (of the regions `shown`, if given: a region-scoped token's), sorted
    by region and id."""
    return [edge_row(fleet, v) for v in _views(fleet, shown)]


def matches(
    row: EdgeRow, *, region: str | None, presence: str | None, compliance: str | None, q: str
) -> bool:
    if region and row.region != region:
        return False
    if presence and row.presence.value != presence:
        return False
    if compliance and row.compliance.value != compliance:
        return False
    if q:
        text = " ".join([row.edge, row.region, *(f"{k}={v}" for k, v in row.labels.items())]).lower()
        return all(word in text for word in q.lower().split())
    return True


def edge_detail(fleet: FleetView, view: EdgeView) -> EdgeDetail:
    """Its row, latest inventory, the hub's explanation of its desired state, recent events.

    Labels and groups for `explain` come from its last apply report, else from its inventory.
    """
    report = view.report.apply_result if view.report else None
    if report is not None:
        labels, groups = report.labels, report.groups
        note = "labels and groups from its last apply report"
    elif view.inventory is not None:
        labels = view.inventory.labels
        groups = edge_groups(view.region, labels)
        note = "labels from its inventory (it has not reported an apply yet)"
    else:
        labels, groups, note = None, [], "no report and no inventory yet: its labels are unknown"
    explain: list[ExplainRow] = []
    desired_hash = None
    if labels is not None:
        profiles, notes = under_rollouts(
            fleet.profiles.values(), fleet.current_rollouts, fleet.earlier, view.edge, labels
        )
        desired = compute(
            profiles,
            labels,
            edge=view.edge,
            groups=groups,
            overrides=fleet.overrides.values(),
            now=fleet.clock(),
            secrets=fleet.secrets,
            notes=notes,
        )
        desired_hash = desired.hash
        explain = [ExplainRow(path=p, value=v, source=s) for p, v, s in desired.explain()]
    return EdgeDetail(
        edge=edge_row(fleet, view),
        inventory=view.inventory,
        desired_hash=desired_hash,
        explain=explain,
        explain_note=note,
        events=[e for e in reversed(view.events) if e.region == view.region],  # an id two regions claim
    )


def regions(fleet: FleetView, rows: list[EdgeRow], shown: Collection[str] | None = None) -> list[RegionRow]:
    names = sorted(n for n in set(fleet.regions) | {r.region for r in rows} if shown is None or n in shown)
    out = []
    for name in names:
        mine = [r for r in rows if r.region == name]
        record = fleet.regions.get(name)
        state = record.state.value if record and fleet.hub.connected else UNKNOWN
        heard = [t for t in (record.last_seen if record else None, fleet.region_heard(name)) if t]
        out.append(
            RegionRow(
                region=name,
                state=state,
                since=record.changed_at if record else None,
                last_seen=max(heard, default=None),
                edges=len(mine),
                presence=dict(Counter(r.presence.value for r in mine)),
                compliance=dict(Counter(r.compliance.value for r in mine)),
            )
        )
    return out


def profiles(
    fleet: FleetView, history: dict[str, list[Revision]], shown: Collection[str] | None = None
) -> list[ProfileRow]:
    out = []
    for profile in sorted(fleet.profiles.values(), key=lambda p: (p.priority, p.name)):
        running: dict[str, list[str]] = {}
        for view in _views(fleet, shown):
            if view.report is None or view.report.apply_result is None:
                continue
            revision = view.report.apply_result.profile_revisions.get(profile.name)
            running.setdefault(str(revision) if revision else "none", []).append(view.edge)
        out.append(
            ProfileRow(
                name=profile.name,
                revision=profile.revision,
                priority=profile.priority,
                description=profile.description,
                selector=profile.selector.model_dump(mode="json", exclude_defaults=True),
                updated_by=profile.updated_by,
                updated_at=profile.updated_at,
                running=running,
                history=history.get(profile.name, []),
            )
        )
    return out


def rollout_view(fleet: FleetView, state: RolloutState) -> RolloutView:
    waves = rollout.progress(state, observed_in(fleet, state), fleet.clock())
    return RolloutView(
        key=state.key,
        profile=state.profile,
        revision=state.revision,
        previous=state.previous,
        status=state.status.value,
        reason=state.reason,
        rollback=state.rollback,
        started_by=state.started_by,
        updated_at=state.updated_at,
        waves=[WaveRow.model_validate(w.as_json()) for w in waves],
        steps=[s.model_dump(mode="json") for s in reversed(state.steps)],
        exit_code=rollout.exit_code(state),
    )


def rollouts(fleet: FleetView, profile: str | None = None) -> list[RolloutView]:
    """The newest rollout of each profile (or every rollout of `profile`), newest first."""
    if profile is None:
        chosen = list(fleet.current_rollouts.values())
    else:
        chosen = [s for s in fleet.rollouts.values() if s.profile == profile]
    chosen.sort(key=lambda s: (s.updated_at or datetime.min.replace(tzinfo=UTC), s.key), reverse=True)
    return [rollout_view(fleet, s) for s in chosen]


def compliance(fleet: FleetView, shown: Collection[str] | None = None) -> ComplianceSummary:
    """Every edge's compliance in the `fleetbus status --json` shape (`EdgeCompliance.as_json`)."""
    rows = [fleet.compliance_of(v) for v in _views(fleet, shown)]
    by_region: dict[str, Counter[str]] = {}
    for row in rows:
        by_region.setdefault(row.region, Counter())[row.state.value] += 1
    return ComplianceSummary(
        total=len(rows),
        counts=dict(Counter(r.state.value for r in rows)),
        by_region={k: dict(v) for k, v in sorted(by_region.items())},
        edges=[r.as_json() for r in rows],
    )


def recent_events(
    fleet: FleetView,
    *,
    kind: str | None = None,
    region: str | None = None,
    edge: str | None = None,
    severity: Severity | None = None,
    limit: int = 100,
    shown: Collection[str] | None = None,
) -> list[Event]:
    """The newest `limit` events the hub holds that match every filter given (and are of the
    regions `shown`, if given), newest first."""
    wanted = {"kind": kind, "region": region, "edge": edge, "severity": severity}
    found = []
    for _, event in reversed(fleet.events):
        if shown is not None and event.region not in shown:
            continue
        if all(not value or getattr(event, field) == value for field, value in wanted.items()):
            found.append(event)
            if len(found) >= limit:
                break
    return found
