"""Hold a lease in a KV bucket and run duties only while it is held
(`fleetbus.core.lease` decides the timing; docs/clustering.md#leases).

`Lease.hold(duties)` runs for as long as the daemon does: it tries to take the lease, runs
`duties()` once it has it, renews it, and cancels the duties the moment it may no longer be
sure it holds it (a renewal refused because someone else took it, or its deadline passed
without a renewal the server confirmed). Then it tries again.
"""

import asyncio
import math
import time
from collections.abc import Callable, Coroutine

from nats.js import JetStreamContext

from fleetbus.core.lease import Held, LeasePolicy
from fleetbus.errors import ConflictError
from fleetbus.nats.errors import TRANSIENT, is_transient
from fleetbus.nats.kv import Bucket
from fleetbus.runtime import log
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.tasks import cancel_and_wait
from schemas.base import utcnow
from schemas.lease import Lease as LeaseRecord

logger = log.get_logger(__name__)


def transient(exc: BaseException) -> bool:
    """A failure worth running the duties again for: a transient NATS error, or a task
    group's failures that all are."""
    if isinstance(exc, BaseExceptionGroup):
        return all(transient(e) for e in exc.exceptions)
    return is_transient(exc)


class Lease:
    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        key: str,
        holder: str,
        *,
        policy: LeasePolicy | None = None,
        metrics: DaemonMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = Bucket(js, bucket, LeaseRecord)
        self.key, self.holder = key, holder
        self.policy = policy or LeasePolicy()
        self.metrics = metrics
        self.clock = clock
        self.held: Held | None = None
        self.gained = 0  # times this daemon took the lease
        if metrics is not None:
            metrics.lease_held.labels(lease=key).set(0)

    async def hold(self, duties: Callable[[Held], Coroutine[object, object, None]]) -> None:
        """Forever: take the lease when it is free, run `duties(held)` while it is held."""
        while True:
            held = await self._take()
            self._set(held)
            self.gained += 1
            logger.info("lease taken", lease=self.key, holder=self.holder, revision=held.revision)
            work: asyncio.Task[None] = asyncio.create_task(duties(held), name=f"duties of lease {self.key}")
            try:
                await self._keep(work, held)
            finally:
                # A cancellation can be swallowed once (CPython gh-86296): cancel until the
                # duties end, and fail the daemon if they outlive the margin.
                if await cancel_and_wait([work], timeout=self.policy.margin):
                    msg = f"the duties of lease {self.key} did not stop within {self.policy.margin} s"
                    raise RuntimeError(msg)
                if not work.cancelled() and work.exception() is not None:
                    logger.debug("duties ended with", error=repr(work.exception()))
                self._set(None)
            logger.warning("lease lost: duties stopped", lease=self.key, holder=self.holder)

    async def hold_alone(self, duties: Callable[[Held], Coroutine[object, object, None]]) -> None:
        """Run `duties` for as long as the daemon runs, without a lease (the only daemon of
        its site); taken up again after a transient failure, like `hold`'s."""
        held = Held(revision=0, until=math.inf)
        self._set(held)
        while True:
            try:
                await duties(held)
            except Exception as exc:
                if not transient(exc):
                    raise
                logger.warning("duties failed; taking them up again", lease=self.key, error=repr(exc))
            await asyncio.sleep(self.policy.every)  # back-off before the retry

    def _set(self, held: Held | None) -> None:
        self.held = held
        if self.metrics is not None:
            self.metrics.lease_held.labels(lease=self.key).set(int(held is not None))

    async def _take(self) -> Held:
        """Create the record once there is none (the server removed an unrenewed one), or take
        it over from a previous life of this same holder (a daemon restarted on its node)."""
        while True:
            sent = self.clock()
            try:
                current = await self.bucket.get(self.key)
                value = LeaseRecord(holder=self.holder, since=utcnow(), ttl_seconds=self.policy.ttl)
                if current is None:
                    revision = await self.bucket.update(self.key, value, last=0)
                    return self.policy.held(revision, sent)
                if current.value is not None and current.value.holder == self.holder:
                    revision = await self.bucket.update(self.key, value, last=current.revision)
                    return self.policy.held(revision, sent)
            except (ConflictError, *TRANSIENT) as exc:
                logger.debug("lease not taken", lease=self.key, error=str(exc) or type(exc).__name__)
            await asyncio.sleep(self.policy.every)  # the next try

    async def _keep(self, work: "asyncio.Task[None]", held: Held) -> None:
        """Renew until a renewal is refused or the deadline passes; return then (or when the
        duties end by themselves, which is a failure they raise)."""
        record = LeaseRecord(holder=self.holder, since=utcnow(), ttl_seconds=self.policy.ttl)
        while True:
            now = self.clock()
            wait = self.policy.next_try(now, held)
            done, _ = await asyncio.wait({work}, timeout=wait)
            if done:
                failure = work.exception()
                if failure is not None and not transient(failure):
                    raise failure  # the daemon's task guard reports it and stops the daemon
                if failure is not None:  # its server or a stream's leader was away: again
                    logger.warning("duties failed; taking them up again", lease=self.key, error=repr(failure))
                    await asyncio.sleep(self.policy.every)  # back-off before the retry
                return
            sent = self.clock()
            if not held.valid(sent):
                return
            try:
                revision = await asyncio.wait_for(
                    self.bucket.update(self.key, record, last=held.revision),
                    timeout=max(0.05, held.until - sent),
                )
            except ConflictError:
                return  # someone else holds it: our record expired and was replaced
            except (TimeoutError, *TRANSIENT) as exc:
                logger.info("lease not renewed", lease=self.key, error=str(exc) or type(exc).__name__)
                continue
            held = self.policy.held(revision, sent)
            self.held = held
