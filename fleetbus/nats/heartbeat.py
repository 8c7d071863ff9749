"""Heartbeats up one tier over core NATS, and the record of who was last heard from.

Heartbeats are not stored: a stale heartbeat means nothing. The receiving side keeps only
the last one per site in memory; presence (online/stale/offline) is derived from that.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from nats.errors import Error as NatsError

from fleetbus.nats.bus import Bus, Msg
from fleetbus.runtime.tasks import wait_event
from schemas.base import utcnow
from schemas.heartbeat import Heartbeat, Tier


async def send_heartbeats(
    bus: Bus,
    *,
    tier: Tier,
    site: str,
    region: str,
    subject: str,
    interval: float,
    uptime: Callable[[], float],
    clock: Callable[[], datetime] = utcnow,
    wake: asyncio.Event | None = None,
    after: asyncio.Event | None = None,
    uplink_returns: Callable[[], int] = lambda: 0,
    thin: bool = False,
    hello: str | None = None,
) -> None:
    """Publish a heartbeat now and every `interval` seconds, until cancelled; setting `wake`
    sends the next one at once (a link that just came back announces itself). With `after`,
    start once that is set (an edge: once its regional has enrolled it). With `hello`, a
    message on that subject (the tier above has just started listening) also sends one at
    once, at most one per `HELLO_SPACING` seconds whatever arrives there."""
    wake = wake or asyncio.Event()
    if after is not None:
        await after.wait()
    subscription = await bus.nc.subscribe(hello, cb=_waker(wake)) if hello is not None else None
    try:
        seq = 0
        while True:
            if bus.connected:
                beat = Heartbeat(
                    tier=tier,
                    site=site,
                    region=region,
                    seq=seq,
                    sent_at=clock(),
                    interval_seconds=interval,
                    uptime_seconds=uptime(),
                    uplink_returns=uplink_returns(),
                    thin=thin,
                )
                await bus.publish(subject, beat)
                seq += 1
            await wait_event(wake, interval)  # the heartbeat period itself
            wake.clear()
    finally:
        if subscription is not None:
            with contextlib.suppress(NatsError):  # the connection may be closing already
                await subscription.unsubscribe()


HELLO_SPACING = 0.5  # s: a flood of hellos costs at most two extra heartbeats a second


def _waker(wake: asyncio.Event) -> Callable[[Msg], Awaitable[None]]:
    """A hello handler: wake the heartbeat loop, ignoring the body (nothing to decode)."""
    last = -HELLO_SPACING

    async def on_hello(_msg: Msg) -> None:
        nonlocal last
        now = asyncio.get_running_loop().time()
        if now - last >= HELLO_SPACING:
            last = now
            wake.set()

    return on_hello


@dataclass
class LastHeard:
    seq: int
    received_at: datetime
    sent_at: datetime
    uplink_returns: int = 0


class HeartbeatLog:
    """Last heartbeat received per site (receiver's clock), for presence and health."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self._clock = clock
        self._last: dict[str, LastHeard] = {}

    def record(self, beat: Heartbeat) -> LastHeard:
        heard = LastHeard(
            seq=beat.seq, received_at=self._clock(), sent_at=beat.sent_at, uplink_returns=beat.uplink_returns
        )
        self._last[beat.site] = heard
        return heard

    def last(self, site: str) -> LastHeard | None:
        return self._last.get(site)

    def sites(self) -> list[str]:
        return list(self._last)

    def returned(self, beat: Heartbeat) -> bool:
        """Record `beat`; True if its site's link came back since its last beat (time to kick
        that site's sources): the site says so (`uplink_returns` changed), or it had gone
        silent for more than 2 intervals. False the first time."""
        before = self._last.get(beat.site)
        now = self.record(beat).received_at
        if before is None:
            return False
        silent = (now - before.received_at).total_seconds() > 2 * beat.interval_seconds
        return silent or beat.uplink_returns != before.uplink_returns

    def __len__(self) -> int:
        return len(self._last)
