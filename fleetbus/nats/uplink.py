"""Edges push their data upward: one forwarder per uplink stream (EVENTS, INVENTORY).

An edge stores its events and inventory in its own streams first (they wait there while the
link is down). A `Forwarder` reads its stream through a durable consumer and publishes each
message, with its headers, to the edge's outbox subject at the regional
(`fleet.edge.<r>.<e>.outbox.…`), where the regional's stream binds it and stores it under the
subject it has here. The regional's server lets an edge publish only its own subjects, so what
the regional stores under an edge's name came from that edge (docs/security.md); the regional
never reaches into an edge's domain.

Guarantees (docs/architecture.md#data-flows):
- nothing stored here is lost on the way (short of the edge's own limits evicting it first):
  a batch is published in order, the regional's acknowledgements are awaited in order, and the
  position (the durable consumer's ack floor) advances only over the run that was confirmed;
  anything after it is sent again;
- no duplicates in practice: each message keeps its `Nats-Msg-Id`, which the regional's stream
  deduplicates for 2 minutes; beyond that, when resuming, the forwarder asks the regional for
  the newest message of this edge it holds (a direct get naming the edge's own subjects) and
  skips up to it if that message is the one stored here under its `Fleetbus-Origin` sequence
  (same `Nats-Msg-Id`), so acknowledgements lost to a long partition cost no duplicates;
- in order, except around a restart of the edge's own server in the middle of a batch: nats-py
  may send the rest of that batch after reconnecting, so the session that follows re-sends
  the whole batch (duplicates dropped by id) instead of trusting the regional's newest message;
- it resumes the moment the link answers (`poke`, from the upstream probe), after any restart
  of the daemon, the edge's server or the regional's, from the durable position, and only once
  the regional admitted the edge;
- what the edge's own limits evicted before it was forwarded is skipped (and counted by
  `fleetbus.nats.backlog`); a stream of one message per subject (INVENTORY) forwards only the
  latest after a partition of any length.
"""

import asyncio
import contextlib
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from fleetbus.nats.bus import Bus
from fleetbus.nats.errors import TRANSIENT
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.tasks import cancel_and_wait
from schemas import subjects
from schemas.headers import NATS_MSG_ID

logger = log.get_logger(__name__)

ORIGIN = "Fleetbus-Origin"  # "<stream> <created, µs since the epoch> <sequence>" at the edge
DURABLE = "uplink"  # the forwarder's consumer on each uplink stream (its position)
PULL_EXPIRES = 30.0  # seconds a pull request waits for new messages before it is renewed
PULL_HEARTBEAT = 5.0  # the server's idle heartbeat on a waiting pull (a dead local server shows)


@dataclass(frozen=True)
class Uplink:
    """One of an edge's streams that goes up: `filter` is the edge's subjects in it (the same
    subjects the regional stores them under), `outbox` where each is published."""

    stream: str
    filter: str
    outbox: Callable[[str], str]
    superseded_ok: bool = False  # one message per subject: older ones are replaced, not lost

    @classmethod
    def events(cls, region: str, edge: str) -> "Uplink":
        local = subjects.edge_events(region, edge).removesuffix(">")  # ends with .events.
        outbox = subjects.outbox_events(region, edge).removesuffix(">")
        return cls(
            subjects.EVENTS_STREAM,
            subjects.edge_events(region, edge),
            lambda subject: outbox + subject.removeprefix(local),
        )

    @classmethod
    def inventory(cls, region: str, edge: str) -> "Uplink":
        outbox = subjects.outbox_inventory(region, edge)
        return cls(
            subjects.INVENTORY_STREAM,
            subjects.edge_inventory(region, edge),
            lambda _subject: outbox,
            superseded_ok=True,
        )


class UplinkStalledError(Exception):
    """The regional did not confirm a batch, or the local consumer went away: start over."""


