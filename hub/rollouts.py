"""The hub's rollout controller (docs/rollouts.md): the one writer of the `rollouts` bucket.

Each rollout's state (`RolloutState`, key `<profile>.<revision>`) is written only through
this object: the desk starts one when it stores a profile revision that carries `rollout`
(before the revision itself, so no regional ever sees the revision without its state), and
passes operators' pause, resume, abort and promote here; the controller loop feeds
`fleetbus.core.rollout.advance` from the hub's view of the fleet (labels, presence, last
ApplyResults) whenever the view changes and at least every `TICK` seconds, and stores what
changed with compare-and-set on the key's last sequence, so a step is written once: after a
hub restart the loop reads the states again and goes on from there.

The regionals replicate the bucket; their assigners hand each edge the revision
`revision_for` gives it (`regional.assigner`). A rollback stores the previous revision's
content again as a new revision (edges take only higher revisions), with a state that is
complete at once; a newer revision of the profile, or its deletion, ends the rollout
("superseded"). Every transition is a step of the state and an AUDIT record
(`fleet.hub.audit.rollout.<kind>`, actor `rollout-controller`).
"""

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime

from fleetbus.core import rollout
from fleetbus.core.rollout import Observed, RolloutError, Transition
from fleetbus.core.selector import matches
from fleetbus.errors import ConflictError, MissingError
from fleetbus.nats.bus import JetStream
from fleetbus.nats.errors import is_transient
from fleetbus.nats.kv import Bucket, Entry
from fleetbus.runtime import log
from fleetbus.sdk.documents import STAMPS
from fleetbus.sdk.stores import ProfileStore
from hub.fleetview import EdgeView, FleetView
from schemas import subjects
from schemas.base import utcnow
from schemas.codec import JSON, encode_body
from schemas.desk import AuditRecord
from schemas.event import ApplyStatus
from schemas.presence import PresenceState
from schemas.profile import Profile
from schemas.rollout import FINAL, RolloutState, RolloutStatus, Step

logger = log.get_logger(__name__)

TICK = 1.0  # s: the longest the controller goes without looking (deadlines and soaks end on time)
ACTOR = "rollout-controller"


