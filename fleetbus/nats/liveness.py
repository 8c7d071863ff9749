"""Presence on the bus: a `PresenceTracker` fed by heartbeats, writing only its changes to
a presence bucket (a regional: its edges; the hub: the regionals).

One task (`run`) both times the tracker and writes, so the records of one site are written
in the order they happened; a restart reads the bucket back and resumes without writing.
"""

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext

from fleetbus.core.presence import PresenceTracker, Transition
from fleetbus.nats.bus import persist
from fleetbus.nats.kv import Bucket
from fleetbus.runtime import log
from fleetbus.runtime.metrics import DaemonMetrics
from schemas import subjects
from schemas.codec import JSON, encode_body
from schemas.presence import PresenceChange, PresenceState

logger = log.get_logger(__name__)


class PresenceBoard:
    """Presence of a regional's edges (`region` given: sites are edge ids, keys
    `<region>.<edge>`) or, at the hub, of the regionals (`region` None: sites are region ids,
    keys `<region>`, records with `edge` None)."""

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        tracker: PresenceTracker,
        *,
        region: str | None = None,
        metrics: DaemonMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        keep: Callable[[Transition], Awaitable[bool]] | None = None,
    ) -> None:
        self.js = js
        # Asked before a change is written: False = its site was forgotten (its records
        # deleted); the site is dropped here instead of being written back.
        self.keep = keep
        self.bucket = bucket
        self.tracker = tracker
        self.region = region
        self.metrics = metrics
        self._clock = clock
        self._queue: deque[Transition] = deque()
        self._wake = asyncio.Event()
        self.writes = 0

    async def restore(self, prefix: str = ">") -> int:
        """Resume the sites recorded under `prefix` in the bucket; returns how many. Changes
        queued before are dropped: the bucket is the truth now (a hub daemon taking the lease
        again after another held it)."""
        self._queue.clear()
        restored = 0
        for change in await Bucket(self.js, self.bucket, PresenceChange, metrics=self.metrics).values(prefix):
            self.tracker.restore(change.edge or change.region, change.state, change.last_seen)
            restored += 1
        self._count()
        return restored

    def heard(self, site: str, interval: float) -> None:
        """A heartbeat from `site`: queue the change it makes, if any."""
        change = self.tracker.heard(site, interval)
        if change is not None:
            self._queue.append(change)
            self._wake.set()

    async def run(self) -> None:
        """Time the tracker and write its changes, until cancelled."""
        while True:
            self._queue.extend(self.tracker.tick())
            while self._queue:
                await self._write(self._queue[0])
                self._queue.popleft()
            deadline = self.tracker.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                # Waits for the next presence deadline or a heartbeat that changed something.
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    def record(self, change: Transition) -> PresenceChange:
        return PresenceChange(
            region=self.region or change.site,
            edge=change.site if self.region else None,
            state=change.state,
            previous=change.previous,
            changed_at=change.at,
            last_seen=change.last_seen,
            reason=change.reason,
        )

    def key(self, site: str) -> str:
        return subjects.edge_key(self.region, site) if self.region else site

    async def _write(self, change: Transition) -> None:
        if self.keep is not None and not await self.keep(change):
            self.tracker.forget(change.site)
            logger.info("forgotten site dropped, not written", site=change.site, state=change.state.value)
            self._count()
            return
        record = self.record(change)
        subject, body = subjects.kv_subject(self.bucket, self.key(change.site)), encode_body(record, JSON)
        await persist(lambda: self.js.publish(subject, body), what=f"presence of {change.site}")
        self.writes += 1
        logger.info(
            "presence changed",
            site=change.site,
            state=change.state.value,
            previous=change.previous.value if change.previous else None,
            reason=change.reason,
        )
        if self.metrics:
            self.metrics.presence_writes.labels(state=change.state.value).inc()
        self._count()

    def _count(self) -> None:
        if self.metrics:
            counts = Counter(state for _, state in self.tracker)
            for state in (PresenceState.ONLINE, PresenceState.STALE, PresenceState.OFFLINE):
                self.metrics.presence_sites.labels(state=state.value).set(counts[state])
