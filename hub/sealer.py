"""The hub's sealer: each edge's secrets, sealed to that edge's key (docs/security.md#sealed-secrets).

It follows the hub's `profiles`, `overrides`, `secrets` and `inventory` buckets and its own
`sealed` bucket. For every edge whose inventory names its key (the edge's nkey: only that
edge's identity may publish its inventory, so the regional's server vouches for it), it
computes the edge's desired state with the same function the edge uses and, for the secrets
that state references, keeps one signed bundle in `sealed` under the edge's id: each value
opened with the hub's key and sealed again to the edge's. `fleetbus.core.secrets.plan`
decides what to write; a bundle nothing references any more is deleted. An edge id that two
regions claim gets nothing (it is ambiguous which key is the edge's).

With no secret and no bundle it computes nothing: a fleet without secrets pays nothing.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fleetbus.core import secrets as core
from fleetbus.core.desired import compute, edge_groups
from fleetbus.nats.bus import Bus
from fleetbus.nats.kv import Bucket, Mirror
from fleetbus.nats.streams import follow_stream
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.sealing import SealError, seal
from fleetbus.runtime.signing import Signer, Verifier
from fleetbus.runtime.tasks import cancel_and_wait
from schemas import subjects
from schemas.base import utcnow
from schemas.event import Event, EventKind
from schemas.inventory import InventorySnapshot
from schemas.override import Override
from schemas.profile import Profile
from schemas.secret import SealedBundle, SealedSecret, SecretRecord

logger = log.get_logger(__name__)

RECHECK = 30.0  # s: overrides expire with the clock, not with a change
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
READMITTED = frozenset({"approved", "redeemed a token: admitted"})  # regional/admission.py


class Sealer:
    def __init__(
        self,
        bus: Bus,
        signer: Signer,
        guard: Verifier,
        metrics: DaemonMetrics,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        js = bus.js
        self.signer, self.clock = signer, clock
        self.profiles = Mirror(Bucket(js, subjects.PROFILES_BUCKET, Profile, metrics=metrics, guard=guard))
        self.overrides = Mirror(Bucket(js, subjects.OVERRIDES_BUCKET, Override, metrics=metrics, guard=guard))
        self.secrets = Mirror(Bucket(js, subjects.SECRETS_BUCKET, SecretRecord, metrics=metrics, guard=guard))
        self.inventory = Mirror(Bucket(js, subjects.INVENTORY_BUCKET, InventorySnapshot, metrics=metrics))
        self.store = Bucket(
            js, subjects.SEALED_BUCKET, SealedBundle, metrics=metrics, signer=signer, guard=guard
        )
        self.sealed = Mirror(self.store)
        # The inventory (every edge's snapshots, the busiest bucket) is followed only once
        # there is a secret or a bundle: until then nothing needs an edge's key or labels.
        self.mirrors: list[Mirror[Any]] = [self.profiles, self.overrides, self.secrets, self.sealed]
        self.changed = asyncio.Event()
        for mirror in (self.profiles, self.overrides, self.secrets):
            mirror.listen(lambda _entries: self.changed.set())  # its own writes need no second look
        # Snapshots come every inventory interval from every edge; only a new edge, key,
        # labels or a gone edge changes what to seal.
        self.inventory.listen(self._inventory_changed)
        self.seen: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}  # KV key -> (key, labels)
        self.revisions: dict[str, int] = {}  # edge -> the last signed revision written
        self.js = js
        self.revoked: set[tuple[str, str]] = set()  # (region, edge) whose key its regional refuses

    def _inventory_changed(self, entries: list[Any]) -> None:
        for entry in entries:
            snapshot = entry.value
            now = (snapshot.public_key, tuple(sorted(snapshot.labels.items()))) if snapshot else None
            if self.seen.get(entry.key) != now:
                if now is None:
                    self.seen.pop(entry.key, None)
                else:
                    self.seen[entry.key] = now
                self.changed.set()

    async def follow_revocations(self) -> None:
        """Edges revoked at their regional (its `audit` events, in the hub's EVENTS) get no new
        version: their bundles go. Admitted again (a token redeemed, or approved): they do."""
        retry = Backoff(0.5, cap=10.0)
        subject = f"{subjects.PREFIX}.edge.*.*.events.{EventKind.AUDIT.value}"
        while True:
            try:
                async for event in follow_stream(
                    self.js, subjects.EVENTS_STREAM, subject, Event, since=EPOCH
                ):
                    retry.reset()
                    action = str(event.data.get("action", ""))
                    if action == "revoked":
                        self.revoked.add((event.region, event.edge))
                    elif action in READMITTED:
                        self.revoked.discard((event.region, event.edge))
                    else:
                        continue
                    self.changed.set()
            except Exception as exc:  # the stream not there yet, the server restarting
                logger.warning("following revocations broke; following again", error=repr(exc))
            await retry.wait()

    async def run(self) -> None:
        tasks = [asyncio.create_task(m.run(), name=f"sealer-{m.bucket.name}") for m in self.mirrors]
        revocations = asyncio.create_task(self.follow_revocations(), name="sealer-revocations")
        try:
            await _loaded(self.mirrors, tasks)
            # Revisions go on from the highest this bucket holds (deletes too), so a restart
            # never signs one an edge took already, whatever the clock says.
            for entry in (await self.store.snapshot())[0]:
                self.revisions[entry.key] = entry.signed_revision or 0
            while True:
                self.changed.clear()
                if len(tasks) == len(self.mirrors) and (self.secrets.values or self.sealed.values):
                    tasks.append(asyncio.create_task(self.inventory.run(), name="sealer-inventory"))
                    await _loaded([self.inventory], tasks)
                if self.inventory.loaded.is_set():
                    try:
                        await self.seal_all()
                    except Exception as exc:  # the next change or recheck tries again
                        logger.warning("sealing failed; trying again", error=repr(exc))
                        await asyncio.sleep(1.0)  # a pause before retrying, not synchronisation
                        self.changed.set()
                _raise_stopped(tasks)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), RECHECK)
        finally:
            await cancel_and_wait([*tasks, revocations], timeout=10.0)

    def wanted(self) -> dict[str, core.Wanted]:
        """What each edge with a key should hold now."""
        versions = {name: record.version for name, record in self.secrets.values.items()}
        if not versions:
            return {}
        profiles, overrides = list(self.profiles.values.values()), list(self.overrides.values.values())
        now = self.clock()
        # Who an edge is comes from the key its snapshot is stored under (`<region>.<edge>`:
        # the hub takes from each regional only its own region's keys), never from the body.
        claimed: dict[str, list[tuple[str, InventorySnapshot]]] = {}
        for key, snapshot in self.inventory.values.items():
            try:
                region, edge = subjects.split_edge_key(key)
            except ValueError:
                continue
            if snapshot.public_key and (snapshot.region, snapshot.edge) == (region, edge):
                claimed.setdefault(edge, []).append((region, snapshot))
        wanted: dict[str, core.Wanted] = {}
        for edge, snapshots in claimed.items():
            if len(snapshots) != 1:
                logger.warning("edge id heard from more than one region: sealing nothing to it", edge=edge)
                continue
            region, snap = snapshots[0]
            if (region, edge) in self.revoked:
                continue
            # The `region` label is the one the hub vouches for: where it hears the edge from.
            labels = {**snap.labels, core.REGION_LABEL: region}
            desired = compute(
                profiles,
                labels,
                edge=edge,
                groups=edge_groups(region, labels),
                overrides=overrides,
                now=now,
            )
            names = core.refs(desired.document) & versions.keys()
            wanted[edge] = core.Wanted(snap.public_key, {n: versions[n] for n in sorted(names)})
        return wanted

    async def seal_all(self) -> None:
        held = {
            edge: core.Wanted(b.key, {n: s.version for n, s in b.secrets.items()})
            for edge, b in self.sealed.values.items()
        }
        if not held and not self.secrets.values:
            return
        wanted = self.wanted()
        plan = core.plan(wanted, held)
        for edge, fresh in sorted(plan.write.items()):
            want, have = wanted[edge], self.sealed.values.get(edge)
            boxes: dict[str, SealedSecret] = {}
            for name in want.versions:
                if name not in fresh and have is not None and name in have.secrets:
                    boxes[name] = have.secrets[name]
                    continue
                record = self.secrets.values[name]
                try:
                    box = seal(self.signer.open(record.sealed), want.key)
                except SealError as exc:  # this one waits (set it again); the others go on
                    logger.warning(
                        "cannot seal a secret for this edge", edge=edge, secret=name, error=str(exc)
                    )
                    if have is not None and name in have.secrets:
                        boxes[name] = have.secrets[name]
                    continue
                boxes[name] = SealedSecret(version=record.version, box=box)
            bundle = SealedBundle(edge=edge, key=want.key, secrets=boxes)
            await self.store.put(edge, bundle, revision=self._next(edge))
            logger.info(
                "sealed secrets for edge", edge=edge, secrets={n: s.version for n, s in boxes.items()}
            )
        for edge in sorted(plan.delete):
            await self.store.delete(edge, revision=self._next(edge))
            logger.info("removed an edge's sealed secrets (nothing it runs references them)", edge=edge)

    def _next(self, edge: str) -> int:
        """The revision to sign the next write of `edge`'s bundle with: above the last one and
        at least the wall clock in milliseconds, so a hub restart (which forgets the last)
        still writes a higher one than every edge has seen."""
        revision = max(self.revisions.get(edge, 0) + 1, int(time.time() * 1000))
        self.revisions[edge] = revision
        return revision


def _raise_stopped(tasks: list[asyncio.Task[None]]) -> None:
    """Raise what stopped a mirror (they retry what is transient, so this is a bug's)."""
    for task in tasks:
        if task.done():
            task.result()
            msg = f"{task.get_name()} stopped"
            raise RuntimeError(msg)


async def _loaded(mirrors: list[Mirror[Any]], tasks: list[asyncio.Task[None]]) -> None:
    """Wait until every mirror delivered what its bucket holds, or raise what stopped one."""
    waits = [asyncio.create_task(m.loaded.wait()) for m in mirrors]
    try:
        while not all(w.done() for w in waits):
            await asyncio.wait([*waits, *tasks], return_when=asyncio.FIRST_COMPLETED)
            _raise_stopped(tasks)
    finally:
        for wait in waits:
            wait.cancel()
