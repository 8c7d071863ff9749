"""Staged rollouts, decided (docs/rollouts.md): which revision of a profile each edge runs
while a rollout is under way, and when its active wave passes its gate, fails, or the
rollout completes.

Pure: the rollout's state, what the edges reported (labels, presence, the revision they last
applied, a failed apply) and the time in; the next state and what happened out. The hub's
controller feeds it; the same `revision_for` says, for `explain` and for what an edge is
handed, which revision an edge should run.

- **Waves** are taken in order; an edge belongs to the first wave that takes it: a wave with
  a `selector` takes the edges it matches, a wave with a `percent` takes each edge not yet
  taken with that probability, decided by a hash of the rollout, the wave and the edge
  (`fraction`): stable as other edges come and go, the same at every tier. The first time the
  state sees an edge its wave is fixed (`members`), so a label change does not move it.
- **An edge runs the new revision** once its wave started (and after, whatever happens to
  the rollout, except a rollback); before, the previous one. A rollback takes the whole
  profile back: the hub stores the previous content as a new revision for every edge.
- **The gate** of the active wave: each of its edges converged (applied the new revision),
  then `soak` seconds with none failing; failed applies, edges not converged `wave_timeout`
  after the wave started and edges going offline during the soak count as failures, and more
  than `max_failures` halt the rollout (`on_failure: halt`) or roll it back (`rollback`).
  Edges offline when the wave starts are left out (`offline: skip`), waited for (`wait`),
  or failures (`fail`).
"""

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from fleetbus.core.selector import matches
from schemas.profile import Profile
from schemas.rollout import (
    FINAL,
    STEPS_KEPT,
    FailurePolicy,
    OfflinePolicy,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    Step,
    WaveState,
)


@dataclass(frozen=True)
class Observed:
    """What the hub knows of one edge the profile selects."""

    labels: Mapping[str, str]
    online: bool
    applied: int | None = None  # the profile's revision in its last successful apply
    # The error of its last apply, if that apply failed and ran the rollout's revision (a
    # failure of the previous revision is not the new one's).
    failed: str | None = None


@dataclass(frozen=True)
class Transition:
    """Something that happened to a rollout (an event and an audit entry at the hub)."""

    kind: (
        str  # started, wave_started, wave_converged, wave_passed, edge_failed, halted, rolled_back, complete
    )
    wave: str | None
    message: str
    edge: str | None = None


