"""What the hub shows of each edge, computed from its buckets. Pure.

Presence as the hub shows it is the edge's own record (written by its regional on each
change) unless the hub cannot hear that regional: then the edge is `unreachable`, whatever
its last record says, because nobody can tell. No bucket holds that derived state: a region
whose link flaps costs one `regions` record per change, not one record per edge.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleetbus.core.compliance import EdgeCompliance, State
from schemas.inventory import InventorySnapshot
from schemas.presence import PresenceChange, PresenceState


@dataclass(frozen=True)
class EdgePresence:
    region: str
    edge: str
    state: PresenceState  # as shown: `unreachable` while the hub cannot hear the region
    reported: PresenceState  # the edge's own last record, from its regional
    since: datetime  # when the edge's record last changed
    last_seen: datetime | None  # the latest moment the edge is known to have been heard (below)
    reason: str
    region_state: PresenceState | None  # None: the hub has never heard this region

    def as_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "edge": self.edge,
            "state": self.state.value,
            "reported": self.reported.value,
            "since": self.since.isoformat(),
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "reason": self.reason,
            "region_state": self.region_state.value if self.region_state else None,
        }


def edge_presence(
    record: PresenceChange, region: PresenceChange | None, *, region_heard: datetime | None = None
) -> EdgePresence:
    """`record` of one edge as the hub shows it, given its region's record at the hub and, if
    known, when the hub last heard that regional's heartbeat (`region_heard`).

    `last_seen` is the last heartbeat the edge is known to have sent, not its first: a record
    is written only on a change, so an `online` record's own `last_seen` is the heartbeat that
    made it online. While the regional reports the edge online it hears it every interval (it
    would have written `stale` after two missed ones), so the edge was heard as late as the
    regional last spoke: its region record's `last_seen` (when the hub last heard it before
    it went quiet) or `region_heard`, whichever is later."""
    if record.edge is None:
        msg = "edge_presence() takes an edge's record, not a region's"
        raise ValueError(msg)
    region_state = region.state if region else None
    reachable = region_state is PresenceState.ONLINE
    state = record.state if reachable else PresenceState.UNREACHABLE
    reason = record.reason if reachable else f"the hub cannot hear region {record.region!r}"
    last_seen = record.last_seen
    if record.state is PresenceState.ONLINE:
        vouched = [t for t in (region.last_seen if region else None, region_heard) if t is not None]
        # Only what the regional said after the edge went online vouches for it.
        vouched = [t for t in vouched if t >= record.changed_at]
        last_seen = max([t for t in (last_seen, *vouched) if t is not None], default=None)
    return EdgePresence(
        region=record.region,
        edge=record.edge,
        state=state,
        reported=record.state,
        since=record.changed_at,
        last_seen=last_seen,
        reason=reason,
        region_state=region_state,
    )


@dataclass(frozen=True)
class EdgeStatus:
    """One row of `fleetbus status`: presence, compliance and uplink backlog of an edge."""

    region: str
    edge: str
    presence: EdgePresence | None
    compliance: EdgeCompliance | None
    inventory: InventorySnapshot | None

    @property
    def pending(self) -> int:
        """Messages waiting on the edge for its uplink, as of its last snapshot."""
        return sum(b.pending for b in self.inventory.backlog) if self.inventory else 0

    @property
    def lost(self) -> int:
        """Messages the edge's limits evicted before they went upstream, as of its last snapshot."""
        return sum(b.evicted_unforwarded for b in self.inventory.backlog) if self.inventory else 0

    def as_json(self) -> dict[str, Any]:
        """The documented `fleetbus status --json` shape of one edge (docs/inventory.md):
        the compliance fields of issue 3 at the top level, plus `presence` and `backlog`."""
        compliance = self.compliance or EdgeCompliance(self.region, self.edge, State.UNKNOWN)
        row = compliance.as_json()
        row["presence"] = self.presence.as_json() if self.presence else None
        row["backlog"] = (
            [b.model_dump(mode="json") for b in self.inventory.backlog] if self.inventory else None
        )
        row["inventory_observed_at"] = self.inventory.observed_at.isoformat() if self.inventory else None
        return row


def fleet_status(
    presence: Iterable[EdgePresence],
    compliance: Iterable[EdgeCompliance],
    inventory: Iterable[InventorySnapshot],
) -> list[EdgeStatus]:
    """One row per edge any of the three knows, sorted by region and edge."""
    by_presence: Mapping[tuple[str, str], EdgePresence] = {(p.region, p.edge): p for p in presence}
    by_compliance = {(c.region, c.edge): c for c in compliance}
    by_inventory = {(i.region, i.edge): i for i in inventory}
    keys = sorted(set(by_presence) | set(by_compliance) | set(by_inventory))
    return [
        EdgeStatus(
            region=region,
            edge=edge,
            presence=by_presence.get((region, edge)),
            compliance=by_compliance.get((region, edge)),
            inventory=by_inventory.get((region, edge)),
        )
        for region, edge in keys
    ]
