"""Staged rollouts, decided without servers (`fleetbus.core.rollout`, `schemas.rollout`): wave
membership, gates, soak, failures, offline edges, pause/resume/abort/promote, on a fake
clock; and, as properties, that no edge of a later wave gets the new revision before the
earlier waves passed their gates, that percentages are stable as edges come and go, and that
an edge taken by a wave stays in it."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fleetbus.core import rollout
from fleetbus.core.rollout import Observed, RolloutError
from schemas.authoring import unknown_keys
from schemas.profile import Profile, ProfileSpec
from schemas.rollout import RolloutSpec, RolloutState, RolloutStatus

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
NEW, OLD = 7, 6


def spec(**fields) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {
            "waves": [
                {"name": "canary", "selector": {"match_labels": {"canary": "true"}}},
                {"name": "early", "percent": 10},
                {"name": "rest", "percent": 100},
            ],
            "soak": "10m",
            "wave_timeout": "30m",
        }
        | fields
    )


def fleet(n: int, canaries: int = 1) -> dict[str, dict[str, str]]:
    return {f"e{i}": ({"canary": "true"} if i < canaries else {}) for i in range(n)}


def seen(labels, *, online=True, applied=OLD, failed=None) -> Observed:
    return Observed(labels=labels, online=online, applied=applied, failed=failed)


def observe(edges, state, *, applying=(), failing=(), offline=()) -> dict[str, Observed]:
    """Every edge as the hub sees it: those in `applying` run what `revision_for` says."""
    found = {}
    for edge, labels in edges.items():
        runs = rollout.revision_for(state, edge, labels) if edge in applying else OLD
        found[edge] = seen(
            labels,
            online=edge not in offline,
            applied=runs if edge not in failing else OLD,
            failed="boom: the driver refused it" if edge in failing else None,
        )
    return found


def wave_edges(state: RolloutState, index: int) -> set[str]:
    return {e for e, w in state.members.items() if w == index}


# --- the document -----------------------------------------------------------------------


def test_the_document_is_strict_and_says_how_to_fix_it():
    assert spec().soak == 600
    assert spec().wave_timeout == 1800
    assert spec(soak=90).soak == 90
    assert spec(soak="500ms").soak == 0.5
    assert unknown_keys(RolloutSpec, {"waves": [], "max_failure": 1}) == [
        "max_failure: unknown key; did you mean `max_failures`?"
    ]
    for bad, said in (
        ({"waves": []}, "at least 1"),
        ({"waves": [{"name": "a"}]}, "either `selector` or `percent`"),
        ({"waves": [{"name": "a", "percent": 10, "selector": {}}]}, "either `selector` or `percent`"),
        ({"waves": [{"name": "a", "percent": 0}]}, "greater than 0"),
        ({"waves": [{"name": "a", "percent": 10}, {"name": "a", "percent": 100}]}, "unique"),
        ({"waves": [{"name": "a", "percent": 10}], "max_failures": "many"}, 'share such as "5%"'),
        ({"waves": [{"name": "a", "percent": 10}], "soak": "ten minutes"}, "soak"),
        ({"waves": [{"name": "a", "percent": 10}], "offline": "ignore"}, "skip"),
    ):
        with pytest.raises(ValidationError, match=said):
            RolloutSpec.model_validate(bad)
    assert spec(max_failures="5%").allowed_failures(100) == 5
    assert spec(max_failures="5%").allowed_failures(10) == 0
    assert spec(max_failures=2).allowed_failures(1) == 2


# --- membership -----------------------------------------------------------------------


def test_waves_take_edges_in_order_selectors_first_then_a_stable_share():
    s = spec()
    edges = fleet(10_000, canaries=20)
    waves = [rollout.wave_of(s, "base#7", e, labels) for e, labels in edges.items()]
    assert waves[:20] == [0] * 20
    early = waves.count(1)
    assert 900 < early < 1100, early  # 10 % of the 9,980 not taken by the canary wave
    assert waves.count(2) == 10_000 - 20 - early
    # Another rollout chooses other edges for its 10 %.
    other = [rollout.wave_of(s, "base#8", e, labels) for e, labels in edges.items()]
    assert other != waves


@given(
    st.sets(st.integers(0, 5000), min_size=1, max_size=200),
    st.sets(st.integers(0, 5000), max_size=200),
    st.floats(1, 100),
)
def test_percentages_are_stable_as_edges_come_and_go(kept, others, percent):
    s = RolloutSpec.model_validate(
        {"waves": [{"name": "some", "percent": percent}, {"name": "rest", "percent": 100}]}
    )
    alone = {e: rollout.wave_of(s, "p#2", f"e{e}", {}) for e in kept}
    together = {e: rollout.wave_of(s, "p#2", f"e{e}", {}) for e in kept | others}
    assert {e: together[e] for e in kept} == alone


def test_an_edge_taken_by_a_wave_stays_in_it():
    s = spec()
    edges = {"a": {"canary": "true"}, "b": {}}
    state, _ = rollout.advance(
        rollout.start("base", NEW, OLD, s, T0), observe(edges, rollout.start("base", NEW, OLD, s, T0)), T0
    )
    assert state.members["a"] == 0
    relabelled = {"a": {}, "b": {"canary": "true"}}
    assert rollout.member_wave(state, "a", relabelled["a"]) == 0
    later, _ = rollout.advance(state, observe(relabelled, state), T0 + timedelta(seconds=1))
    assert later.members == state.members


# --- gates on a fake clock --------------------------------------------------------------


def test_a_passing_rollout_goes_wave_by_wave_and_honours_the_soak():
    s = spec(soak="10m")
    edges = fleet(40, canaries=2)
    state = rollout.start("base", NEW, OLD, s, T0)
    now = T0
    state, happened = rollout.advance(state, observe(edges, state), now)
    assert [t.kind for t in happened] == ["wave_started"]
    canary = wave_edges(state, 0)
    assert canary == {"e0", "e1"}
    # Only the canaries run the new revision.
    assert {e for e, labels in edges.items() if rollout.revision_for(state, e, labels) == NEW} == canary
    now += timedelta(seconds=5)
    state, happened = rollout.advance(state, observe(edges, state, applying=canary), now)
    assert [t.kind for t in happened] == ["wave_converged"]
    converged = now
    # Not a second before the soak ends...
    for wait in (60, 599):
        state, happened = rollout.advance(
            state, observe(edges, state, applying=canary), converged + timedelta(seconds=wait)
        )
        assert happened == []
        assert state.wave == 0
    # ...and at its end the next wave starts.
    now = converged + timedelta(seconds=600)
    state, happened = rollout.advance(state, observe(edges, state, applying=canary), now)
    assert [t.kind for t in happened] == ["wave_passed", "wave_started"]
    assert state.wave == 1
    for index in (1, 2):
        running = {
            e
            for e in edges
            if rollout.wave_of(s, state.key, e, edges[e]) is not None and state.members[e] <= index
        }
        now += timedelta(seconds=5)
        state, _ = rollout.advance(state, observe(edges, state, applying=running), now)
        now += timedelta(seconds=600)
        state, _ = rollout.advance(state, observe(edges, state, applying=running), now)
    assert state.status is RolloutStatus.COMPLETE
    assert all(rollout.revision_for(state, e, labels) == NEW for e, labels in edges.items())
    assert rollout.describe(state, "e5", {}) == "rollout base#7: complete"


def test_a_failing_canary_halts_and_no_later_edge_gets_the_revision():
    s = spec()
    edges = fleet(20, canaries=2)
    state = rollout.start("base", NEW, OLD, s, T0)
    state, _ = rollout.advance(state, observe(edges, state), T0)
    state, happened = rollout.advance(
        state, observe(edges, state, applying={"e0", "e1"}, failing={"e0"}), T0 + timedelta(seconds=3)
    )
    assert state.status is RolloutStatus.HALTED
    assert [t.kind for t in happened] == ["edge_failed", "halted"]
    assert state.waves[0].failed == {"e0": "boom: the driver refused it"}
    later = [e for e in edges if state.members[e] > 0]
    assert all(rollout.revision_for(state, e, edges[e]) == OLD for e in later)
    assert rollout.revision_for(state, "e1", edges["e1"]) == NEW  # halted where it was
    assert (
        rollout.describe(state, "e9", {})
        == "rollout base#7 wave " + s.waves[state.members["e9"]].name + ": halted before its wave"
    )
    again, happened = rollout.advance(state, observe(edges, state), T0 + timedelta(hours=1))
    assert happened == []
    assert again == state


def test_rollback_returns_the_failed_wave_to_the_previous_revision():
    s = spec(on_failure="rollback", max_failures=0)
    edges = fleet(10, canaries=2)
    state = rollout.start("base", NEW, OLD, s, T0)
    state, _ = rollout.advance(state, observe(edges, state), T0)
    state, happened = rollout.advance(
        state, observe(edges, state, applying={"e0", "e1"}, failing={"e1"}), T0 + timedelta(seconds=3)
    )
    assert state.status is RolloutStatus.ROLLED_BACK
    assert happened[-1].kind == "rolled_back"
    assert {rollout.revision_for(state, e, edges[e]) for e in edges} == {OLD}
    assert rollout.describe(state, "e0", edges["e0"]) == "rollout base#7 wave canary: rolled back"


def test_max_failures_tolerates_that_many_per_wave():
    s = spec(max_failures=1, soak=0)
    edges = fleet(10, canaries=3)
    state = rollout.start("base", NEW, OLD, s, T0)
    state, _ = rollout.advance(state, observe(edges, state), T0)
    canary = {"e0", "e1", "e2"}
    state, happened = rollout.advance(
        state, observe(edges, state, applying=canary, failing={"e2"}), T0 + timedelta(seconds=1)
    )
    assert state.status is RolloutStatus.RUNNING
    assert state.wave == 1
    assert [t.kind for t in happened] == ["edge_failed", "wave_converged", "wave_passed", "wave_started"]


def test_an_edge_not_converged_by_the_wave_timeout_fails_it():
    s = spec(wave_timeout="5m")
    edges = fleet(5, canaries=2)
    state = rollout.start("base", NEW, OLD, s, T0)
    state, _ = rollout.advance(state, observe(edges, state), T0)
    state, _ = rollout.advance(state, observe(edges, state, applying={"e0"}), T0 + timedelta(seconds=299))
    assert state.status is RolloutStatus.RUNNING
    state, _happened = rollout.advance(
        state, observe(edges, state, applying={"e0"}), T0 + timedelta(seconds=300)
    )
    assert state.status is RolloutStatus.HALTED
    assert state.waves[0].failed == {"e1": "not converged within wave_timeout (300 s)"}


def test_an_edge_going_offline_during_the_soak_fails_it():
    edges = fleet(5, canaries=2)
    state = rollout.start("base", NEW, OLD, spec(), T0)
    state, _ = rollout.advance(state, observe(edges, state), T0)
    canary = {"e0", "e1"}
    state, _ = rollout.advance(state, observe(edges, state, applying=canary), T0 + timedelta(seconds=2))
    assert state.waves[0].converged_at is not None
    state, _ = rollout.advance(
        state, observe(edges, state, applying=canary, offline={"e1"}), T0 + timedelta(seconds=60)
    )
    assert state.status is RolloutStatus.HALTED
    assert state.waves[0].failed == {"e1": "went offline during the soak"}


@pytest.mark.parametrize("policy", ["skip", "wait", "fail"])
def test_an_edge_offline_when_its_wave_starts(policy):
    edges = fleet(5, canaries=2)
    state = rollout.start("base", NEW, OLD, spec(offline=policy, soak=0, wave_timeout="1h"), T0)
    state, _ = rollout.advance(state, observe(edges, state, offline={"e1"}), T0)
    # Whatever the policy, its wave started: it is handed the new revision for when it returns.
    assert rollout.revision_for(state, "e1", edges["e1"]) == NEW
    state, _ = rollout.advance(
        state, observe(edges, state, applying={"e0"}, offline={"e1"}), T0 + timedelta(seconds=5)
    )
    if policy == "skip":
        assert state.waves[0].skipped == ["e1"]
        assert state.waves[0].passed_at is not None
    elif policy == "wait":
        assert state.status is RolloutStatus.RUNNING
        assert state.wave == 0
        state, _ = rollout.advance(
            state, observe(edges, state, applying={"e0", "e1"}), T0 + timedelta(seconds=9)
        )
        assert state.waves[0].passed_at is not None  # it came back and converged
    else:
        assert state.status is RolloutStatus.HALTED
        assert state.waves[0].failed == {"e1": "offline when its wave started"}


def test_pause_resume_abort_and_promote():
    edges = fleet(10, canaries=2)
    state = rollout.start("base", NEW, OLD, spec(soak="10m", wave_timeout="5m"), T0)
    state, _ = rollout.advance(state, observe(edges, state), T0)
    paused = rollout.pause(state, T0 + timedelta(seconds=10))
    # Paused: nothing moves, not even the wave's timeout.
    same, happened = rollout.advance(paused, observe(edges, paused), T0 + timedelta(hours=2))
    assert (same, happened) == (paused, [])
    with pytest.raises(RolloutError, match="it is paused, not running"):
        rollout.promote(paused, T0)
    resumed = rollout.resume(paused, T0 + timedelta(seconds=610))
    assert resumed.paused_for == 600
    # The timeout moved by the 10 paused minutes: not failed at T0 + 5 min + 5 min.
    state, _ = rollout.advance(resumed, observe(edges, resumed), T0 + timedelta(seconds=611))
    assert state.status is RolloutStatus.RUNNING
    state, _ = rollout.advance(
        state, observe(edges, state, applying={"e0", "e1"}), T0 + timedelta(seconds=620)
    )
    assert state.waves[0].converged_at is not None
    assert state.wave == 0
    promoted = rollout.promote(state, T0 + timedelta(seconds=621))
    state, happened = rollout.advance(
        promoted, observe(edges, promoted, applying={"e0", "e1"}), T0 + timedelta(seconds=622)
    )
    assert state.wave == 1
    assert "wave_passed" in [t.kind for t in happened]
    assert not state.promoted  # for that wave only
    aborted = rollout.abort(state, T0 + timedelta(seconds=630))
    assert aborted.status is RolloutStatus.ABORTED
    assert rollout.revision_for(aborted, "e0", edges["e0"]) == NEW  # what ran it keeps it
    with pytest.raises(RolloutError, match="aborted already"):
        rollout.abort(aborted, T0)


# --- the safety property ----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    edges=st.integers(1, 40),
    canaries=st.integers(0, 5),
    steps=st.lists(
        st.tuples(
            st.integers(0, 900),  # seconds until the next look
            st.one_of(st.just(1.0), st.floats(0, 1)),  # share that applied what they should run
            st.one_of(st.just(0.0), st.floats(0, 0.2)),  # share failing
            st.floats(0, 0.2),  # share offline
            st.sampled_from(["none", "pause", "resume", "promote"]),
        ),
        max_size=30,
    ),
    policy=st.sampled_from(["skip", "wait", "fail"]),
    failures=st.integers(0, 3),
    on_failure=st.sampled_from(["halt", "rollback"]),
)
def test_no_edge_of_a_later_wave_gets_the_revision_before_the_earlier_waves_passed(
    edges, canaries, steps, policy, failures, on_failure
):
    fleet_ = fleet(edges, canaries)
    state = rollout.start(
        "base",
        NEW,
        OLD,
        spec(offline=policy, max_failures=failures, on_failure=on_failure, soak="5m", wave_timeout="20m"),
        T0,
    )
    now = T0
    ever_new: set[str] = set()
    waves_at: dict[str, int] = {}
    for wait, applied, failing, offline, act in steps:
        now += timedelta(seconds=wait)
        names = sorted(fleet_)
        applying = set(names[: int(len(names) * applied)])
        failing_ = set(names[-int(len(names) * failing) :]) if failing * len(names) >= 1 else set()
        offline_ = set(names[: int(len(names) * offline)])
        try:
            if act == "pause":
                state = rollout.pause(state, now)
            elif act == "resume":
                state = rollout.resume(state, now)
            elif act == "promote":
                state = rollout.promote(state, now)
        except RolloutError:
            pass
        state, _ = rollout.advance(
            state, observe(fleet_, state, applying=applying, failing=failing_, offline=offline_), now
        )
        for edge, labels in fleet_.items():
            wave = rollout.member_wave(state, edge, labels)
            if edge in waves_at:
                assert wave == waves_at[edge], "an edge changed waves"
            elif wave is not None:
                waves_at[edge] = wave
            if rollout.revision_for(state, edge, labels) != NEW:
                # Once it runs the new revision, an edge goes back only by a rollback.
                assert edge not in ever_new or state.status is RolloutStatus.ROLLED_BACK
                continue
            ever_new.add(edge)
            if state.status is RolloutStatus.COMPLETE:
                continue
            assert wave is not None
            assert wave <= state.wave
            assert state.waves[wave].started_at is not None
            assert all(state.waves[w].passed_at is not None for w in range(wave)), (edge, wave, state)


def test_progress_says_where_each_wave_is():
    edges = fleet(10, canaries=3)
    state = rollout.start("base", NEW, OLD, spec(soak="10m", max_failures=1), T0)
    state, _ = rollout.advance(state, observe(edges, state, offline={"e2"}), T0)
    shown = rollout.progress(state, observe(edges, state, offline={"e2"}), T0)
    assert (shown[0].name, shown[0].phase, shown[0].members) == ("canary", "converging", 3)
    assert [w.phase for w in shown[1:]] == ["waiting", "waiting"]
    assert (
        shown[0].line() == "canary     converging  0/3 converged, 0 failed, 2 pending, 1 offline, 1 skipped"
    )
    now = T0 + timedelta(seconds=20)
    looked = observe(edges, state, applying={"e0", "e1"}, failing={"e1"})
    state, _ = rollout.advance(state, looked, now)
    canary = rollout.progress(state, looked, now + timedelta(seconds=28))[0]
    assert canary.phase == "soaking"
    assert canary.line() == (
        "canary     soaking     1/3 converged, 1 failed, 0 pending, 0 offline, 1 skipped; soak 9m32s left"
    )
    assert canary.failed == {"e1": "boom: the driver refused it"}
    assert rollout.exit_code(state) is None
    halted = state.model_copy(update={"status": RolloutStatus.HALTED})
    assert rollout.progress(halted, looked, now)[0].phase == "halted"
    assert rollout.exit_code(halted) == 1
    assert rollout.exit_code(state.model_copy(update={"status": RolloutStatus.COMPLETE})) == 0


def test_under_rollouts_an_edge_runs_what_its_wave_gives_it_and_explain_says_why():
    def base(revision: int, marker: str) -> Profile:
        return Profile(name="base", revision=revision, spec=ProfileSpec(config={"m": marker}), rollout=spec())

    other = Profile(name="other", revision=3)
    latest, previous = base(NEW, "new"), base(OLD, "old")
    edges = fleet(20)
    state, _ = rollout.advance(
        rollout.start("base", NEW, OLD, spec(), T0),
        observe(edges, rollout.start("base", NEW, OLD, spec(), T0)),
        T0,
    )
    earlier = {("base", OLD): previous}
    runs, why = rollout.under_rollouts([latest, other], {"base": state}, earlier, "e0", edges["e0"])
    assert runs == [latest, other]
    assert why == {"base": "rollout base#7 wave canary: started"}
    runs, why = rollout.under_rollouts([latest, other], {"base": state}, earlier, "e5", edges["e5"])
    assert runs == [previous, other]
    assert why["base"].endswith(": waiting")
    # A new profile (no previous revision): an edge whose wave has not started runs none.
    fresh = rollout.start("base", NEW, None, spec(), T0)
    runs, _ = rollout.under_rollouts([latest], {"base": fresh}, {}, "e5", edges["e5"])
    assert runs == []
    # A state of another revision (an older rollout) holds nothing back.
    older = state.model_copy(update={"revision": OLD - 1})
    assert rollout.under_rollouts([latest], {"base": older}, earlier, "e5", edges["e5"])[0] == [latest]