def fraction(key: str, wave: str, edge: str) -> float:
    """A number in [0, 1) fixed by the rollout, the wave and the edge alone."""
    digest = hashlib.sha256(f"{key}\n{wave}\n{edge}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def wave_of(spec: RolloutSpec, key: str, edge: str, labels: Mapping[str, str]) -> int | None:
    """The first wave of `spec` that takes `edge` (None: no wave does; it gets the new
    revision when the rollout completes)."""
    for index, wave in enumerate(spec.waves):
        if wave.selector is not None:
            if matches(wave.selector, labels):
                return index
        elif wave.percent is not None and fraction(key, wave.name, edge) < wave.percent / 100:
            return index
    return None


def member_wave(state: RolloutState, edge: str, labels: Mapping[str, str]) -> int | None:
    """`edge`'s wave: the one fixed when the state first saw it, else the one its labels give."""
    if edge in state.members:
        return state.members[edge]
    return wave_of(state.spec, state.key, edge, labels)


def start(
    profile: str, revision: int, previous: int | None, spec: RolloutSpec, now: datetime
) -> RolloutState:
    """A new rollout of `revision` (the first wave starts at the first `advance`)."""
    return RolloutState(
        profile=profile,
        revision=revision,
        previous=previous,
        spec=spec,
        waves=[WaveState() for _ in spec.waves],
        updated_at=now,
    )


def revision_for(state: RolloutState, edge: str, labels: Mapping[str, str]) -> int | None:
    """The revision `edge` should run now (None: none, a new profile it must not run yet)."""
    if state.status is RolloutStatus.COMPLETE:
        return state.revision
    if state.status is RolloutStatus.ROLLED_BACK:
        return state.previous  # every edge: the rollback revision carries the previous content
    wave = member_wave(state, edge, labels)
    if wave is None or wave > state.wave or state.waves[wave].started_at is None:
        return state.previous
    return state.revision


def describe(state: RolloutState, edge: str, labels: Mapping[str, str]) -> str:
    """Why `edge` runs what it runs, for `explain`: `rollout base#7 wave early: waiting`."""
    wave = member_wave(state, edge, labels)
    name = state.spec.waves[wave].name if wave is not None else "none"
    if state.status is RolloutStatus.COMPLETE:
        return f"rollout {state.key}: complete"
    if state.status is RolloutStatus.ROLLED_BACK:
        where = "rolled back"
    elif wave is None or wave > state.wave or state.waves[wave].started_at is None:
        where = "waiting" if state.status not in FINAL else f"{state.status.value} before its wave"
    else:
        where = "started" if wave == state.wave else "passed"
    return f"rollout {state.key} wave {name}: {where}"


Earlier = Mapping[tuple[str, int], Profile]  # (name, revision) -> that revision of the profile


def under_rollouts(
    profiles: Iterable[Profile],
    rollouts: Mapping[str, RolloutState],
    earlier: Earlier,
    edge: str,
    labels: Mapping[str, str],
) -> tuple[list[Profile], dict[str, str]]:
    """The profile revisions `edge` should run while rollouts are under way, and why, per
    profile held back or moved on by one (for `explain`).

    `profiles` are the latest revisions; `rollouts` each profile's rollout state, used only
    if it is the latest revision's. An edge whose wave has not started runs the previous
    revision (from `earlier`; a profile it should not run yet is left out)."""
    chosen, why = [], {}
    for profile in profiles:
        state = rollouts.get(profile.name)
        if profile.rollout is None or state is None or not state.rolls_out(profile):
            chosen.append(profile)
            continue
        runs = revision_for(state, edge, labels)
        why[profile.name] = describe(state, edge, labels)
        if runs == profile.revision:
            chosen.append(profile)
        elif runs is not None:
            # Not in `earlier` (older than the history kept): the latest stands in for it.
            chosen.append(earlier.get((profile.name, runs), profile))
    return chosen, why


def advance(
    state: RolloutState, observed: Mapping[str, Observed], now: datetime
) -> tuple[RolloutState, list[Transition]]:
    """The state after looking at the edges at `now`, and what happened. Repeats are
    harmless: the same inputs give the same state and no new transitions."""
    if state.status in FINAL or state.status is RolloutStatus.PAUSED:
        return state, []
    state = state.model_copy(deep=True)
    happened: list[Transition] = []
    spec = state.spec
    joined = []
    for edge, seen in observed.items():
        if edge not in state.members and (wave := wave_of(spec, state.key, edge, seen.labels)) is not None:
            state.members[edge] = wave
            joined.append(edge)
    while state.wave < len(spec.waves):
        if not _gate(state, observed, now, happened):
            break
    if state.wave >= len(spec.waves) and state.status is RolloutStatus.RUNNING:
        state.status = RolloutStatus.COMPLETE
        happened.append(Transition("complete", None, f"rollout {state.key} complete"))
    if happened:
        _record(state, now, happened)
    elif joined:
        state.updated_at = now  # new members: stored too (a member's wave is fixed from here)
    return state, happened


def _record(state: RolloutState, now: datetime, happened: list[Transition]) -> None:
    state.updated_at = now
    state.steps.extend(
        Step(at=now, kind=t.kind, message=t.message, wave=t.wave, edge=t.edge) for t in happened
    )
    del state.steps[:-STEPS_KEPT]


def _gate(
    state: RolloutState, observed: Mapping[str, Observed], now: datetime, happened: list[Transition]
) -> bool:
    """Look at the active wave; True if it passed (the next one is active now)."""
    spec, index = state.spec, state.wave
    wave, at = spec.waves[index], state.waves[index]
    members = sorted(e for e, w in state.members.items() if w == index)
    if at.started_at is None:
        _start_wave(state, members, observed, now, happened)
    gated = [e for e in members if e not in at.skipped]
    _judge(state, gated, observed, now, happened)
    allowed = spec.allowed_failures(len(members))
    if len(at.failed) > allowed:
        _stop(state, allowed, happened)
        return False
    if any(e not in at.failed and not _converged(state, observed.get(e)) for e in gated):
        return False  # still converging
    if at.converged_at is None:
        at.converged_at = now
        if members:
            happened.append(Transition("wave_converged", wave.name, f"wave {wave.name} converged; soaking"))
    soaked = at.converged_at + timedelta(seconds=spec.soak + state.paused_for)
    if members and not state.promoted and now < soaked:
        return False
    at.passed_at = now
    state.wave += 1
    state.promoted = False
    state.paused_for = 0.0
    happened.append(Transition("wave_passed", wave.name, f"wave {wave.name} passed"))
    return True


def _start_wave(
    state: RolloutState,
    members: list[str],
    observed: Mapping[str, Observed],
    now: datetime,
    happened: list[Transition],
) -> None:
    """The active wave starts: its edges offline now are left out, waited for, or failed."""
    wave, at = state.spec.waves[state.wave], state.waves[state.wave]
    at.started_at = now
    state.paused_for = 0.0
    happened.append(Transition("wave_started", wave.name, f"wave {wave.name} started: {len(members)} edges"))
    for edge in members:
        if _online(observed, edge):
            continue
        if state.spec.offline is OfflinePolicy.SKIP:
            at.skipped.append(edge)
        elif state.spec.offline is OfflinePolicy.FAIL:
            _fail(at, wave.name, edge, "offline when its wave started", happened)


def _judge(
    state: RolloutState,
    gated: list[str],
    observed: Mapping[str, Observed],
    now: datetime,
    happened: list[Transition],
) -> None:
    """Record the failures among the active wave's gated edges: a failed apply, going offline
    during the soak, not converged by the wave's deadline."""
    spec, wave, at = state.spec, state.spec.waves[state.wave], state.waves[state.wave]
    deadline = (at.started_at or now) + timedelta(seconds=spec.wave_timeout + state.paused_for)
    for edge in gated:
        if edge in at.failed:
            continue
        seen = observed.get(edge)
        if seen is not None and seen.failed is not None:
            _fail(at, wave.name, edge, seen.failed, happened)
        elif _converged(state, seen):
            if at.converged_at is not None and not _online(observed, edge):
                _fail(at, wave.name, edge, "went offline during the soak", happened)
        elif now >= deadline:
            why = f"not converged within wave_timeout ({spec.wave_timeout:g} s)"
            _fail(at, wave.name, edge, why, happened)


def _online(observed: Mapping[str, Observed], edge: str) -> bool:
    seen = observed.get(edge)
    return seen is not None and seen.online


def _converged(state: RolloutState, seen: Observed | None) -> bool:
    return seen is not None and seen.applied is not None and seen.applied >= state.revision


def _fail(at: WaveState, wave: str, edge: str, why: str, happened: list[Transition]) -> None:
    at.failed[edge] = why
    happened.append(Transition("edge_failed", wave, f"{edge} failed in wave {wave}: {why}", edge))


def _stop(state: RolloutState, allowed: int, happened: list[Transition]) -> None:
    wave = state.spec.waves[state.wave].name
    failed = state.waves[state.wave].failed
    why = f"{len(failed)} edges failed in wave {wave} (max_failures {allowed})"
    state.reason = why
    if state.spec.on_failure is FailurePolicy.ROLLBACK:
        state.status = RolloutStatus.ROLLED_BACK
        happened.append(Transition("rolled_back", wave, f"rollout {state.key} rolled back: {why}"))
    else:
        state.status = RolloutStatus.HALTED
        happened.append(Transition("halted", wave, f"rollout {state.key} halted: {why}"))


# What an operator does (`fleetbus rollout pause|resume|abort|promote`)


def pause(state: RolloutState, now: datetime, *, by: str = "") -> RolloutState:
    _must_be(state, RolloutStatus.RUNNING, "pause")
    return _operated(state, now, "paused", by, status=RolloutStatus.PAUSED, paused_at=now)


def resume(state: RolloutState, now: datetime, *, by: str = "") -> RolloutState:
    """Running again; the active wave's deadlines move by the time it spent paused."""
    _must_be(state, RolloutStatus.PAUSED, "resume")
    paused = (now - state.paused_at).total_seconds() if state.paused_at else 0.0
    return _operated(
        state,
        now,
        "resumed",
        by,
        status=RolloutStatus.RUNNING,
        paused_at=None,
        paused_for=state.paused_for + max(paused, 0.0),
    )


def abort(state: RolloutState, now: datetime, *, by: str = "", why: str = "") -> RolloutState:
    """Stopped for good: edges keep what they run (those of started waves the new revision)."""
    if state.status in FINAL:
        msg = f"rollout {state.key} is {state.status.value} already"
        raise RolloutError(msg)
    reason = why or (f"aborted by {by}" if by else "aborted")
    return _operated(state, now, "aborted", by, status=RolloutStatus.ABORTED, reason=reason)


def promote(state: RolloutState, now: datetime, *, by: str = "") -> RolloutState:
    """End the active wave's soak: it passes as soon as it converged."""
    _must_be(state, RolloutStatus.RUNNING, "promote")
    return _operated(state, now, "promoted", by, promoted=True)


def _operated(state: RolloutState, now: datetime, kind: str, by: str, **update: object) -> RolloutState:
    """`state` with `update`, and the step an operator (`by`) made."""
    changed = state.model_copy(update={**update, "updated_at": now}, deep=True)
    wave = state.spec.waves[state.wave].name if state.wave < len(state.spec.waves) else None
    who = f" by {by}" if by else ""
    changed.steps.append(Step(at=now, kind=kind, message=f"rollout {state.key} {kind}{who}", wave=wave))
    del changed.steps[:-STEPS_KEPT]
    return changed


class RolloutError(ValueError):
    """An operator's request the rollout's status does not allow."""


def _must_be(state: RolloutState, status: RolloutStatus, what: str) -> None:
    if state.status is not status:
        msg = f"cannot {what} rollout {state.key}: it is {state.status.value}, not {status.value}"
        raise RolloutError(msg)


# What `fleetbus rollout status` and the dashboard show


@dataclass(frozen=True)
class WaveProgress:
    """One wave as an operator sees it."""

    name: str
    phase: str  # waiting, converging, soaking, passed, halted, rolled back, aborted
    members: int
    converged: int
    pending: int
    offline: int
    skipped: int
    failed: Mapping[str, str]  # edge -> why
    soak_left: float | None = None  # seconds, while soaking

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "failed": dict(self.failed), "line": self.line()}

    def line(self) -> str:
        """`early     soaking   9/10 converged, 1 failed, 0 pending, 0 offline; soak 4m12s left`"""
        counts = (
            f"{self.converged}/{self.members} converged, {len(self.failed)} failed, "
            f"{self.pending} pending, {self.offline} offline"
        )
        if self.skipped:
            counts += f", {self.skipped} skipped"
        left = f"; soak {_duration(self.soak_left)} left" if self.soak_left is not None else ""
        return f"{self.name:<10} {self.phase:<11} {counts}{left}"


