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
from datetime import datetime
from typing import Any

from fleetbus.core import secrets as core
from fleetbus.core.desired import compute, edge_groups
from fleetbus.nats.bus import Bus
from fleetbus.nats.kv import Bucket, Mirror
from fleetbus.runtime import log
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.sealing import SealError, seal
from fleetbus.runtime.signing import Signer, Verifier
from fleetbus.runtime.tasks import cancel_and_wait
from schemas import subjects
from schemas.base import utcnow
from schemas.inventory import InventorySnapshot
from schemas.override import Override
from schemas.profile import Profile
from schemas.secret import SealedBundle, SealedSecret, SecretRecord

logger = log.get_logger(__name__)

RECHECK = 30.0  # s: overrides expire with the clock, not with a change


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
        for mirror in (self.profiles, self.overrides, self.secrets, self.inventory):
            mirror.listen(lambda _entries: self.changed.set())  # its own writes need no second look
        self.revisions: dict[str, int] = {}  # edge -> the last signed revision written
        self.written = 0  # bundles written since start (tests and logs)

    async def run(self) -> None:
        tasks = [asyncio.create_task(m.run(), name=f"sealer-{m.bucket.name}") for m in self.mirrors]
        try:
            await _loaded(self.mirrors, tasks)
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
            await cancel_and_wait(tasks, timeout=10.0)

    def wanted(self) -> dict[str, core.Wanted]:
        """What each edge with a key should hold now."""
        versions = {name: record.version for name, record in self.secrets.values.items()}
        if not versions:
            return {}
        profiles, overrides = list(self.profiles.values.values()), list(self.overrides.values.values())
        now = self.clock()
        claimed: dict[str, list[InventorySnapshot]] = {}
        for snapshot in self.inventory.values.values():
            if snapshot.public_key:
                claimed.setdefault(snapshot.edge, []).append(snapshot)
        wanted: dict[str, core.Wanted] = {}
        for edge, snapshots in claimed.items():
            if len({(s.region, s.public_key) for s in snapshots}) != 1:
                logger.warning(
                    "edge id claimed by more than one region or key: sealing nothing to it", edge=edge
                )
                continue
            snap = snapshots[0]
            desired = compute(
                profiles,
                snap.labels,
                edge=edge,
                groups=edge_groups(snap.region, snap.labels),
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
            try:
                for name, version in want.versions.items():
                    if name not in fresh and have is not None:
                        boxes[name] = have.secrets[name]
                        continue
                    record = self.secrets.values[name]
                    boxes[name] = SealedSecret(
                        version=version, box=seal(self.signer.open(record.sealed), want.key)
                    )
            except SealError as exc:
                logger.warning("cannot seal a secret for this edge", edge=edge, error=str(exc))
                continue
            bundle = SealedBundle(edge=edge, key=want.key, secrets=boxes)
            await self.store.put(edge, bundle, revision=self._next(edge))
            self.written += 1
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
