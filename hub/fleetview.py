"""The hub's live picture of the fleet, kept in memory from its bucket watches.

The dashboard and its JSON API read this, never the buckets per request: with 1,000 edges a
page load costs a dict walk, not 1,000 KV reads. Each bucket is mirrored by a watch that
first yields every current value, then each change (`fleetbus.nats.kv.Bucket`); every change bumps
`version` and the version of each edge it touches, so a live feed sends only what moved.

Compliance is cached per edge and recomputed when the edge reports, when a profile or
override changes, or when an override expires (compliance depends on the clock).

The view also follows the hub's own connection to its nats-server (`hub`): while it is lost,
nothing here can change, and the API shows what it holds as stale, not live (hub/api.py).
Edge ids come from message bodies (untrusted): at most `max_edges` are held, and a record
that would add one more is dropped and counted (`rejected`).
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from fleetbus.core.compliance import DesiredMemo, EdgeCompliance, State, assess
from fleetbus.core.views import EdgePresence, edge_presence
from fleetbus.errors import MissingError
from fleetbus.nats.errors import TRANSIENT
from fleetbus.nats.kv import Bucket, Entry
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.base import Message, utcnow
from schemas.event import Event, EventKind
from schemas.inventory import InventorySnapshot
from schemas.override import Override
from schemas.presence import PresenceChange
from schemas.profile import Profile
from schemas.rollout import RolloutState
from schemas.secret import SecretRecord

logger = log.get_logger(__name__)

M = TypeVar("M", bound=Message)

RECENT_EVENTS = 500  # the fleet-wide feed
KEEP = 16  # earlier revisions of a profile kept (as many as the hub's bucket keeps)
EDGE_EVENTS = 20  # per edge, for its page
MAX_EDGES = 20_000  # edges held; records naming more are dropped (docs/dashboard.md)
BUS_PERIOD = 0.25  # s between looks at the hub's own connection
MIRRORED = (
    subjects.REGIONS_BUCKET,
    subjects.PRESENCE_BUCKET,
    subjects.INVENTORY_BUCKET,
    subjects.APPLIED_BUCKET,
    subjects.PROFILES_BUCKET,
    subjects.OVERRIDES_BUCKET,
    subjects.SECRETS_BUCKET,
    subjects.ROLLOUTS_BUCKET,
)


@dataclass
class HubLink:
    """The hub daemon's connection to its own nats-server, as the view last saw it."""

    connected: bool = True
    since: datetime | None = None  # when `connected` last changed (or was first seen)

    def observe(self, connected: bool, now: datetime) -> bool:
        """Take the connection's state at `now`; True if it changed."""
        if self.since is not None and connected == self.connected:
            return False
        changed = self.since is not None
        self.connected, self.since = connected, now
        return changed


@dataclass
class EdgeView:
    """Everything the hub holds about one edge."""

    region: str
    edge: str
    inventory: InventorySnapshot | None = None
    presence: PresenceChange | None = None  # the edge's own record, from its regional
    report: Event | None = None  # its last ApplyResult
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=EDGE_EVENTS))
    version: int = 0  # `FleetView.version` when anything shown of it last changed


