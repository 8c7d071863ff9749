"""How far the regional's copy of each of an edge's uplink streams is behind the edge's own.

The edge's forwarders (`fleetbus.nats.uplink`) know the last sequence of each stream the
regional confirmed storing; messages after it are pending, and messages the stream's limits
removed before that point was reached never went upstream (a loss, reported as such).
"""

from nats.js.errors import NotFoundError

from fleetbus.nats.bus import Bus
from fleetbus.nats.errors import TRANSIENT
from fleetbus.nats.uplink import Forwarder, Uplink
from schemas.base import utcnow
from schemas.inventory import StreamBacklog


class BacklogMeter:
    """How far the regional's copy of each uplink stream is behind the edge's."""

    def __init__(self, bus: Bus, forwarders: list[Forwarder]) -> None:
        self.bus = bus
        self.forwarders = forwarders
        self.forwarded: dict[str, int] = {}  # last known, kept while the regional is unreachable
        self.lost: dict[str, int] = {}  # evicted before the regional confirmed them, since start
        self._counted: dict[str, int] = {}  # evictions up to this sequence are accounted for

    async def measure(self) -> list[StreamBacklog]:
        found = []
        for forwarder in self.forwarders:
            uplink = forwarder.uplink
            try:
                info = await self.bus.js.stream_info(uplink.stream)
            except NotFoundError:
                continue
            state = info.state
            removed = 0 if uplink.superseded_ok else max(0, state.first_seq - 1)
            self._count_losses(uplink.stream, removed)
            if forwarder.confirmed is not None:
                self.forwarded[uplink.stream] = forwarder.confirmed
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
