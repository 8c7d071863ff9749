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
from collections import defaultdict
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
from fleetbus.sdk.documents import STAMPS, Plan
from fleetbus.sdk.stores import ProfileStore
from hub.fleetview import EdgeView, FleetView
from schemas import subjects
from schemas.base import utcnow
from schemas.codec import JSON, encode_body
from schemas.desk import AuditRecord
from schemas.event import ApplyStatus
from schemas.presence import PresenceState
from schemas.profile import Profile
from schemas.rollout import FINAL, STEPS_KEPT, RolloutState, RolloutStatus, Step

logger = log.get_logger(__name__)

TICK = 1.0  # s: the longest the controller goes without looking (deadlines and soaks end on time)
GAP = 0.2  # s: the shortest between two looks (a view changing all the time is looked at 5 times a second)
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
        self._lock = asyncio.Lock()  # one change of a state at a time: the loop, the desk
        # Per profile: storing a revision and its state (the desk, a rollback, a re-sign) is
        # one step nothing else of that profile's interleaves with.
        self._writing: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._kept: set[str] = set()  # final states of a profile gone: looked at once

    # Reading

    async def load(self) -> None:
        """Read every state; what this object stored meanwhile (a newer sequence) stays."""
        entries, _ = await self.bucket.snapshot()
        for entry in entries:
            have = self.states.get(entry.key)
            if have is not None and have.revision >= entry.revision:
                continue
            if entry.value is None:
                self.states.pop(entry.key, None)
            else:
                self.states[entry.key] = entry
        self.loaded = True

    async def _ensure_loaded(self) -> None:
        if not self.loaded:
            await self.load()

    def _current(self, key: str) -> RolloutState | None:
        entry = self.states.get(key)
        return entry.value if entry is not None else None

    async def latest(self, profile: str, revision: int | None = None) -> RolloutState:
        """The rollout of `profile`'s `revision`, or its newest (a rollback's own record left
        out: the newest is the one it rolled back); `MissingError` if none."""
        await self._ensure_loaded()
        if revision is not None:
            state = self._current(subjects.rollout_key(profile, revision))
            if state is None:
                msg = f"profile {profile!r} has no rollout of revision {revision}"
                raise MissingError(msg)
            return state
        found = [
            e.value
            for e in self.states.values()
            if e.value is not None and e.value.profile == profile and e.value.rollback_of is None
        ]
        if not found:
            msg = f"profile {profile!r} has no rollout (only profiles with `rollout` have one)"
            raise MissingError(msg)
        return max(found, key=lambda s: s.revision)

    def observed(self, state: RolloutState) -> dict[str, Observed]:
        """What the hub knows of the edges the rollout's profile selects."""
        return observed_in(self.view, state) if self.view is not None else {}

    # Storing revisions (the desk; a rollback)

    async def store(
        self,
        profile: Profile,
        *,
        actor: str,
        expect: int,
        immediate: bool = False,
        rollback_of: RolloutState | None = None,
    ) -> Plan:
        """Store `profile` as its next revision (compare-and-set on `expect`). One carrying
        `rollout` gets its rollout's state first, stamped with the revision's `updated_at`
        (`immediate`: complete at once), so no regional sees the revision without it; if the
        revision is not stored after all, the state goes again."""
        await self._ensure_loaded()
        async with self._writing[profile.name]:
            return await self._store_revision(
                profile, actor=actor, expect=expect, immediate=immediate, rollback_of=rollback_of
            )

    async def _store_revision(
        self,
        profile: Profile,
        *,
        actor: str,
        expect: int,
        immediate: bool = False,
        rollback_of: RolloutState | None = None,
    ) -> Plan:
        """`store`, its caller holding the profile's writing lock."""
        now = self.clock()
        plan = await self.profiles.plan(profile, actor=actor, at=now)
        if not plan.changed:
            return plan
        state = None
        if plan.new.rollout is not None:
            state = await self._begin(plan.new, actor, immediate=immediate, rollback_of=rollback_of)
        try:
            stored = await self.profiles.apply(profile, actor=actor, expect_revision=expect, at=now)
        except BaseException:
            if state is not None:
                await self._void(state, "its revision was not stored")
            raise
        if state is not None and not stored.changed:
            await self._void(state, "its revision was not stored")
        return stored

    async def _begin(
        self, profile: Profile, actor: str, *, immediate: bool, rollback_of: RolloutState | None
    ) -> RolloutState:
        if profile.rollout is None or profile.revision is None:
            msg = f"profile {profile.name!r} has no rollout, or no revision yet"
            raise ValueError(msg)
        now = self.clock()
        async with self._lock:
            previous = rollback_of.previous if rollback_of else await self._previous(profile.name)
            state = rollout.start(profile.name, profile.revision, previous, profile.rollout, now)
            state.started_by, state.stamp = actor, profile.updated_at
            if immediate:
                state.status, state.wave = RolloutStatus.COMPLETE, len(state.spec.waves)
            if rollback_of is not None:
                state.rollback_of = rollback_of.revision
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
        state = self._current(subjects.rollout_key(name, current.revision or 0))
        if state is not None and state.rolls_out(current) and state.status is not RolloutStatus.COMPLETE:
            return state.previous
        return current.revision

    async def resign(self, name: str, *, actor: str) -> Profile:
        """`ProfileStore.resign` of a profile (a key rotation), its rollout carried over to
        the new revision: the same waves, members and status (a halted revision stays
        halted under its new number)."""
        await self._ensure_loaded()
        async with self._writing[name]:
            current = await self.profiles.get(name)
            if current.rollout is None or current.revision is None:
                return await self.profiles.resign(name, actor=actor)
            now = self.clock()
            revision = max(current.revision, await self.profiles.last_revision(name)) + 1
            before = self._current(subjects.rollout_key(name, current.revision))
            async with self._lock:
                if before is not None and before.rolls_out(current):
                    carried = before.model_copy(update={"revision": revision, "stamp": now}, deep=True)
                    message = f"rollout {before.key} carried over to {name}#{revision} (re-signed)"
                else:
                    carried = rollout.start(name, revision, current.revision, current.rollout, now)
                    carried.status, carried.wave = RolloutStatus.COMPLETE, len(carried.waves)
                    carried.stamp = now
                    message = f"rollout {name}#{revision} complete: the same content re-signed"
                carried.steps.append(_step(now, "resigned", message))
                del carried.steps[:-STEPS_KEPT]
                await self._store(carried)
            try:
                return await self.profiles.resign(name, actor=actor, at=now)
            except BaseException:
                await self._void(carried, "its revision was not stored")
                raise

    async def _void(self, state: RolloutState, why: str) -> None:
        """Remove the state of a revision that was never stored (a leftover would otherwise
        name a revision number the next apply reuses)."""
        key = subjects.rollout_key(state.profile, state.revision)
        async with self._lock:
            await self.bucket.delete(key)
            self.states.pop(key, None)
        logger.info("rollout state removed", key=state.key, why=why)

    # Operators (through the desk, which audits them)

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
        logger.info("rollout", key=changed.key, kind=op, actor=actor)
        return changed

    # The loop

    async def run(self) -> None:
        """Advance every running rollout on each change of the view (at most every `GAP`),
        at least every `TICK`."""
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
                log_fn("rollouts not read; again shortly", error=repr(exc))
                self.loaded = False
            await asyncio.sleep(GAP)  # a rate limit
            version = await view.changed_since(version, TICK)

    async def step(self) -> None:
        """Look at every rollout; one that fails (a write refused, a restore impossible) is
        logged and looked at again next time, never holding up the others."""
        for key in list(self.states):
            try:
                await self._step(key)
            except Exception as exc:
                log_fn = logger.warning if is_transient(exc) else logger.exception
                log_fn("rollout not advanced; again shortly", key=key, error=repr(exc))
                if isinstance(exc, ConflictError):
                    self.loaded = False  # another writer: read the states again

    async def _step(self, key: str) -> None:
        state = self._current(key)
        if state is None or key in self._kept:
            return
        profile = self.view.profiles.get(state.profile) if self.view is not None else None
        if profile is None or not state.rolls_out(profile):
            await self._settle(key)
        elif state.status is RolloutStatus.ROLLED_BACK:
            if state.rollback is None and not state.restore_failed:
                await self._roll_back(key)
        elif state.status not in FINAL:
            await self._advance(key)

    async def _settle(self, key: str) -> None:
        """A state whose revision the view does not hold: the view is behind, a newer
        revision or a delete superseded it (a running rollout ends), or its revision was
        never stored (a leftover of a failed apply: it goes)."""
        state = self._current(key)
        if state is None:
            return
        async with self._writing[state.profile]:  # an apply under way finishes first
            last = await self.profiles.last_revision(state.profile)
            try:
                current: Profile | None = await self.profiles.get(state.profile)
            except MissingError:
                current = None
            if current is not None and state.rolls_out(current):
                return  # the view is behind
            if state.revision > last or (current is not None and current.revision == state.revision):
                await self._void(state, "its revision was never stored")
                return
            if state.status in FINAL:
                self._kept.add(key)
                return
            newer = (
                f"superseded by {state.profile}#{current.revision}" if current else "the profile is deleted"
            )
            async with self._lock:
                state = self._current(key) or state
                ended = rollout.abort(state, self.clock(), why=newer)
                await self._store(ended)
        await self._audit(ended, "superseded", f"rollout {state.key} ended: {newer}")

    async def _advance(self, key: str) -> None:
        async with self._lock:  # the state as stored now (an operator may have changed it)
            state = self._current(key)
            if state is None or state.status in FINAL:
                return
            ended, happened = rollout.advance(state, self.observed(state), self.clock())
            if not happened and ended.members == state.members:
                return
            await self._store(ended)
        for transition in happened:
            logger.info("rollout", key=ended.key, kind=transition.kind, message=transition.message)
            await self._audit(ended, transition.kind, transition.message, transition=transition)
        if ended.status is RolloutStatus.ROLLED_BACK:
            await self._roll_back(key)

    async def _roll_back(self, key: str) -> None:
        """Store the previous revision's content again as a new revision (or delete a new
        profile), its state complete at once; record on the rolled-back state which revision
        restored it, or why none could."""
        state = self._current(key)
        if state is None:
            return
        async with self._writing[state.profile]:
            restored, failed, message = await self._restore(state)
            async with self._lock:
                now_state = self._current(key) or state
                done = now_state.model_copy(
                    update={"rollback": restored, "restore_failed": failed}, deep=True
                )
                done.steps.append(_step(self.clock(), "restored" if restored else "not_restored", message))
                del done.steps[:-STEPS_KEPT]
                await self._store(done)
        await self._audit(done, "restored" if restored else "not_restored", message)

    async def _restore(self, state: RolloutState) -> tuple[int | None, str, str]:
        """(the restoring revision, why none, what happened)."""
        try:
            latest = await self.profiles.get(state.profile)
        except MissingError:
            return (
                None,
                "the profile is deleted",
                f"rollout {state.key}: not restored, the profile is deleted",
            )
        if latest.revision != state.revision:
            why = f"revision {latest.revision} replaced it first"
            return None, why, f"rollout {state.key}: not restored, {why}"
        if state.previous is None:
            deleted = await self.profiles.delete(state.profile, expect_revision=state.revision)
            restored = (deleted.revision or state.revision) + 1
            return restored, "", f"rollout {state.key}: the new profile deleted (revision {restored})"
        try:
            previous = await self.profiles.get(state.profile, state.previous)
        except MissingError:
            why = f"revision {state.previous} is no longer in the hub's history: apply its content again"
            return None, why, f"rollout {state.key}: not restored, {why}"
        content = previous.model_copy(update=dict.fromkeys(STAMPS))
        stored = await self._store_revision(
            content, actor=ACTOR, expect=state.revision, immediate=True, rollback_of=state
        )
        if not stored.changed:
            return (
                state.revision,
                "",
                f"revision {state.revision} has revision {state.previous}'s content already",
            )
        restored = stored.new.revision or 0
        return restored, "", f"revision {restored} restores revision {state.previous}'s content on every edge"

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
        self._kept.discard(key)

    async def _audit(
        self, state: RolloutState, kind: str, message: str, *, transition: Transition | None = None
    ) -> None:
        record = AuditRecord(
            at=self.clock(),
            actor=ACTOR,
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
        # Unreachable: the hub cannot hear the edge's region, which says nothing of the edge
        # (a blip of the hub's link must not fail a soak); stale and offline are not online.
        presence = fleet.presence_of(view)
        return presence is not None and presence.state in (PresenceState.ONLINE, PresenceState.UNREACHABLE)

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