class FleetView:
    """Mirrors the hub's buckets (inventory, presence, regions, applied, profiles,
    overrides) and its EVENTS stream; `run()` keeps it current until cancelled."""

    def __init__(
        self,
        client: FleetClient,
        *,
        clock: Callable[[], datetime] = utcnow,
        region_heard: Callable[[str], datetime | None] = lambda _region: None,
        max_edges: int = MAX_EDGES,
        on_reject: Callable[[], None] = lambda: None,
        on_undecodable: Callable[[str], None] = lambda _schema: None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.region_heard = region_heard  # when the hub daemon last heard a regional's heartbeat
        self.max_edges = max_edges
        self.on_reject = on_reject
        self.on_undecodable = on_undecodable  # told the schema of each record skipped
        self.rejected = 0  # records dropped because they would add an edge past `max_edges`
        self.hub = HubLink()
        self.edges: dict[str, EdgeView] = {}
        self.regions: dict[str, PresenceChange] = {}
        self.profiles: dict[str, Profile] = {}
        self.overrides: dict[str, Override] = {}
        self.secrets: dict[str, int] = {}  # name -> current version (never a value)
        self.rollouts: dict[str, RolloutState] = {}  # `<profile>.<revision>` -> its state
        self.current_rollouts: dict[str, RolloutState] = {}  # profile -> its newest rollout
        self.earlier: dict[tuple[str, int], Profile] = {}  # revisions rollouts keep edges at
        self._wanted: set[tuple[str, int]] = set()  # ... not seen here yet: read from history
        self._want = asyncio.Event()
        self.events: deque[tuple[int, Event]] = deque(maxlen=RECENT_EVENTS)
        self.version = 0
        self.policy_version = 0  # bumped by profile and override changes
        self._changed = asyncio.Condition()
        self.ready = asyncio.Event()  # every bucket read once (an empty view is not a fleet)
        self._loaded: set[str] = set()
        self._compliance: dict[str, tuple[int, EdgeCompliance]] = {}
        # Desired states shared by edges alike (`assess`), for the policy version they were of.
        self._memo: DesiredMemo = {}
        self._memo_version = -1
        self._next_expiry: datetime | None = None

    # Reading

    def presence_of(self, view: EdgeView) -> EdgePresence | None:
        if view.presence is None:
            return None
        region = view.region
        return edge_presence(view.presence, self.regions.get(region), region_heard=self.region_heard(region))

    def compliance_of(self, view: EdgeView) -> EdgeCompliance:
        self._expire_overrides()
        cached = self._compliance.get(view.edge)
        if cached is not None and cached[0] == self.policy_version:
            return cached[1]
        if self._memo_version != self.policy_version:  # what the memo's desired states were of
            self._memo, self._memo_version = {}, self.policy_version
        reports = [view.report] if view.report else []
        rows = assess(
            self.profiles.values(),
            self.overrides.values(),
            reports,
            now=self.clock(),
            known=[(view.region, view.edge)],
            secrets=self.secrets,
            rollouts=self.current_rollouts,
            earlier=self.earlier,
            memo=self._memo,
        )
        row = rows[0] if rows else EdgeCompliance(view.region, view.edge, State.UNKNOWN)
        self._compliance[view.edge] = (self.policy_version, row)
        return row

    def _expire_overrides(self) -> None:
        """An override that just expired changes every edge it targeted: treat it as a change."""
        if self._next_expiry is not None and self.clock() >= self._next_expiry:
            self._policy_changed()

    def _policy_changed(self) -> None:
        self.policy_version += 1
        now = self.clock()
        pending = [o.expires_at for o in self.overrides.values() if o.expires_at and o.expires_at > now]
        self._next_expiry = min(pending, default=None)
        self._bump(*self.edges)

    async def changed_since(self, version: int, timeout: float) -> int:
        """Wait until `version` is passed (or `timeout` s elapse); return the current version."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version > version), timeout)
            return self.version

    # Keeping current

    async def run(self) -> None:
        """Mirror every bucket and the events feed; returns only by cancellation or error."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._mirror(subjects.REGIONS_BUCKET, PresenceChange, self._on_region))
            group.create_task(self._mirror(subjects.PRESENCE_BUCKET, PresenceChange, self._on_presence))
            group.create_task(self._mirror(subjects.INVENTORY_BUCKET, InventorySnapshot, self._on_inventory))
            group.create_task(self._mirror(subjects.APPLIED_BUCKET, Event, self._on_report))
            group.create_task(self._mirror(subjects.PROFILES_BUCKET, Profile, self._on_profile))
            group.create_task(self._mirror(subjects.OVERRIDES_BUCKET, Override, self._on_override))
            group.create_task(self._mirror(subjects.SECRETS_BUCKET, SecretRecord, self._on_secret))
            group.create_task(self._mirror(subjects.ROLLOUTS_BUCKET, RolloutState, self._on_rollout))
            group.create_task(self._recall_earlier())
            group.create_task(self._follow_events())
            group.create_task(self._watch_bus())

    async def _watch_bus(self) -> None:
        """Follow the hub's own connection: every row's shown state depends on it."""
        while True:
            if self.hub.observe(self.client.bus.connected, self.clock()):
                logger.info("hub bus", connected=self.hub.connected)
                self._bump(*self.edges)
                await self._notify()
            await asyncio.sleep(BUS_PERIOD)  # a sampling period

    async def _mirror(self, name: str, cls: type[M], apply: Callable[[Entry[M], M | None], None]) -> None:
        """Current values, then each change; read again from the start of the current values
        if the watch breaks (the hub's own server restarting), so the view never stops. Like
        the edges, an undecodable value is skipped (counted) and the last good one stands."""
        bucket = Bucket(
            self.client.bus.jetstream(subjects.HUB_DOMAIN),
            name,
            cls,
            on_undecodable=lambda _key, _exc: self.on_undecodable(cls.SCHEMA),
        )
        backoff = Backoff(0.2, cap=5.0)
        while True:
            try:
                entries, seen = await bucket.snapshot()
                for entry in entries:
                    apply(entry, entry.value)
                self._loaded.add(name)
                if len(self._loaded) == len(MIRRORED):
                    self.ready.set()
                await self._notify()
                backoff.reset()
                async for entry in bucket.changes(after=seen):
                    apply(entry, entry.value)
                    await self._notify()
            except (*TRANSIENT, MissingError) as exc:
                logger.warning("bucket watch broke; reading it again", bucket=name, error=repr(exc))
            await backoff.wait()

    def _edge(self, region: str, edge: str) -> EdgeView | None:
        """The view of `edge`, added if new; None (counted) if that would pass `max_edges`."""
        view = self.edges.get(edge)
        if view is None:
            if len(self.edges) >= self.max_edges:
                self.rejected += 1
                self.on_reject()
                if self.rejected == 1:
                    logger.warning("edge limit reached; further edges dropped", limit=self.max_edges)
                return None
            view = self.edges[edge] = EdgeView(region, edge)
        view.region = region
        return view

    def _forget_if_empty(self, edge: str) -> None:
        """Drop an edge whose presence, inventory and apply report are all deleted (forgotten)."""
        view = self.edges.get(edge)
        if view is not None and view.presence is None and view.inventory is None and view.report is None:
            del self.edges[edge]
            self._compliance.pop(edge, None)

    def _bump(self, *edges: str) -> None:
        self.version += 1
        for edge in edges:
            if (view := self.edges.get(edge)) is not None:
                view.version = self.version

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _on_region(self, record: Entry[Any], change: PresenceChange | None) -> None:
        if change is None:
            self.regions.pop(record.key, None)
            region = record.key
        else:
            self.regions[change.region] = change
            region = change.region
        self._bump(*(e for e, v in self.edges.items() if v.region == region))

    def _on_presence(self, record: Entry[Any], change: PresenceChange | None) -> None:
        if change is None:
            self._deleted(record, "presence")
        elif change.edge and (view := self._edge(change.region, change.edge)) is not None:
            view.presence = change
            self._bump(change.edge)

    def _deleted(self, record: Entry[Any], what: str) -> None:
        with contextlib.suppress(ValueError):  # a key that names no edge
            _region, edge = subjects.split_edge_key(record.key)
            if (view := self.edges.get(edge)) is not None:
                setattr(view, what, None)
                self._compliance.pop(edge, None)
                self._bump(edge)
                self._forget_if_empty(edge)

    def _on_inventory(self, record: Entry[Any], snap: InventorySnapshot | None) -> None:
        if snap is None:
            self._deleted(record, "inventory")
            return
        view = self._edge(snap.region, snap.edge)
        if view is None:
            return
        if view.inventory is not None and snap.observed_at < view.inventory.observed_at:
            return  # a replayed older snapshot
        view.inventory = snap.model_copy(update={"received_at": record.stored_at})
        self._bump(snap.edge)

    def _on_report(self, record: Entry[Any], event: Event | None) -> None:
        if event is None:
            self._deleted(record, "report")
            return
        if event.apply_result is None or (view := self._edge(event.region, event.edge)) is None:
            return
        view.report = event
        self._compliance.pop(event.edge, None)
        self._bump(event.edge)

    def _on_profile(self, record: Entry[Any], profile: Profile | None) -> None:
        before = self.profiles.get(record.key)
        if before is not None and before.revision is not None:
            self.earlier[before.name, before.revision] = before
            for old in [k for k in self.earlier if k[0] == before.name and k[1] <= before.revision - KEEP]:
                del self.earlier[old]
        if profile is None:
            self.profiles.pop(record.key, None)
        else:
            self.profiles[record.key] = profile
        self._policy_changed()

    def _on_rollout(self, record: Entry[Any], state: RolloutState | None) -> None:
        if state is None:  # a state removed (its revision was never stored)
            gone = self.rollouts.pop(record.key, None)
            if gone is not None:
                kept = [s for s in self.rollouts.values() if s.profile == gone.profile]
                if kept:
                    self.current_rollouts[gone.profile] = max(kept, key=lambda s: s.revision)
                else:
                    self.current_rollouts.pop(gone.profile, None)
                self._policy_changed()
            return
        self.rollouts[record.key] = state
        newest = self.current_rollouts.get(state.profile)
        if newest is None or newest.revision <= state.revision:
            self.current_rollouts[state.profile] = state
        if state.previous is not None and (state.profile, state.previous) not in self.earlier:
            self._wanted.add((state.profile, state.previous))
            self._want.set()
        self._policy_changed()

    async def _recall_earlier(self) -> None:
        """The revisions rollouts keep edges at, if this view has not seen them (it started
        during the rollout): read from the hub's `profiles` history."""
        bucket = Bucket(self.client.bus.jetstream(subjects.HUB_DOMAIN), subjects.PROFILES_BUCKET, Profile)
        backoff = Backoff(0.5, cap=10.0)
        while True:
            await self._want.wait()
            self._want.clear()
            try:
                for name in {name for name, _ in self._wanted}:
                    for entry in await bucket.history(name):
                        if entry.value is not None and entry.value.revision is not None:
                            self.earlier.setdefault((name, entry.value.revision), entry.value)
                self._wanted -= set(self.earlier)
                self._policy_changed()
                await self._notify()
                backoff.reset()
            except (*TRANSIENT, MissingError) as exc:
                logger.warning("earlier profile revisions not read; again shortly", error=repr(exc))
                self._want.set()
                await backoff.wait()

    def _on_override(self, record: Entry[Any], override: Override | None) -> None:
        if override is None:
            self.overrides.pop(record.key, None)
        else:
            self.overrides[record.key] = override
        self._policy_changed()

    def _on_secret(self, record: Entry[Any], secret: SecretRecord | None) -> None:
        if secret is None:
            self.secrets.pop(record.key, None)
        else:
            self.secrets[record.key] = secret.version
        self._policy_changed()

    async def _follow_events(self) -> None:
        """The latest event of each kind from each edge, then every new one; after a broken
        watch the latest ones come again and are recognised by id."""
        backoff = Backoff(0.2, cap=5.0)
        while True:
            try:
                async for event in self.client.watch_events():
                    backoff.reset()
                    self._take_event(event)
                    await self._notify()
            except TRANSIENT as exc:
                logger.warning("events watch broke; following again", error=repr(exc))
            await backoff.wait()

    def _take_event(self, event: Event) -> None:
        if event.kind == EventKind.TELEMETRY:
            return  # device readings are data, not the fleet's event feed (they would crowd it out)
        view = self._edge(event.region, event.edge)
        if view is None or any(e.id == event.id for e in view.events):
            return
        view.events.append(event)
        self._bump(event.edge)
        self.events.append((self.version, event))
