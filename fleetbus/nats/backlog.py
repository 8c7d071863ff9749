"""How far the next tier's copy of each of a site's uplink streams is behind the site's own.

The regional sources an edge's EVENTS and INVENTORY; the edge asks the regional's JetStream
(a direct get through the regional's domain) for the newest message of its own the regional
holds, and compares with what it stores itself: what waits, how old the oldest waiting message
is, and what the stream's limits evicted before it was forwarded (a loss, reported as such).
"""

from dataclasses import dataclass

from nats.js.errors import NotFoundError

from fleetbus.nats.bus import Bus
from fleetbus.nats.errors import TRANSIENT
from schemas import subjects
from schemas.base import utcnow
from schemas.inventory import StreamBacklog


@dataclass(frozen=True)
class Uplink:
    """One of the edge's streams that the regional sources, and what of it is this edge's."""

    stream: str
    filter: str
    superseded_ok: bool = False  # one message per subject: older ones are replaced, not lost


class BacklogMeter:
    """How far the regional's copy of each uplink stream is behind the edge's."""

    def __init__(self, bus: Bus, region: str, uplinks: list[Uplink], *, timeout: float = 0.5) -> None:
        self.bus = bus
        self.region = region
        self.uplinks = uplinks
        self.timeout = timeout
        self.forwarded: dict[str, int] = {}  # last known, kept while the regional is unreachable
        self.lost: dict[str, int] = {}  # evicted before the regional confirmed them, since start
        self._counted: dict[str, int] = {}  # evictions up to this sequence are accounted for

    async def _forwarded(self, uplink: Uplink) -> int | None:
        """The edge sequence of the newest message of ours the regional holds; None if it
        cannot be asked now."""
        # The last-by-subject form names the subject in the request's own subject (empty
        # body), which the edge's link permissions pin to its own subjects.
        subject = f"{subjects.js_api_prefix(self.region)}.DIRECT.GET.{uplink.stream}.{uplink.filter}"
        try:
            reply = await self.bus.nc.request(subject, b"", timeout=self.timeout)
        except TRANSIENT:
            return None
        headers = reply.headers or {}
        if headers.get("Status") == "404":
            return 0  # the regional holds nothing of ours (yet, or any more)
        origin = headers.get("Nats-Stream-Source", "").split()
        if len(origin) < 2 or not origin[0].startswith(f"{uplink.stream}:") or not origin[1].isdigit():
            return None
        return int(origin[1])

    async def measure(self) -> list[StreamBacklog]:
        found = []
        for uplink in self.uplinks:
            try:
                info = await self.bus.js.stream_info(uplink.stream)
            except NotFoundError:
                continue
            state = info.state
            removed = 0 if uplink.superseded_ok else max(0, state.first_seq - 1)
            self._count_losses(uplink.stream, removed)
            answer = await self._forwarded(uplink)
            if answer is not None and (answer or uplink.stream not in self.forwarded):
                self.forwarded[uplink.stream] = answer
            forwarded = min(self.forwarded.get(uplink.stream, 0), state.last_seq)
            pending = max(0, min(state.messages, state.last_seq - forwarded))
            found.append(
                StreamBacklog(
                    stream=uplink.stream,
                    pending=pending,
                    oldest_age_seconds=await self._oldest_age(uplink, forwarded) if pending else 0.0,
                    evicted=removed,
                    evicted_unforwarded=self.lost.get(uplink.stream, 0),
                    forwarded_seq=forwarded,
                )
            )
        return found

    def _count_losses(self, stream: str, removed: int) -> None:
        """Count messages the limits removed (up to sequence `removed`) beyond the last one the
        regional had confirmed before this check. Conservative: one forwarded since the
        previous check but not yet confirmed is counted too. Evictions from before this
        daemon started are not counted (what was forwarded then is not known)."""
        if stream not in self._counted:
            self._counted[stream] = removed
            return
        start = max(self.forwarded.get(stream, 0), self._counted[stream])
        if removed > start:
            self.lost[stream] = self.lost.get(stream, 0) + removed - start
            self._counted[stream] = removed

    async def _oldest_age(self, uplink: Uplink, forwarded: int) -> float:
        try:
            oldest = await self.bus.js.get_msg(
                uplink.stream, seq=forwarded + 1, subject=uplink.filter, next=True
            )
        except NotFoundError:
            return 0.0
        except TRANSIENT:
            return 0.0
        return max(0.0, (utcnow() - oldest.time).total_seconds()) if oldest.time else 0.0