def progress(state: RolloutState, observed: Mapping[str, Observed], now: datetime) -> list[WaveProgress]:
    """Every wave of `state`, counted from what the edges reported."""
    found = []
    for index, wave in enumerate(state.spec.waves):
        at = state.waves[index] if index < len(state.waves) else WaveState()
        members = [e for e, w in state.members.items() if w == index]
        converged = sum(1 for e in members if e not in at.failed and _converged(state, observed.get(e)))
        offline = sum(1 for e in members if not _online(observed, e))
        pending = sum(
            1
            for e in members
            if e not in at.failed and e not in at.skipped and not _converged(state, observed.get(e))
        )
        soak_left = None
        phase = _phase(state, index, at)
        if phase == "soaking" and at.converged_at is not None:
            end = at.converged_at + timedelta(seconds=state.spec.soak + state.paused_for)
            stopped = state.paused_at if state.status is RolloutStatus.PAUSED and state.paused_at else now
            soak_left = max((end - stopped).total_seconds(), 0.0)
        found.append(
            WaveProgress(
                wave.name,
                phase,
                len(members),
                converged,
                pending,
                offline,
                len(at.skipped),
                dict(at.failed),
                soak_left,
            )
        )
    return found


def _phase(state: RolloutState, index: int, at: WaveState) -> str:
    if at.passed_at is not None:
        return "passed"
    if at.started_at is None or index > state.wave:
        return "waiting"
    stopped = {
        RolloutStatus.HALTED: "halted",
        RolloutStatus.ROLLED_BACK: "rolled back",
        RolloutStatus.ABORTED: "aborted",
    }
    if state.status in stopped:
        return stopped[state.status]
    return "soaking" if at.converged_at is not None else "converging"


def exit_code(state: RolloutState) -> int | None:
    """What `rollout status --wait` exits with: 0 complete, 1 halted, rolled back or aborted,
    None while it is under way (or paused)."""
    if state.status is RolloutStatus.COMPLETE:
        return 0
    return 1 if state.status in FINAL else None


def _duration(seconds: float | None) -> str:
    whole = int(seconds or 0)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )
