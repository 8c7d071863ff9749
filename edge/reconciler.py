"""The edge reconciler: watch the local replicas, compute the desired state, apply on change.

Inputs are the edge's own replicas of the `profiles` and `overrides` buckets (sourced from its
regional, so they survive a cut link and a restart), mirrored by `DesiredInputs`, its labels
and its groups. Whenever an input changes, or an override expires, it recomputes the
effective desired state with `fleetbus.core.desired.compute` (the same function the hub uses for
`explain` and compliance) and, if the content hash or the profile revisions differ from what
it last reported, applies it through the driver and emits an ApplyResult event into the
edge's EVENTS stream (a thin edge: into its outbox subject, `edge.hollow`).

A value that cannot be decoded is counted and skipped; the last good value of that key stays.
So is a record the edge's `Verifier` refuses (unsigned, forged, signed by a key it did not
pin, an older revision replayed: docs/security.md#signed-desired-state), which the reconciler
also reports upstream as an alert event.
"""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from edge.drivers import Drift, Driver, DriverError
from fleetbus.core import assignment
from fleetbus.core import secrets as secret_refs
from fleetbus.core.desired import DesiredState, compute
from fleetbus.core.selector import matches
from fleetbus.core.trust import Record, Refusal
from fleetbus.nats.bus import Bus, store_event
from fleetbus.nats.kv import Bucket, Entry, Mirror
from fleetbus.runtime import log, sealing
from fleetbus.runtime.backoff import Backoff
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.sealing import SealError
from fleetbus.runtime.signing import Verifier
from fleetbus.runtime.tasks import cancel_and_wait, wait_event
from schemas import subjects
from schemas.base import Message, utcnow
from schemas.codec import decode_body
from schemas.errors import DecodeError
from schemas.event import ApplyResult, ApplyStatus, Event, EventKind, ObjectResult, Severity
from schemas.headers import REVISION, SIGNER
from schemas.override import Override, OverrideScope
from schemas.profile import Profile
from schemas.secret import SealedBundle

logger = log.get_logger(__name__)

M = TypeVar("M", bound=Message)

Changed = Collection[tuple[str, str]]  # the (bucket, key) pairs one burst of changes touched


class DesiredInputs:
    """Profiles and overrides, mirrored from this site's buckets with one watch each.

    `run()` keeps `profiles` and `overrides` equal to the buckets and sets `loaded` once both
    delivered what they held. Listeners then hear, after each burst of changes (never in the
    middle of one: a half-updated state must not be applied), which keys it touched; they hear
    `()` once when loaded. A value that cannot be decoded is counted and skipped; the last
    good value of that key stays. A full edge's reconciler owns one; the hollow edges of a
    process share one (`edge.hollow`).
    """

    def __init__(
        self,
        bus: Bus,
        metrics: DaemonMetrics,
        *,
        guard: Verifier | None = None,
        sealed: bool = False,
        handed: bool = False,
    ) -> None:
        """`handed`: profiles from the regional's `assigned` bucket, each edge its own keys
        (`profiles_of`), as the regional hands them (hollow edges, which share one mirror);
        else from this site's replica of `profiles`."""
        self.handed = handed
        self._by_edge: dict[str, dict[str, Profile]] = {}  # handed: edge -> name -> profile
        if handed:
            self._profiles = Mirror(
                Bucket(bus.js, subjects.ASSIGNED_BUCKET, Profile, metrics=metrics, guard=guard),
                f"*.{subjects.ASSIGNED_PROFILE}.*",  # every edge's profile keys
            )
            self._profiles.listen(self._index)  # before the listeners below: they read it
            if guard is not None:
                guard.signed_as = assignment.origin
        else:
            self._profiles = Mirror(
                Bucket(bus.js, subjects.PROFILES_BUCKET, Profile, metrics=metrics, guard=guard)
            )
        self._overrides = Mirror(
            Bucket(bus.js, subjects.OVERRIDES_BUCKET, Override, metrics=metrics, guard=guard)
        )
        self._mirrors: list[Mirror[Any]] = [self._profiles, self._overrides]
        # A full edge's secrets, sealed to its key (its replica holds only its own bundle),
        # followed from `follow_sealed()` on: the first time a secret is referenced.
        self._sealed: Mirror[SealedBundle] | None = None
        self._sealed_task: asyncio.Task[None] | None = None
        if sealed:
            self._sealed = Mirror(
                Bucket(bus.js, subjects.SEALED_BUCKET, SealedBundle, metrics=metrics, guard=guard)
            )
        self.loaded = asyncio.Event()
        self._listeners: list[Callable[[Changed], None]] = []
        # handed: who listens for each edge's keys of `assigned` (a burst of a rollout's wave
        # or a fan-out touches one key per edge: each hears only its own, not the whole burst)
        self._edge_listeners: dict[str, list[Callable[[Changed], None]]] = {}
        for mirror in [*self._mirrors, *([self._sealed] if self._sealed else [])]:
            mirror.listen(self._listener(mirror.bucket.name))

    @property
    def profiles(self) -> dict[str, Profile]:
        return self._profiles.values

    def profiles_of(self, edge: str) -> dict[str, Profile]:
        """The profiles `edge` holds: its own keys of `assigned` (handed), else all of them."""
        return self._by_edge.get(edge, {}) if self.handed else self._profiles.values

    def _index(self, entries: Sequence[Entry[Profile]]) -> None:
        for entry in entries:
            edge, _, name = entry.key.partition(f".{subjects.ASSIGNED_PROFILE}.")
            held = self._by_edge.setdefault(edge, {})
            if entry.value is None:
                held.pop(name, None)
            else:
                held[name] = entry.value

    @property
    def overrides(self) -> dict[str, Override]:
        return self._overrides.values

    @property
    def sealed(self) -> dict[str, SealedBundle]:
        return self._sealed.values if self._sealed else {}

    @property
    def following_sealed(self) -> bool:
        return self._sealed_task is not None and not self._sealed_task.done()

    def follow_sealed(self) -> None:
        """Start mirroring the replica of sealed secrets (its stream exists now); again if
        the mirror stopped (the next reconcile that needs it asks)."""
        if self._sealed is None or self.following_sealed:
            return
        self._sealed_task = asyncio.create_task(self._sealed.run(), name="mirror-sealed")
        self._sealed_task.add_done_callback(_log_stop)

    def listen(self, listener: Callable[[Changed], None], *, edge: str | None = None) -> None:
        """Hear each burst of changes; with `edge` (handed), of `assigned` only that edge's keys."""
        self._listeners.append(listener)
        if edge is not None and self.handed:
            self._edge_listeners.setdefault(edge, []).append(listener)

    async def run(self) -> None:
        """Mirror both buckets until cancelled; raise what ended a mirror."""
        mirrors = [asyncio.create_task(m.run(), name=f"mirror-{m.bucket.name}") for m in self._mirrors]
        try:
            # Loaded only once all have delivered what they hold: never a half state.
            loaded = [asyncio.create_task(m.loaded.wait()) for m in self._mirrors]
            await _first_of(loaded, mirrors, all_of=True)
            self.loaded.set()
            self._tell(())
            forever = asyncio.create_task(asyncio.Event().wait())
            await _first_of([forever], mirrors)  # returns only by raising what ended a mirror
        finally:
            await cancel_and_wait(
                [*mirrors, *([self._sealed_task] if self._sealed_task else [])], timeout=10.0
            )

    def _listener(self, bucket: str) -> Callable[[Sequence[Entry[Any]]], None]:
        return lambda entries: self._heard(bucket, entries)

    def _heard(self, bucket: str, entries: Sequence[Entry[Any]]) -> None:
        if not self.loaded.is_set():  # the first loads are told as one, with `()`
            return
        if bucket != subjects.ASSIGNED_BUCKET:
            self._tell({(bucket, e.key) for e in entries})
            return
        by_edge: dict[str, set[tuple[str, str]]] = {}
        for entry in entries:
            by_edge.setdefault(entry.key.split(".", 1)[0], set()).add((bucket, entry.key))
        for edge, changed in by_edge.items():
            for listener in self._edge_listeners.get(edge, ()):
                listener(changed)

    def _tell(self, changed: Changed) -> None:
        for listener in self._listeners:
            listener(changed)


