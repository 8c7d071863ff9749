"""The presence state machine, on a fake clock: no test here sleeps."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleetbus.core.presence import PresencePolicy, PresenceTracker
from schemas.presence import PresenceState

ONLINE, STALE, OFFLINE = PresenceState.ONLINE, PresenceState.STALE, PresenceState.OFFLINE
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tracker(clock: FakeClock, **policy: float) -> PresenceTracker:
    values = {"offline_after": 30.0, **policy}
    return PresenceTracker(PresencePolicy(**values), clock=clock, wall=clock.wall)  # type: ignore[arg-type]


def run_until_quiet(presence: PresenceTracker, clock: FakeClock, until: float) -> list:
    """Jump from deadline to deadline up to `until`, as the regional's loop does."""
    changes = []
    while (deadline := presence.next_deadline()) is not None and deadline <= until:
        clock.now = max(clock.now, deadline)
        changes += presence.tick()
    clock.now = max(clock.now, until)
    return changes


def test_first_heartbeat_is_online_then_silence_is_stale_then_offline():
    clock = FakeClock()
    presence = tracker(clock)
    first = presence.heard("e1", interval=5)
    assert first is not None
    assert (first.state, first.previous, first.last_seen) == (ONLINE, None, EPOCH)

    clock.advance(9.9)
    assert presence.tick() == []
    assert presence.next_deadline() == 10.0  # two missed 5 s intervals
    changes = run_until_quiet(presence, clock, until=100)
    assert [(c.state, c.previous, c.at - EPOCH) for c in changes] == [
        (STALE, ONLINE, timedelta(seconds=10)),
        (OFFLINE, STALE, timedelta(seconds=30)),
    ]
    assert all(c.last_seen == EPOCH for c in changes)
    assert presence.next_deadline() is None  # offline: nothing left to time


def test_steady_heartbeats_write_nothing():
    clock = FakeClock()
    presence = tracker(clock)
    presence.heard("e1", 1.0)
    for _ in range(1000):
        clock.advance(1.0)
        assert presence.heard("e1", 1.0) is None
        assert presence.tick() == []


def test_a_heartbeat_brings_a_stale_or_offline_site_back_at_once():
    clock = FakeClock()
    presence = tracker(clock)
    presence.heard("e1", 1.0)
    run_until_quiet(presence, clock, until=2.5)
    assert presence.state("e1") is STALE
    back = presence.heard("e1", 1.0)
    assert back is not None
    assert (back.state, back.previous) == (ONLINE, STALE)

    run_until_quiet(presence, clock, until=100)
    assert presence.state("e1") is OFFLINE
    back = presence.heard("e1", 1.0)
    assert back is not None
    assert (back.state, back.previous) == (ONLINE, OFFLINE)
    assert "silence" in back.reason


def test_a_flapping_site_writes_one_pair_not_one_per_flap():
    """Up 3 s, down 3 s, for a minute: without hysteresis that is 20 stale/online pairs."""
    clock = FakeClock()
    presence = tracker(clock, flap_limit=2, flap_window_intervals=30, settle_intervals=3)
    changes = [presence.heard("e1", 1.0)]
    for _ in range(10):
        for _ in range(3):
            clock.advance(1.0)
            changes.append(presence.heard("e1", 1.0))
        changes += run_until_quiet(presence, clock, until=clock.now + 3.0)
    writes = [c for c in changes if c is not None]
    states = [c.state for c in writes]
    assert states[:4] == [ONLINE, STALE, ONLINE, STALE]  # the second stale makes it flapping
    assert len(writes) <= 5, states
    assert presence.state("e1") is STALE

    # Steady again: online once heard for settle_intervals (3 s) without a gap, not before.
    for _ in range(3):
        clock.advance(1.0)
        assert presence.heard("e1", 1.0) is None
        assert presence.tick() == []
    clock.advance(1.0)
    back = presence.heard("e1", 1.0)
    assert back is not None
    assert (back.state, back.reason) == (ONLINE, "heard steadily again after flapping")


def test_restore_resumes_without_a_write_and_counts_silence_from_now():
    clock = FakeClock()
    presence = tracker(clock, default_interval=5.0)
    clock.advance(1000)
    presence.restore("e1", ONLINE, last_seen=EPOCH)
    presence.restore("e2", OFFLINE, last_seen=EPOCH)
    assert presence.heard("e1", 5.0) is None  # online already: a restart writes nothing
    clock.advance(9.0)
    assert presence.tick() == []
    back = presence.heard("e2", 5.0)
    assert back is not None
    assert back.previous is OFFLINE


def test_policy_refuses_nonsense():
    with pytest.raises(ValueError, match="offline_after"):
        PresencePolicy(offline_after=0)
    with pytest.raises(ValueError, match="flap_limit"):
        PresencePolicy(flap_limit=0)


# A schedule is a list of (seconds to wait, heartbeat or not).
schedules = st.lists(st.tuples(st.floats(0.0, 40.0), st.booleans()), max_size=60)


@settings(max_examples=300, deadline=None)
@given(schedule=schedules, interval=st.sampled_from([0.5, 1.0, 5.0]))
@example(schedule=[(4.428531441730499, False), (39.72662861572166, True), (20.0, False)], interval=0.5)
def test_every_change_follows_from_the_previous_state(schedule, interval):
    """Properties over random heartbeat schedules: the records form one consistent chain
    (each names the state it left), heartbeats of an online site write nothing, and no
    silence goes unnoticed: stale after 2 intervals, offline after the window."""
    clock = FakeClock()
    presence = tracker(clock, offline_after=20.0)
    last: PresenceState | None = None
    heard_at: float | None = None
    for wait, beat in schedule:
        for change in run_until_quiet(presence, clock, until=clock.now + wait):
            assert change.previous is last
            assert change.state is not last
            last = change.state
        if beat:
            before = presence.state("e1")
            change = presence.heard("e1", interval)
            heard_at = clock.now
            if before is ONLINE:
                assert change is None
            if change is not None:
                assert change.previous is last
                last = change.state
        assert presence.state("e1") is last
        if heard_at is not None:
            # The fake clock lands exactly on the tracker's deadlines, but `(t + 20.0) - t` can
            # be 19.999999999999996 in floating point: compare with a tolerance.
            silent = clock.now - heard_at + 1e-9
            if silent >= 20.0:
                assert last is OFFLINE
            elif silent >= 2 * interval:
                assert last is STALE
