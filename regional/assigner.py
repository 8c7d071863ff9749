"""The regional's assigner: hands each edge the desired state that concerns it
(docs/security.md#edges-receive-only-what-concerns-them).

It follows the regional's replicas of `profiles` and `overrides` (the group keys) and its
`edges` bucket (each edge's labels, as the edge enrolled with them), decides with
`fleetbus.core.assignment` which records each edge should hold, and writes copies of the
hub's signed records (body and signature headers as stored, or a revision's signed stub)
into its `assigned` bucket under `<edge>.profile.<name>` and `<edge>.group.<group>`. An
edge's replicas source only its own keys there (its link may read nothing else).

Writes happen one burst of changes at a time, each key at most once per burst, so a key's
records arrive in order; a burst's writes go out together (`CONCURRENCY` in flight). What
the bucket holds is read once at start, so a restart writes only what changed meanwhile.
An edge that `fleetbus edge forget` removed loses its keys (the regional daemon tells the
assigner when it finds the enrollment gone, and `forget` purges them too).

A profile revision that carries `rollout` (docs/rollouts.md) is handed only as its rollout's
state (the hub's `rollouts` bucket, replicated here) says: each edge gets the revision
`fleetbus.core.rollout.revision_for` gives it, the new one once its wave started, the
previous one before (copied from what the assigner saw before, or from an edge's key that
holds it after a restart); before that state arrives, nothing; and never a revision older
than what the edge's key holds (an edge would refuse it).
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from fleetbus.core import assignment, rollout
from fleetbus.core.assignment import Current, Held
from fleetbus.core.desired import edge_groups
from fleetbus.core.trust import PUT, STUB_OPERATION, Record, revision_of
from fleetbus.nats.bus import Bus
from fleetbus.nats.errors import is_transient
from fleetbus.nats.kv import Bucket, Entry, Mirror
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.signing import stub_record
from fleetbus.runtime.tasks import cancel_and_wait
from schemas import subjects
from schemas.base import Message
from schemas.codec import decode_body
from schemas.enrollment import Enrollment
from schemas.headers import KV_OPERATION, REVISION, SIGNATURE, SIGNER, STUB
from schemas.override import Override, OverrideScope
from schemas.profile import Profile
from schemas.rollout import RolloutState

if TYPE_CHECKING:
    from datetime import datetime

logger = log.get_logger(__name__)

CONCURRENCY = 256  # writes in flight
YIELD_EVERY = 500  # edges decided between two yields to the event loop
KEEP_EARLIER = 4  # earlier revisions of each profile kept in memory (a rollout's previous one)
GROUP_PREFIX = f"{OverrideScope.GROUP.value}."
KEPT_HEADERS = (SIGNER, REVISION, SIGNATURE, STUB, KV_OPERATION)

Pair = tuple[str, str, str]  # (edge, kind, name): one key of `assigned`


class Assigner:
    """Hands each enrolled edge of `region` its records (see the module's docstring)."""

    def __init__(self, bus: Bus, region: str, metrics: DaemonMetrics) -> None:
        self.region, self.metrics = region, metrics
        js = bus.js
        self.assigned = Bucket(js, subjects.ASSIGNED_BUCKET, Message)  # copied, never decoded
        self._profiles = Mirror(Bucket(js, subjects.PROFILES_BUCKET, Profile, metrics=metrics))
        self._groups = Mirror(
            Bucket(js, subjects.OVERRIDES_BUCKET, Override, metrics=metrics), f"{GROUP_PREFIX}>"
        )
        self._edges = Mirror(Bucket(js, subjects.EDGES_BUCKET, Enrollment, metrics=metrics))
        self._rollouts = Mirror(Bucket(js, subjects.ROLLOUTS_BUCKET, RolloutState, metrics=metrics))
        # name -> the latest record (PUT or DEL) of each profile and group override, and what
        # the decisions need of it (decoded once)
        self.profiles: dict[str, tuple[Record, Current]] = {}
        self.groups: dict[str, tuple[Record, Current]] = {}
        self.gated: set[str] = set()  # profiles whose latest revision rolls out in waves
        self.stamps: dict[str, datetime | None] = {}  # profile -> its latest's `updated_at`
        self.rollouts: dict[str, RolloutState] = {}  # `<profile>.<revision>` -> its state
        # name -> revision -> an earlier record of the profile (what a waiting edge keeps)
        self.earlier: dict[str, dict[int, tuple[Record, Current]]] = {}
        self.labels: dict[str, dict[str, str]] = {}  # edge -> its labels
        self.held: dict[Pair, Held] = {}
        self._dirty_profiles: set[str] = set()
        self._dirty_groups: set[str] = set()
        self._dirty_edges: set[str] = set()
        self._gone_edges: set[str] = set()
        self._everything = True  # decide every (edge, key), not only what changed
        self._held_read = False
        self._retry = Backoff(0.5, cap=30.0)
        self._wake = asyncio.Event()
        self._profiles.listen(self._on_profiles)
        self._groups.listen(self._on_groups)
        self._edges.listen(self._on_edges)
        self._rollouts.listen(self._on_rollouts)

    async def run(self) -> None:
        """Follow the replicas and the enrollments, and hand out what changed, until
        cancelled. A failed write is retried (everything decided again, only what is not
        written yet written): never the end of the regional daemon."""
        mirrors = [
            asyncio.create_task(m.run(), name=f"assigner-{m.bucket.name}")
            for m in (self._profiles, self._groups, self._edges, self._rollouts)
        ]
        try:
            for mirror in (self._profiles, self._groups, self._edges, self._rollouts):
                await mirror.loaded.wait()
            while True:
                try:
                    if not self._held_read:
                        await self._read_held()
                    await self._step()
                except Exception as exc:
                    log_fn = logger.warning if is_transient(exc) else logger.error
                    log_fn("handing desired state to edges stopped; retrying", error=repr(exc))
                    self.metrics.assigned_writes.labels(operation="failed").inc()
                    self._everything = True
                    await self._retry.wait()
                    continue
                self._retry.reset()
                await _wait_or_raise(self._wake, mirrors)
        finally:
            await cancel_and_wait(mirrors, timeout=10.0)

    def forget(self, edge: str) -> None:
        """`edge` is no longer enrolled (`fleetbus edge forget` purged its enrollment, which
        a running mirror does not hear): nothing more for it, and its keys go."""
        if self.labels.pop(edge, None) is not None or any(p[0] == edge for p in self.held):
            self._gone_edges.add(edge)
            self._wake.set()

    async def _read_held(self) -> None:
        for record in await self.assigned.records(headers_only=True):
            edge, kind, name = _split(record.key)
            if edge and (revision := revision_of(record.headers)) is not None:
                self.held[(edge, kind, name)] = Held(revision, record.operation)
        self._held_read = True
        logger.info("assigned records read", held=len(self.held))

    # What changed (called by the mirrors, once per burst)

    def _on_profiles(self, entries: Sequence[Entry[Profile]]) -> None:
        for entry in entries:
            if (record := _signed(entry)) is not None:
                selector = entry.value.selector if entry.value is not None else None
                if (before := self.profiles.get(entry.key)) is not None and before[1].operation == PUT:
                    kept = self.earlier.setdefault(entry.key, {})
                    kept[before[1].revision] = before
                    for old in sorted(kept)[:-KEEP_EARLIER]:
                        del kept[old]
                self.profiles[entry.key] = (record, Current(_revision(record), record.operation, selector))
                self.stamps[entry.key] = entry.value.updated_at if entry.value is not None else None
                if entry.value is not None and entry.value.rollout is not None:
                    self.gated.add(entry.key)
                else:
                    self.gated.discard(entry.key)
                self._dirty_profiles.add(entry.key)
        self._wake.set()

    def _on_groups(self, entries: Sequence[Entry[Override]]) -> None:
        for entry in entries:
            if (record := _signed(entry)) is not None:
                group = entry.key.removeprefix(GROUP_PREFIX)
                self.groups[group] = (record, Current(_revision(record), record.operation))
                self._dirty_groups.add(group)
        self._wake.set()

    def _on_rollouts(self, entries: Sequence[Entry[RolloutState]]) -> None:
        for entry in entries:
            if entry.value is None:
                self.rollouts.pop(entry.key, None)
            else:
                self.rollouts[entry.key] = entry.value
                self._dirty_profiles.add(entry.value.profile)
        self._wake.set()

    def _on_edges(self, entries: Sequence[Entry[Enrollment]]) -> None:
        for entry in entries:
            edge = entry.key.removeprefix(f"{self.region}.")
            if entry.value is None:
                self.forget(edge)
            elif entry.value.labels != self.labels.get(edge):
                self.labels[edge] = dict(entry.value.labels)
                self._gone_edges.discard(edge)
                self._dirty_edges.add(edge)
        self._wake.set()

    # Deciding and writing

    async def _step(self) -> None:
        self._wake.clear()
        profiles, groups, edges = self._dirty_profiles, self._dirty_groups, self._dirty_edges
        gone = self._gone_edges
        self._dirty_profiles, self._dirty_groups, self._dirty_edges = set(), set(), set()
        self._gone_edges = set()
        if self._everything:
            self._everything = False
            edges = set(self.labels)
            gone |= {p[0] for p in self.held} - set(self.labels)  # keys of edges gone meanwhile
        writes: dict[Pair, Write] = {}
        await self._recall_earlier()
        # Only a changed profile or group concerns every edge; an edge enrolled or relabelled
        # concerns itself (2,500 edges enrolling one by one once cost a pass over all of them
        # each: most of a regional daemon's CPU while a large hollow fleet started).
        every = bool(profiles or groups)
        for count, edge in enumerate(
            list(self.labels) if every else [e for e in edges if e in self.labels], 1
        ):
            names = self.profiles if edge in edges else profiles
            for name in names:
                self._decide_profile(edge, name, writes)
            chosen = self.groups if edge in edges else groups
            member = set(edge_groups(self.region, self.labels[edge])) if chosen else set()
            for group in chosen:
                self._decide_group(edge, group, group in member, writes)
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # thousands of edges: let the mirrors and heartbeats run
        for edge in gone:
            try:
                await self._forget(edge)
            except Exception:
                self._gone_edges.add(edge)  # again with the next step
                raise
        if writes:
            await self._write(writes)

    def _decide_profile(self, edge: str, name: str, writes: dict[Pair, "Write"]) -> None:
        if name not in self.profiles:
            return  # a rollout's state came first (the desk writes it before the revision)
        pair = (edge, subjects.ASSIGNED_PROFILE, name)
        labels, held = self.labels[edge], self.held.get(pair)
        found = self._revision_for(edge, name, labels)
        if found is None:
            return  # nothing to hand now (a rollout keeps what the edge holds)
        record, current = found
        want = assignment.for_profile(current, labels, held)
        if want is not None and (held is None or held.revision <= want.revision):
            writes[pair] = Write(want, record)

    def _revision_for(self, edge: str, name: str, labels: dict[str, str]) -> tuple[Record, Current] | None:
        """The record of `name` that `edge` should hold: the latest, unless a rollout holds
        it back (then the one its state gives, or None: nothing yet)."""
        latest = self.profiles[name]
        if name not in self.gated or latest[1].operation != PUT:
            return latest
        state = self.rollouts.get(subjects.rollout_key(name, latest[1].revision))
        if state is None or (state.stamp is not None and state.stamp != self.stamps.get(name)):
            # Its state is on its way (another stream), or this one is not its (a leftover
            # of an apply that failed, under the same number): hand nothing before it.
            return None
        runs = rollout.revision_for(state, edge, labels)
        if runs == latest[1].revision:
            return latest
        return self.earlier.get(name, {}).get(runs) if runs is not None else None

    async def _recall_earlier(self) -> None:
        """The previous revision of each profile under way in a rollout, if not seen since
        the start: copied back from an edge's key that holds it."""
        for name in self.gated:
            latest = self.profiles[name][1]
            state = self.rollouts.get(subjects.rollout_key(name, latest.revision))
            previous = state.previous if state is not None else None
            if previous is None or previous in self.earlier.get(name, {}):
                continue
            holder = next(
                (
                    p
                    for p, h in self.held.items()
                    if p[1:] == (subjects.ASSIGNED_PROFILE, name) and h == Held(previous, PUT)
                ),
                None,
            )
            if holder is None:
                continue  # no edge here holds it: edges waiting for their wave get nothing yet
            for record in await self.assigned.records(subjects.assigned_key(*holder)):
                value = decode_body(Profile, record.body, subject=record.key)
                current = Current(previous, PUT, value.selector)
                self.earlier.setdefault(name, {})[previous] = (replace(record, key=name), current)

    def _decide_group(self, edge: str, group: str, member: bool, writes: dict[Pair, "Write"]) -> None:
        pair = (edge, subjects.ASSIGNED_GROUP, group)
        record, current = self.groups[group]
        if (want := assignment.for_group(current, self.held.get(pair), member=member)) is not None:
            writes[pair] = Write(want, record)

    async def _write(self, writes: dict[Pair, "Write"]) -> None:
        pending = list(writes.items())
        for start in range(0, len(pending), CONCURRENCY):
            async with asyncio.TaskGroup() as group:
                for pair, write in pending[start : start + CONCURRENCY]:
                    group.create_task(self._put(pair, write))
        logger.info("desired state handed to edges", records=len(writes))

    async def _put(self, pair: Pair, write: "Write") -> None:
        """Write the record decided on (the one it was decided from, even if a newer one
        arrived meanwhile: that one is decided in the next step)."""
        edge, kind, name = pair
        record = write.record
        body, headers = record.body, {k: v for k, v in record.headers.items() if k in KEPT_HEADERS}
        if write.want.operation == STUB_OPERATION:
            stub = stub_record(record.headers)
            if stub is not None:
                body, headers = stub
            # else: stored before profiles carried stubs; the edge gets the revision itself
            # (it applies it only while it selects it)
        await self.assigned.put_record(subjects.assigned_key(edge, kind, name), body, headers)
        self.held[pair] = write.want
        self.metrics.assigned_writes.labels(operation=write.want.operation).inc()

    async def _forget(self, edge: str) -> None:
        await self.assigned.purge(f"{edge}.>")
        for pair in [p for p in self.held if p[0] == edge]:
            del self.held[pair]
        logger.info("records handed to a forgotten edge removed", edge=edge)


@dataclass(frozen=True)
class Write:
    """One decision: what the edge's key should hold, and the record it is made from."""

    want: Held
    record: Record


def _signed(entry: Entry[Any]) -> Record | None:
    """The record of `entry` if it claims a revision (a key purged without a signed delete,
    or a record nobody signed, changes nothing handed out: an edge would refuse it)."""
    if entry.record is None or revision_of(entry.record.headers) is None:
        return None
    return entry.record


def _revision(record: Record) -> int:
    return revision_of(record.headers) or 0


def _split(key: str) -> tuple[str, str, str]:
    edge, _, rest = key.partition(".")
    kind, _, name = rest.partition(".")
    return (
        (edge, kind, name)
        if kind in (subjects.ASSIGNED_PROFILE, subjects.ASSIGNED_GROUP) and name
        else ("", "", "")
    )


async def _wait_or_raise(wake: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Until `wake` is set; re-raise what ended one of `tasks` (they never end by themselves)."""
    waiter = asyncio.create_task(wake.wait())
    try:
        done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    for task in tasks:
        if task in done:
            task.result()
            msg = f"{task.get_name()} ended"
            raise RuntimeError(msg)
