"""Presence: online / stale / offline per site, from its heartbeats, with hysteresis. Pure.

    tracker = PresenceTracker(PresencePolicy(offline_after=60))
    change = tracker.heard("r1-e1", interval=5.0)  # on every heartbeat
    changes = tracker.tick()                        # at tracker.next_deadline()

Only *changes* come out, so the writer above writes one record per change, never one per
heartbeat. The rules:

- a site is `online` from its first heartbeat;
- `stale` once it has missed `stale_intervals` of its own heartbeat intervals;
- `offline` once it has been silent for `offline_after` seconds;
- back to `online` on its next heartbeat, except when it is *flapping* (it went stale
  `flap_limit` times within `flap_window_intervals`): then it must be heard steadily (no gap
  longer than the stale threshold) for `settle_intervals` before it is `online` again (it
  is `stale` meanwhile), so a flapping link writes one `stale` and one `online`, not one
  pair per flap.

Time comes from `clock` (monotonic seconds, for decisions) and `wall` (timestamps in the
records), both injectable so tests run without sleeping.
"""

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from schemas.base import utcnow
from schemas.presence import PresenceState


@dataclass(frozen=True)
class PresencePolicy:
    offline_after: float = 60.0
    stale_intervals: float = 2.0
    flap_limit: int = 3
    flap_window_intervals: float = 30.0
    settle_intervals: float = 3.0
    default_interval: float = 5.0  # for sites restored from a record, until heard again

    def __post_init__(self) -> None:
        if self.offline_after <= 0 or self.stale_intervals <= 0 or self.default_interval <= 0:
            msg = "offline_after, stale_intervals and default_interval must be > 0"
            raise ValueError(msg)
        if self.flap_limit < 1:
            msg = "flap_limit must be >= 1"
            raise ValueError(msg)


@dataclass(frozen=True)
class Transition:
    """A site's presence changed: what the writer publishes."""

    site: str
    state: PresenceState
    previous: PresenceState | None
    at: datetime
    last_seen: datetime | None
    reason: str


@dataclass
class _Site:
    state: PresenceState
    last_heard: float
    last_seen: datetime | None
    interval: float
    stale_at: deque[float] = field(default_factory=deque)  # when it went stale, recently
    steady_since: float | None = None  # while flapping: heard without a gap since then


class PresenceTracker:
    def __init__(
        self,
        policy: PresencePolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self.policy = policy or PresencePolicy()
        self._clock = clock
        self._wall = wall
        self._sites: dict[str, _Site] = {}

    def _stale_after(self, site: _Site) -> float:
        return self.policy.stale_intervals * site.interval

    def _flapping(self, site: _Site, now: float) -> bool:
        window = self.policy.flap_window_intervals * site.interval
        while site.stale_at and now - site.stale_at[0] > window:
            site.stale_at.popleft()
        return len(site.stale_at) >= self.policy.flap_limit

    def _move(self, name: str, site: _Site, state: PresenceState, reason: str) -> Transition:
        previous, site.state = site.state, state
        return Transition(name, state, previous, self._wall(), site.last_seen, reason)

    def restore(self, name: str, state: PresenceState, last_seen: datetime | None = None) -> None:
        """Resume tracking `name` in `state` (read back from the presence bucket after a
        restart) without writing anything; its silence is counted from now."""
        if state is PresenceState.UNREACHABLE:
            state = PresenceState.STALE  # not a state this tier assigns; re-derive from heartbeats
        self._sites[name] = _Site(state, self._clock(), last_seen, self.policy.default_interval)

    def heard(self, name: str, interval: float) -> Transition | None:
        """A heartbeat from `name`, which beats every `interval` seconds."""
        now = self._clock()
        site = self._sites.get(name)
        if site is None:
            at = self._wall()
            self._sites[name] = _Site(PresenceState.ONLINE, now, at, interval)
            return Transition(name, PresenceState.ONLINE, None, at, at, "first heartbeat")
        gap = now - site.last_heard
        site.last_heard, site.last_seen, site.interval = now, self._wall(), interval
        if site.state is PresenceState.ONLINE:
            return None
        if self._flapping(site, now):
            if site.steady_since is None or gap > self._stale_after(site):
                if site.steady_since is not None:
                    site.stale_at.append(now)  # another flap: it stays flapping while it flaps
                site.steady_since = now
            if now - site.steady_since < self.policy.settle_intervals * interval:
                if site.state is PresenceState.OFFLINE:
                    return self._move(name, site, PresenceState.STALE, "heard again but flapping")
                return None
            site.stale_at.clear()
            site.steady_since = None
            return self._move(name, site, PresenceState.ONLINE, "heard steadily again after flapping")
        return self._move(name, site, PresenceState.ONLINE, f"heartbeat after {gap:.1f}s of silence")

    def _due(self, site: _Site) -> tuple[float, PresenceState] | None:
        """When `site`'s silence changes its state next, and to what (None: it cannot)."""
        offline = site.last_heard + self.policy.offline_after
        if site.state is PresenceState.ONLINE:
            stale = site.last_heard + self._stale_after(site)
            return (stale, PresenceState.STALE) if stale < offline else (offline, PresenceState.OFFLINE)
        if site.state is PresenceState.STALE:
            return offline, PresenceState.OFFLINE
        return None

    def tick(self) -> list[Transition]:
        """Sites whose silence has become long enough to change their state, now."""
        now = self._clock()
        changes = []
        for name, site in self._sites.items():
            due = self._due(site)
            if due is None or now < due[0]:
                continue
            if site.state is PresenceState.ONLINE and now >= site.last_heard + self.policy.offline_after:
                due = (now, PresenceState.OFFLINE)  # silent past both thresholds at once
            silent = now - site.last_heard
            if due[1] is PresenceState.STALE:
                site.stale_at.append(now)
                site.steady_since = None
                reason = f"missed {silent / site.interval:.1f} heartbeat intervals"
            else:
                reason = f"no heartbeat for {silent:.1f}s"
            changes.append(self._move(name, site, due[1], reason))
        return changes

    def next_deadline(self) -> float | None:
        """The clock time at which `tick()` may next change something (None: nothing can)."""
        return min((due[0] for site in self._sites.values() if (due := self._due(site))), default=None)

    def forget(self, name: str) -> None:
        """Stop tracking `name` (it was forgotten); a heartbeat would start it afresh."""
        self._sites.pop(name, None)

    def state(self, name: str) -> PresenceState | None:
        site = self._sites.get(name)
        return site.state if site else None

    def __iter__(self) -> Iterator[tuple[str, PresenceState]]:
        return ((name, site.state) for name, site in self._sites.items())

    def __len__(self) -> int:
        return len(self._sites)