def _log_stop(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("the mirror of sealed secrets stopped", error=repr(task.exception()))


class Reconciler:
    def __init__(
        self,
        *,
        bus: Bus,
        driver: Driver,
        region: str,
        edge: str,
        labels: Mapping[str, str],
        groups: Sequence[str],
        metrics: DaemonMetrics,
        clock: Callable[[], datetime] = utcnow,
        on_applied: Callable[[], None] = lambda: None,
        on_desired: Callable[[DesiredState], None] = lambda _: None,
        inputs: DesiredInputs | None = None,
        guard: Verifier | None = None,
        event_subject: Callable[[str], str] | None = None,
        seed: str | None = None,
        on_secrets: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.bus, self.driver = bus, driver
        self.seed = seed  # the edge's nkey seed: what opens its sealed secrets
        # Called once the first time the desired state references a secret: make the replica
        # of this edge's sealed secrets and follow it (the daemon's `follow_secrets`).
        self.on_secrets = on_secrets
        self._asking: asyncio.Task[None] | None = None
        self._ask_retry = Backoff(1.0, cap=30.0)
        self.on_applied = on_applied  # e.g. the inventory: what is applied changed
        self.on_desired = on_desired  # e.g. the telemetry forwarder: each computed desired state
        self.region, self.edge = region, edge
        self.labels, self.groups = dict(labels), list(groups)
        self.metrics = metrics
        self.clock = clock
        # Its own mirror of the site's replicas (a full edge: the replica of `overrides`
        # holds only this edge's), or one shared by many edges, which `run()` does not run.
        self.own_inputs = inputs is None
        self.inputs = inputs or DesiredInputs(bus, metrics, guard=guard, sealed=seed is not None)
        if guard is not None:
            guard.on_refused = self.refused  # reported upstream as alerts
            guard.selects = self.stub_selects
        self.inputs.listen(self._heard, edge=self.edge)
        self._mine = {
            (subjects.OVERRIDES_BUCKET, subjects.override_key(OverrideScope.EDGE.value, edge)),
            *(
                (subjects.OVERRIDES_BUCKET, subjects.override_key(OverrideScope.GROUP.value, g))
                for g in groups
            ),
            (subjects.SEALED_BUCKET, edge),
        }
        # Where ApplyResults go: the edge's own EVENTS (a full edge) or its outbox subject in
        # the regional's EVENTS (a thin edge).
        self.event_subject = event_subject or (lambda kind: subjects.edge_event(region, edge, kind))
        self.last: DesiredState | None = None
        self._reported: tuple[str, dict[str, int]] | None = None
        self._reported_ok = True  # whether that last apply succeeded
        self._changed = asyncio.Event()
        self._retry = Backoff(2.0, cap=60.0)
        self._alerts: set[asyncio.Task[None]] = set()
        self._waiting: frozenset[str] = frozenset()  # secrets referenced but not held (logged once)

    @property
    def profiles(self) -> dict[str, Profile]:
        return self.inputs.profiles_of(self.edge)

    @property
    def overrides(self) -> dict[str, Override]:
        return self.inputs.overrides

    def _heard(self, changed: Changed) -> None:
        """Inputs changed: wake up if a profile or one of this edge's overrides did (or at load).
        (A full edge's replica holds no other overrides; a shared mirror holds the region's.)"""
        mine = f"{self.edge}."  # its keys of `assigned` (a hollow edge's handed profiles)
        if not changed or any(
            b == subjects.PROFILES_BUCKET
            or (b, k) in self._mine
            or (b == subjects.ASSIGNED_BUCKET and k.startswith(mine))
            for b, k in changed
        ):
            self._changed.set()

    async def run(self) -> None:
        if not self.own_inputs:
            await self.inputs.loaded.wait()
            await self._loop([])
            return
        feeding = asyncio.create_task(self.inputs.run(), name="desired-inputs")
        try:
            await _first_of([asyncio.create_task(self.inputs.loaded.wait())], [feeding])
            await self._loop([feeding])
        finally:
            await cancel_and_wait([feeding], timeout=10.0)

    async def _loop(self, watchers: list[asyncio.Task[None]]) -> None:
        retry_at: float | None = None
        while True:
            self._changed.clear()
            due = retry_at is not None and time.monotonic() >= retry_at
            if await self.reconcile(force=due):
                retry_at = None
                self._retry.reset()
            elif retry_at is None or due:  # schedule the next retry; other wake-ups keep it
                retry_at = time.monotonic() + self._retry.next_delay()
            timeout = _earliest(self._next_expiry(), retry_at)
            if not watchers:  # inputs shared with other edges (hollow ones): nothing to watch here
                await wait_event(self._changed, timeout)
                continue
            changed = asyncio.create_task(self._changed.wait())
            await _first_of([changed], watchers, timeout=timeout)

    def _next_expiry(self) -> float | None:
        """Seconds until the next active override of this edge expires (it must stop
        applying then)."""
        now = self.clock()
        ends = [
            o.expires_at
            for key, o in self.overrides.items()
            if o.expires_at and o.expires_at > now and (subjects.OVERRIDES_BUCKET, key) in self._mine
        ]
        return min(ends).timestamp() - now.timestamp() + time.monotonic() if ends else None

    def desired(self) -> DesiredState:
        """The effective desired state, each secret reference pinned to the version this
        edge holds sealed (docs/security.md#sealed-secrets)."""
        bundle = self.inputs.sealed.get(self.edge)
        return compute(
            self.profiles.values(),
            self.labels,
            edge=self.edge,
            groups=self.groups,
            overrides=self.overrides.values(),
            now=self.clock(),
            secrets={n: s.version for n, s in bundle.secrets.items()} if bundle else {},
        )

    def _open_secrets(self, desired: DesiredState) -> DesiredState:
        """`desired` with the plaintext of each secret it references, for the driver;
        `DriverError` if a box does not open with this edge's key."""
        names = secret_refs.refs(desired.document)
        if not names:
            return desired
        bundle = self.inputs.sealed.get(self.edge)
        if bundle is None or self.seed is None:
            msg = "no identity (nats_creds) to open sealed secrets with" if self.seed is None else "none held"
            raise DriverError(f"secrets {', '.join(sorted(names))}: {msg}")
        plaintext: dict[str, bytes] = {}
        for name in sorted(names):
            try:
                plaintext[name] = sealing.unseal(bundle.secrets[name].box, self.seed)
            except (KeyError, SealError) as exc:
                held = bundle.secrets.get(name)
                msg = f"secret {name} version {held.version if held else '?'}: {exc}"
                raise DriverError(msg) from None
        return replace(desired, secrets=plaintext)

    def _held_back(self, desired: DesiredState) -> bool:
        """True while `desired` references a secret whose sealed bundle has not reached this
        edge yet (the hub seals it after it sees the change): nothing is applied until it has,
        and the last applied state stays."""
        missing = frozenset(secret_refs.unpinned(desired.document))
        if missing and self.seed and self.on_secrets and not self.inputs.following_sealed:
            self._ask_for_secrets(self.on_secrets)
        if missing and missing != self._waiting:
            why = "this edge has no identity to open them" if self.seed is None else "not sealed to it yet"
            logger.warning("desired state waits for secrets", secrets=sorted(missing), why=why)
        self._waiting = missing
        return bool(missing)

    def _ask_for_secrets(self, on_secrets: Callable[[], Awaitable[None]]) -> None:
        if self._asking is not None and not self._asking.done():
            return

        async def ask(on_secrets: Callable[[], Awaitable[None]]) -> None:
            try:
                await on_secrets()
            except Exception as exc:  # a reconcile after a back-off asks again
                logger.warning("cannot follow sealed secrets yet", error=repr(exc))
                await self._ask_retry.wait()
                self._changed.set()
            else:
                self._ask_retry.reset()

        self._asking = asyncio.create_task(ask(on_secrets), name="follow-secrets")

    async def reconcile(self, *, force: bool = False) -> bool:
        """Apply the desired state if it changed (or `force`); False if the apply failed."""
        desired = self.desired()
        if self._held_back(desired):
            return True  # the bundle's arrival wakes this again
        self.last = desired
        self.on_desired(desired)
        key = (desired.hash, desired.profile_revisions)
        if key == self._reported and not force:
            return self._reported_ok  # a failed apply stays failed until its retry
        started = time.monotonic()
        error: str | None = None
        try:
            applied = await self.driver.apply(self._open_secrets(desired))
        except DriverError as exc:
            status, error, objects = ApplyStatus.FAILED, str(exc), exc.objects
        else:
            status = ApplyStatus.APPLIED if applied.changed else ApplyStatus.UNCHANGED
            objects = applied.objects
        duration = time.monotonic() - started
        self.metrics.reconciles.labels(status=status.value).inc()
        self.metrics.apply_duration.observe(duration)
        await self._report(desired, status, duration, error, objects)
        self._reported, self._reported_ok = key, error is None
        if status is ApplyStatus.APPLIED:
            self.on_applied()
        log_fn = logger.error if error else logger.info
        log_fn("desired state applied", status=status.value, hash=desired.hash, error=error)
        return error is None

    async def _report(
        self,
        desired: DesiredState,
        status: ApplyStatus,
        duration: float,
        error: str | None,
        objects: list[ObjectResult],
    ) -> None:
        await self._emit(
            EventKind.APPLY_RESULT,
            Severity.ERROR if error else Severity.INFO,
            f"{status.value} {desired.hash[:19]}" + (f": {error}" if error else ""),
            apply_result=ApplyResult(
                desired_hash=desired.hash,
                profile_revisions=desired.profile_revisions,
                status=status,
                driver=self.driver.name,
                duration_seconds=duration,
                error=error,
                labels=self.labels,
                groups=self.groups,
                objects=objects,
            ),
        )

    async def report_drift(self, drift: Drift) -> None:
        """One drift finding of the driver, as a `drift` event (`edge.drivers.Drift`)."""
        fields = ", ".join(drift.fields)
        self.metrics.drift.labels(action=drift.action).inc()
        logger.warning("drift", object=drift.object, fields=fields, action=drift.action, error=drift.error)
        await self._emit(
            EventKind.DRIFT,
            Severity.ERROR if drift.error else Severity.WARNING,
            f"drift in {drift.object}: {fields} ({drift.action})"
            + (f": {drift.error}" if drift.error else ""),
            data=drift.as_data(),
        )

    def stub_selects(self, record: Record) -> bool:
        """Whether the profile a stub stands for selects this edge (then the stub is refused:
        the regional withholds the profile). An unreadable stub proves nothing: refused too."""
        if record.bucket != subjects.PROFILES_BUCKET:
            return True
        try:
            stub = decode_body(Profile, record.body, subject=record.key)
        except DecodeError:
            return True
        return matches(stub.selector, self.labels)

    def refused(self, record: Record, refusal: Refusal) -> None:
        """Report a refused desired-state record upstream (an alert event of this edge)."""
        headers = record.headers
        task = asyncio.get_running_loop().create_task(
            self._emit(
                EventKind.ALERT,
                Severity.ERROR,
                f"refused {record.bucket}/{record.key} ({refusal.value}); the last good state stands",
                data={
                    "alert": "desired_state_refused",
                    "bucket": record.bucket,
                    "key": record.key,
                    "reason": refusal.value,
                    "revision": headers.get(REVISION, ""),
                    "signer": headers.get(SIGNER, ""),
                },
            )
        )
        self._alerts.add(task)
        task.add_done_callback(self._alerts.discard)

    async def _emit(self, kind: EventKind, severity: Severity, message: str, **body: Any) -> None:
        """Store one event of this edge (at least once: retried until acknowledged)."""
        event = Event(
            id=f"{self.edge}-{uuid.uuid4().hex}",
            kind=kind,
            region=self.region,
            edge=self.edge,
            observed_at=self.clock(),
            severity=severity,
            message=message,
            **body,
        )
        await store_event(self.bus, self.event_subject(kind.value), event)


def _earliest(*deadlines: float | None) -> float | None:
    """Seconds from now to the earliest monotonic deadline given, `None` if there is none."""
    due = [d for d in deadlines if d is not None]
    return max(0.0, min(due) - time.monotonic()) if due else None


async def _first_of(
    waits: list[asyncio.Task[Any]],
    watchers: list[asyncio.Task[None]],
    *,
    timeout: float | None = None,
    all_of: bool = False,
) -> None:
    """Wait for `waits` (any, or all with `all_of`) or `timeout`; re-raise a watcher's failure."""
    pending = set(waits)
    try:
        while pending:
            done, _ = await asyncio.wait(
                pending | set(watchers), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in watchers:
                if task in done:
                    task.result()  # a watcher never ends by itself: raise what ended it
                    msg = f"{task.get_name()} ended"
                    raise RuntimeError(msg)
            pending -= done
            if not done or not all_of:
                return
    finally:
        for task in pending:
            task.cancel()