class Rollouts:
    """The rollouts of the hub (see the module's docstring)."""

    def __init__(
        self,
        js: JetStream,
        profiles: ProfileStore,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.js, self.profiles, self.clock = js, profiles, clock
        self.bucket = Bucket(js, subjects.ROLLOUTS_BUCKET, RolloutState)
        self.view: FleetView | None = None  # set by the hub daemon; no view, no advancing
        self.states: dict[str, Entry[RolloutState]] = {}  # key -> its last stored entry
        self.loaded = False
        self._lock = asyncio.Lock()  # one change at a time: the loop, the desk

    # Reading

    async def load(self) -> None:
        entries, _ = await self.bucket.snapshot()
        self.states = {e.key: e for e in entries if e.value is not None}
        self.loaded = True

    async def _ensure_loaded(self) -> None:
        if not self.loaded:
            await self.load()

    async def latest(self, profile: str, revision: int | None = None) -> RolloutState:
        """The rollout of `profile`'s `revision`, or its newest; `MissingError` if none."""
        await self._ensure_loaded()
        if revision is not None:
            entry = self.states.get(subjects.rollout_key(profile, revision))
            if entry is None or entry.value is None:
                msg = f"profile {profile!r} has no rollout of revision {revision}"
                raise MissingError(msg)
            return entry.value
        found = [e.value for e in self.states.values() if e.value is not None and e.value.profile == profile]
        if not found:
            msg = f"profile {profile!r} has no rollout (only profiles with `rollout` have one)"
            raise MissingError(msg)
        return max(found, key=lambda s: s.revision)

    def observed(self, state: RolloutState) -> dict[str, Observed]:
        """What the hub knows of the edges the rollout's profile selects."""
        return observed_in(self.view, state) if self.view is not None else {}

    # Starting (the desk, before it stores the revision)

    async def begin(self, profile: Profile, *, actor: str, immediate: bool = False) -> RolloutState:
        """The rollout of `profile` (the revision about to be stored): its previous revision
        is the one edges keep meanwhile. `immediate`: complete at once (a rollback)."""
        await self._ensure_loaded()
        if profile.rollout is None or profile.revision is None:
            msg = f"profile {profile.name!r} has no rollout, or no revision yet"
            raise ValueError(msg)
        now = self.clock()
        async with self._lock:
            previous = await self._previous(profile.name)
            state = rollout.start(profile.name, profile.revision, previous, profile.rollout, now)
            state.started_by = actor
            if immediate:
                state.status, state.wave = RolloutStatus.COMPLETE, len(state.spec.waves)
            kind = "complete" if immediate else "started"
            state.steps.append(_step(now, kind, f"rollout {state.key} {kind} by {actor}"))
            await self._store(state)
        return state

    async def _previous(self, name: str) -> int | None:
        """The revision edges not yet in a wave keep: the profile's current one, unless its
        own rollout did not complete (then what that one kept)."""
        try:
            current = await self.profiles.get(name)
        except MissingError:
            return None
        entry = self.states.get(subjects.rollout_key(name, current.revision or 0))
        if entry is not None and entry.value is not None and entry.value.status is not RolloutStatus.COMPLETE:
            return entry.value.previous
        return current.revision

    # Operators (through the desk)

    async def operate(self, name: str, op: str, *, actor: str) -> RolloutState:
        """pause, resume, abort or promote the newest rollout of profile `name`."""
        actions = {
            "pause": rollout.pause,
            "resume": rollout.resume,
            "abort": rollout.abort,
            "promote": rollout.promote,
        }
        async with self._lock:
            state = await self.latest(name)
            try:
                changed = actions[op](state, self.clock(), by=actor)
            except RolloutError as exc:
                raise ConflictError(str(exc)) from None
            await self._store(changed)
        await self._audit(changed, op, changed.steps[-1].message, actor=actor)
        return changed

    # The loop

    async def run(self) -> None:
        """Advance every running rollout on each change of the view, at least every `TICK`."""
        view = self.view
        if view is None:
            msg = "the rollout controller runs on the hub's view of the fleet"
            raise RuntimeError(msg)
        await view.ready.wait()  # an empty view would pass every wave at once
        version = 0
        while True:
            try:
                await self._ensure_loaded()
                await self.step()
            except Exception as exc:
                log_fn = logger.warning if is_transient(exc) else logger.exception
                log_fn("rollouts not advanced; again shortly", error=repr(exc))
                self.loaded = False  # read the states again (a conflict: someone else wrote)
            version = await view.changed_since(version, TICK)

    async def step(self) -> None:
        for key in list(self.states):
            entry = self.states.get(key)
            if entry is None or entry.value is None:
                continue
            state = entry.value
            if state.status is RolloutStatus.ROLLED_BACK and state.rollback is None:
                await self._roll_back(state)
            elif state.status not in FINAL:
                await self._advance(key)

    def _current(self, key: str) -> RolloutState | None:
        entry = self.states.get(key)
        return entry.value if entry is not None else None

    async def _advance(self, key: str) -> None:
        async with self._lock:  # the state as stored now (an operator may have changed it)
            state = self._current(key)
            if state is None or state.status in FINAL:
                return
            profile = self.view.profiles.get(state.profile) if self.view is not None else None
            started = state.waves[0].started_at is not None if state.waves else False
            if profile is None and not started:
                return  # a new profile not stored yet (or its apply failed): nothing to advance
            if profile is None or (profile.revision or 0) > state.revision:
                newer = (
                    f"superseded by {state.profile}#{profile.revision}"
                    if profile
                    else "the profile is deleted"
                )
                ended = rollout.abort(state, self.clock(), why=newer)
                await self._store(ended)
                happened = [Transition("superseded", None, f"rollout {state.key} ended: {newer}")]
            elif (profile.revision or 0) < state.revision:
                return  # the revision is not stored yet (or its apply failed): nothing to advance
            else:
                ended, happened = rollout.advance(state, self.observed(state), self.clock())
                if not happened:
                    return
                await self._store(ended)
        for transition in happened:
            logger.info("rollout", key=ended.key, kind=transition.kind, message=transition.message)
            await self._audit(ended, transition.kind, transition.message, transition=transition)
        if ended.status is RolloutStatus.ROLLED_BACK:
            await self._roll_back(ended)

    async def _roll_back(self, state: RolloutState) -> None:
        """Store the previous revision's content again as a new revision (or delete a new
        profile), its state complete at once; record it on the rolled-back state."""
        current = self.view.profiles.get(state.profile) if self.view is not None else None
        if current is not None and (current.revision or 0) != state.revision:
            restored, message = (
                current.revision or 0,
                f"not restored: revision {current.revision} replaced it first",
            )
        elif state.previous is None:
            deleted = await self.profiles.delete(state.profile)
            restored, message = (deleted.revision or state.revision) + 1, "the new profile deleted"
        else:
            previous = await self.profiles.get(state.profile, state.previous)
            content = previous.model_copy(update=dict.fromkeys(STAMPS))
            plan = await self.profiles.plan(content, actor=ACTOR)
            if content.rollout is not None:
                back = rollout.start(
                    state.profile, plan.new.revision or 0, state.revision, content.rollout, self.clock()
                )
                back.status, back.wave, back.rollback_of = (
                    RolloutStatus.COMPLETE,
                    len(back.waves),
                    state.revision,
                )
                back.started_by = ACTOR
                async with self._lock:
                    await self._store(back)
            stored = await self.profiles.apply(content, actor=ACTOR, expect_revision=state.revision)
            restored = stored.new.revision or 0 if stored.changed else state.revision
            message = (
                f"revision {restored} restores revision {state.previous}'s content on every edge"
                if stored.changed
                else f"revision {state.revision} has revision {state.previous}'s content already"
            )
        async with self._lock:
            stored_state = self.states[subjects.rollout_key(state.profile, state.revision)].value or state
            done = stored_state.model_copy(update={"rollback": restored}, deep=True)
            done.steps.append(_step(self.clock(), "restored", f"rollout {state.key}: {message}"))
            await self._store(done)
        await self._audit(done, "restored", message)

    # Writing

    async def _store(self, state: RolloutState) -> None:
        """Compare-and-set on what this object last stored for the key (a conflict: another
        writer; the states are read again)."""
        key = subjects.rollout_key(state.profile, state.revision)
        last = self.states.get(key)
        try:
            sequence = await self.bucket.update(key, state, last=last.revision if last else 0)
        except ConflictError:
            self.loaded = False
            raise
        self.states[key] = Entry(key, state, sequence, self.clock())

    async def _audit(
        self,
        state: RolloutState,
        kind: str,
        message: str,
        *,
        actor: str = ACTOR,
        transition: Transition | None = None,
    ) -> None:
        record = AuditRecord(
            at=self.clock(),
            actor=actor,
            role="" if actor == ACTOR else "operator",
            op=f"rollout.{kind}",
            target=f"rollout {state.key}",
            revision=state.revision,
            outcome="ok",
            detail=message,
            reason=transition.edge or "" if transition else "",
        )
        await self.js.publish(
            subjects.hub_audit(f"rollout.{kind}"), encode_body(record, JSON), stream=subjects.AUDIT_STREAM
        )


def _step(at: datetime, kind: str, message: str) -> Step:
    return Step(at=at, kind=kind, message=message)


def observed_in(fleet: FleetView, state: RolloutState) -> dict[str, Observed]:
    """`observe` on the hub's view: its edges, the profile's latest revision, presence as
    the dashboard shows it (stale and unreachable are not online)."""

    def online(view: EdgeView) -> bool:
        presence = fleet.presence_of(view)
        return presence is not None and presence.state is PresenceState.ONLINE

    return observe(fleet.edges, state, fleet.profiles.get(state.profile), online)


def observe(
    edges: Mapping[str, EdgeView],
    state: RolloutState,
    profile: Profile | None,
    online: Callable[[EdgeView], bool],
) -> dict[str, Observed]:
    """The edges `profile` selects (by the labels they last reported), each with its
    presence, the profile's revision in its last successful apply, and the error of its
    last apply if that apply failed running the rollout's revision."""
    if profile is None:
        return {}
    found = {}
    for edge, view in edges.items():
        labels = _labels(view)
        if labels is None or not matches(profile.selector, labels):
            continue
        applied = failed = None
        result = view.report.apply_result if view.report is not None else None
        if result is not None:
            revision = result.profile_revisions.get(state.profile)
            if result.status is ApplyStatus.FAILED:
                if revision == state.revision:
                    failed = result.error or "the apply failed"
            else:
                applied = revision
        found[edge] = Observed(labels, online(view), applied, failed)
    return found


def _labels(view: EdgeView) -> Mapping[str, str] | None:
    if view.inventory is not None:
        return view.inventory.labels
    if view.report is not None and view.report.apply_result is not None:
        return view.report.apply_result.labels
    return None