class Forwarder:
    """Forwards one uplink stream to the regional, for as long as the daemon runs."""

    def __init__(
        self,
        bus: Bus,
        uplink: Uplink,
        region: str,
        *,
        window: int = 256,
        ack_timeout: float = 2.0,
        ask_timeout: float = 2.0,
        after: asyncio.Event | None = None,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self.bus, self.uplink, self.region = bus, uplink, region
        self.window, self.ack_timeout, self.ask_timeout = window, ack_timeout, ask_timeout
        self.after = after  # set once the regional admitted this edge: nothing goes up before
        self.metrics = metrics
        self.origin = ""  # "<stream> <created>" of the stream the positions below refer to
        self.confirmed: int | None = None  # our last sequence the regional holds; None: unknown
        self._wake = asyncio.Event()
        self._restart = asyncio.Event()
        self._sent = 0  # batches the regional confirmed since start
        # The edge's own server came back: a batch it was sending may have been cut in two,
        # nats-py sending the rest after reconnecting, so the regional's newest message does
        # not prove the ones before it arrived.
        self._local_restart = False

    def poke(self) -> None:
        """The link answers again: stop waiting and resume now."""
        self._wake.set()

    def server_back(self) -> None:
        """The connection to the edge's own server is back, which may have restarted: its
        pull request is gone, and messages it delivered unacknowledged would not come again.
        Start a new session (from the last confirmed position) at once."""
        self._local_restart = True
        self._restart.set()
        self._wake.set()

    async def run(self) -> None:
        self.bus.reconnect_listeners.append(self.server_back)
        if self.after is not None:
            await self.after.wait()
        backoff = Backoff(0.05, cap=1.0)
        while True:
            sent_before = self._sent
            self._restart.clear()
            try:
                await self._until_restart(self._session())
            except (*TRANSIENT, UplinkStalledError) as exc:
                if self.metrics:
                    self.metrics.uplink_stalls.labels(stream=self.uplink.stream).inc()
                logger.debug("uplink waits", stream=self.uplink.stream, reason=str(exc) or type(exc).__name__)
            if self._sent != sent_before:
                backoff.reset()  # it was flowing: the next failure is a new one
            self._wake.clear()
            if not self._restart.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff.next_delay())

    async def _until_restart(self, session: Coroutine[Any, Any, None]) -> None:
        """Run `session` until it ends or `server_back` asks for a new one."""
        task = asyncio.ensure_future(session)
        restart = asyncio.ensure_future(self._restart.wait())
        try:
            await asyncio.wait({task, restart}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([restart, task], 5.0)
        if task.done() and not task.cancelled() and (failure := task.exception()) is not None:
            raise failure

    async def _session(self) -> None:
        """Resume from the last confirmed position and forward until something fails."""
        js, stream = self.bus.js, self.uplink.stream
        info = await js.stream_info(stream)
        origin = f"{stream} {int(info.created.timestamp() * 1_000_000)}" if info.created else stream
        if origin != self.origin:  # first session, or the local stream was created anew
            self.origin, self.confirmed = origin, None
        last = info.state.last_seq
        # The durable position counts only when this daemon knows none of its own: the server
        # also moves it past what the stream's limits evicted, which the regional never got
        # (and `fleetbus.nats.backlog` must count as lost). Never beyond what the stream holds:
        # a server that lost its last writes (a power cut before they were synced) numbers new
        # messages from there again.
        known = min(await self._ack_floor() if self.confirmed is None else self.confirmed, last)
        self.confirmed = known  # what the backlog meter shows while the regional is away
        upstream = await self._upstream_last(last)
        if upstream is None:
            msg = "the regional does not answer"
            raise UplinkStalledError(msg)
        if upstream > known and not self._local_restart:
            known = upstream  # stored, but its acknowledgement was lost (a cut link, a crash)
        self._local_restart = False
        self.confirmed = known
        await self._consumer_from(known + 1)
        inbox = self.bus.nc.new_inbox()
        sub = await self.bus.nc.subscribe(inbox)
        try:
            await self._forward(sub, inbox)
        finally:
            with contextlib.suppress(*TRANSIENT):
                await sub.unsubscribe()

    async def _upstream_last(self, last: int) -> int | None:
        """Our sequence of the newest message of this edge the regional holds, if it is the
        message we hold under that sequence (its `Nats-Msg-Id`), else 0 (none, or another
        incarnation's); None if the regional cannot be asked now. The request names the edge's
        own subjects, the only ones its link permissions let it ask about."""
        api = subjects.js_api_prefix(self.region)
        subject = f"{api}.DIRECT.GET.{self.uplink.stream}.{self.uplink.filter}"
        try:
            reply = await self.bus.nc.request(subject, b"", timeout=self.ask_timeout)
        except TRANSIENT:
            return None
        headers = reply.headers or {}
        if headers.get("Status") == "404":
            return 0
        if headers.get("Status"):
            return None
        seq = _origin_seq(headers, self.uplink.stream)
        if seq is None or not 0 < seq <= last:
            return 0
        try:
            ours = await self.bus.js.get_msg(self.uplink.stream, seq)
        except NotFoundError:
            return seq  # evicted here: everything up to it is gone here too
        same = (ours.headers or {}).get(NATS_MSG_ID) == headers.get(NATS_MSG_ID)
        return seq if same and headers.get(NATS_MSG_ID) else 0

    async def _ack_floor(self) -> int:
        try:
            info = await self.bus.js.consumer_info(self.uplink.stream, DURABLE)
        except NotFoundError:
            return 0
        return info.ack_floor.stream_seq if info.ack_floor else 0

    async def _consumer_from(self, start: int) -> None:
        """(Re)create the durable consumer at `start`: what is unconfirmed is delivered again."""
        js, stream = self.bus.js, self.uplink.stream
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, DURABLE)
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=DURABLE,
                description="The uplink forwarder's position: acknowledged = the regional holds it.",
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.ALL,
                ack_wait=3600.0,  # never redelivered by time: a new session starts over
                max_ack_pending=4 * self.window,
                filter_subject=self.uplink.filter,
            ),
        )

    async def _pull(self, inbox: str) -> None:
        request = {
            "batch": self.window,
            "expires": int(PULL_EXPIRES * 1e9),
            "idle_heartbeat": int(PULL_HEARTBEAT * 1e9),
        }
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.uplink.stream}.{DURABLE}"
        await self.bus.nc.publish(subject, json.dumps(request).encode(), reply=inbox)

    async def _forward(self, sub: Subscription, inbox: str) -> None:
        """One pull request outstanding at a time; each burst that arrives is one batch."""
        await self._pull(inbox)
        owed = self.window  # messages the outstanding pull may still deliver
        while True:
            batch: list[Msg] = []
            msg = await self._next(sub, PULL_EXPIRES + 2 * PULL_HEARTBEAT)
            while True:
                status = (msg.headers or {}).get("Status")
                if status is None:
                    batch.append(msg)
                    owed -= 1
                elif status in ("404", "408"):
                    owed = 0  # the pull expired (or found nothing): ask again
                elif status != "100":  # 100 = idle heartbeat; 409 = consumer deleted, …
                    raise UplinkStalledError(f"pull: {status} {(msg.headers or {}).get('Description', '')}")
                if owed <= 0:
                    await self._pull(inbox)
                    owed = self.window
                if len(batch) >= self.window or not sub.pending_msgs:
                    break
                msg = await self._next(sub, 1.0)
            if batch:
                await self._send(batch)

    @staticmethod
    async def _next(sub: Subscription, timeout: float) -> Msg:
        try:
            return await sub.next_msg(timeout=timeout)
        except NatsTimeoutError as exc:
            msg = "the local consumer went silent"
            raise UplinkStalledError(msg) from exc

    async def _send(self, batch: list[Msg]) -> None:
        """Publish `batch` in order, wait for the regional's acknowledgements in order (each
        within `ack_timeout` of the one before: a slow link that moves is not a failure), and
        acknowledge locally the longest run that was confirmed."""
        js = self.bus.js
        futures = [
            await js.publish_async(self.uplink.outbox(m.subject), m.data, headers=self._headers(m))
            for m in batch
        ]
        confirmed, duplicates, failure = 0, 0, None
        try:
            for future in futures:
                ack = await asyncio.wait_for(future, self.ack_timeout)
                confirmed += 1
                duplicates += 1 if ack.duplicate else 0
        except (TimeoutError, *TRANSIENT) as exc:
            failure = exc
        finally:
            for future in futures[confirmed:]:
                future.cancel()  # frees nats-py's slots for the unanswered ones
        if confirmed:
            last = batch[confirmed - 1]
            await last.ack()  # acknowledges every one before it too
            self.confirmed = last.metadata.sequence.stream
            self._sent += 1
            if self.metrics:
                self.metrics.uplink_forwarded.labels(stream=self.uplink.stream).inc(confirmed - duplicates)
        if failure is not None:
            msg = f"{len(batch) - confirmed} of {len(batch)} messages not confirmed: {type(failure).__name__}"
            raise UplinkStalledError(msg) from failure

    def _headers(self, msg: Msg) -> dict[str, Any]:
        """The message's own headers (its `Nats-Msg-Id` first of all), and where it came from."""
        headers = dict(msg.headers or {})
        seq = msg.metadata.sequence.stream
        headers[ORIGIN] = f"{self.origin} {seq}"
        headers.setdefault(NATS_MSG_ID, f"{self.origin.replace(' ', '-')}-{seq}")
        return headers


def _origin_seq(headers: dict[str, str], stream: str) -> int | None:
    """The edge-side sequence a message at the regional came from: `Fleetbus-Origin` (what the
    forwarder sends), else `Nats-Stream-Source` (what the regional's sourcing of an older
    fleetbus stored), else None."""
    origin = headers.get(ORIGIN)
    if origin:
        _, _, seq = origin.rpartition(" ")
    else:
        parts = headers.get("Nats-Stream-Source", "").split()
        if len(parts) < 2 or not parts[0].startswith(f"{stream}:"):
            return None
        seq = parts[1]
    return int(seq) if seq.isdigit() else None
