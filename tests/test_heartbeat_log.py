"""Who notices a link is back: the receiver's record of heartbeats (a fake clock, no NATS)."""

from datetime import UTC, datetime, timedelta

from fleetbus.nats.heartbeat import HeartbeatLog
from schemas.heartbeat import Heartbeat, Tier

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def beat(seq: int, returns: int = 0) -> Heartbeat:
    return Heartbeat(
        tier=Tier.EDGE,
        site="r1-e1",
        region="r1",
        seq=seq,
        sent_at=T0,
        interval_seconds=5,
        uptime_seconds=seq * 5,
        uplink_returns=returns,
    )


def test_link_back_is_seen_from_a_silence_or_from_the_sites_own_count():
    now = [T0]
    log = HeartbeatLog(clock=lambda: now[0])
    assert not log.returned(beat(0))  # first heard: sources are added, not kicked
    now[0] += timedelta(seconds=5)
    assert not log.returned(beat(1))  # on time
    now[0] += timedelta(seconds=9)
    assert not log.returned(beat(2))  # late, but within 2 intervals
    now[0] += timedelta(seconds=11)
    assert log.returned(beat(3))  # silent for more than 2 intervals
    # A cut shorter than 2 intervals: only the site knows its upstream failed and answered again.
    now[0] += timedelta(seconds=4)
    assert log.returned(beat(4, returns=1))
    now[0] += timedelta(seconds=5)
    assert not log.returned(beat(5, returns=1))
    now[0] += timedelta(seconds=5)
    assert log.returned(beat(0, returns=0))  # the daemon restarted: its count starts again
