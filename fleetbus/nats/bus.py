"""The one place fleetbus talks nats-py: connect, publish typed messages, subscribe typed.

A malformed message never reaches a handler: it is counted, logged with its subject and
dropped (docs/architecture.md#invariants), so one bad publisher cannot crash a daemon.
"""

import asyncio
import contextlib
import math
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import PubAck

from fleetbus.errors import (
    ConfigError,
    CredentialsRefusedError,
    DecodeError,
    ServerUnreachableError,
    TemporaryError,
)
from fleetbus.nats.errors import TRANSIENT
from fleetbus.runtime import identity, log
from fleetbus.runtime.backoff import Backoff
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.retry import retry
from schemas import subjects
from schemas.base import Message, utcnow
from schemas.event import Event
from schemas.headers import envelope, open_envelope

if TYPE_CHECKING:
    from datetime import datetime

M = TypeVar("M", bound=Message)
T = TypeVar("T")

# What modules above this package name a JetStream context by (they do not import nats-py).
JetStream = JetStreamContext

__all__ = ["Bus", "JetStream", "Msg", "connect", "connect_within", "persist", "unreachable_reason"]

logger = log.get_logger(__name__)

REPLY_PREFIX = "_INBOX."  # the only reply subjects a daemon answers on (see `Bus.respond`)


class Bus:
    """A connection to the site's own nats-server, with typed publish and subscribe."""

    def __init__(
        self,
        nc: Client,
        *,
        url: str,
        source: str,
        metrics: DaemonMetrics | None = None,
        quiet: bool = False,
    ) -> None:
        self.nc = nc
        self.url = url
        self.js: JetStreamContext = nc.jetstream()
        self.source = source
        self.metrics = metrics
        self.changed_at: datetime | None = None  # when `connected` last changed
        self.last_error: Exception | None = None  # the last connection error nats-py reported
        # Once refused, nats-py's next tries may end in a reset connection: remember the cause.
        self.was_refused = False
        # A short-lived client reports one error line itself: its connection events are not
        # logged (nats-py retries twice a second, and each retry would be a warning).
        self._quiet = quiet
        self._closing = False
        self._resuming: set[asyncio.Task[None]] = set()  # see `_resume_ordered_consumers`
        # Called each time the connection is back after a loss (the server may have restarted).
        self.reconnect_listeners: list[Callable[[], None]] = []

    @property
    def closed(self) -> bool:
        """nats-py gave up reconnecting (or the bus was closed): nothing more will arrive."""
        return bool(self.nc.is_closed)

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    @property
    def up(self) -> bool:
        """The same as `connected`: for a thin edge, its link to the regional is this connection."""
        return self.connected

    def sharing(self, source: str) -> "Bus":
        """Another sender (CloudEvents `source`) on this same connection: many hollow edges
        share one. Connection callbacks and `changed_at` stay with this one."""
        return Bus(self.nc, url=self.url, source=source, metrics=self.metrics)

    def jetstream(self, domain: str | None = None, timeout: float = 5.0) -> JetStreamContext:
        """JetStream of this site (`None`) or of another tier's domain, across leaf links."""
        return self.nc.jetstream(domain=domain, timeout=timeout) if domain else self.js

    async def publish(self, subject: str, message: Message, *, message_id: str | None = None) -> None:
        """Core NATS publish (not stored): heartbeats and other best-effort messages."""
        body, headers = envelope(message, source=self.source, message_id=message_id)
        await self.nc.publish(subject, body, headers=headers)
        self._count_out(message)

    async def announce(self, subject: str) -> bool:
        """Publish an empty message (a signal such as the hub's hello); False if the
        connection is lost again meanwhile, which the next reconnect will announce."""
        try:
            await self.nc.publish(subject, b"")
        except nats.errors.Error:
            return False
        return True

    async def js_publish(self, subject: str, message: Message, *, message_id: str | None = None) -> PubAck:
        """Store `message` in the local stream bound to `subject`; dedupe by `message_id`."""
        body, headers = envelope(message, source=self.source, message_id=message_id)
        ack = await self.js.publish(subject, body, headers=headers)
        self._count_out(message)
        return ack

    async def request(
        self,
        subject: str,
        message: Message,
        reply: type[M],
        *,
        timeout: float = 2.0,
        sign: Callable[[bytes], dict[str, str]] | None = None,
    ) -> M:
        """Core request/reply: send `message`, decode the answer as `reply` (DecodeError if it
        is not one; nats-py's TimeoutError/NoRespondersError if nobody answers). `sign` adds
        headers computed from the body as sent (a signature)."""
        body, headers = envelope(message, source=self.source)
        if sign is not None:
            headers |= sign(body)
        answer = await self.nc.request(subject, body, timeout=timeout, headers=headers)
        self._count_out(message)
        return open_envelope(reply, answer.data, answer.headers, subject=subject)

    async def request_first(
        self,
        subject: str,
        message: Message,
        reply: type[M],
        accept: Callable[[M], bool],
        *,
        timeout: float = 2.0,
    ) -> M | None:
        """Like `request`, but the first answer `accept` takes, within `timeout` (None if there
        is none): answers it rejects (a third party's) and undecodable ones are skipped."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            body, headers = envelope(message, source=self.source)
            await self.nc.publish(subject, body, reply=inbox, headers=headers)
            self._count_out(message)
            deadline = asyncio.get_running_loop().time() + timeout
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    answer = await sub.next_msg(timeout=left)
                except nats.errors.TimeoutError:
                    return None
                try:
                    decoded = open_envelope(reply, answer.data, answer.headers, subject=subject)
                except DecodeError as exc:
                    logger.warning("skipped an undecodable answer", subject=subject, reason=exc.reason)
                    continue
                if accept(decoded):
                    return decoded
                logger.warning("skipped an answer that failed its check", subject=subject)
            return None
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def respond(self, msg: Msg, message: Message) -> None:
        """Answer the request `msg` with `message`, on its reply subject if that is an inbox.

        A server does not check a reply subject against the requester's permissions, and a
        daemon may publish anything on its own server: an answer sent to a reply subject of
        the requester's choosing (`$JS.API.STREAM.PURGE.EVENTS`, a stream's subject) would
        act with the daemon's rights. Every fleetbus client replies on `_INBOX.…`."""
        if msg.reply and not msg.reply.startswith(REPLY_PREFIX):
            logger.warning(
                "not answering: the reply subject is not an inbox", subject=msg.subject, reply=msg.reply
            )
            return
        if msg.reply:
            body, headers = envelope(message, source=self.source)
            await self.nc.publish(msg.reply, body, headers=headers)
            self._count_out(message)

    async def subscribe(
        self, subject: str, cls: type[M], handler: Callable[[M, Msg], Awaitable[None]]
    ) -> Subscription:
        """Core subscription delivering decoded `cls` messages; bad ones are counted, logged."""

        async def on_message(msg: Msg) -> None:
            try:
                message = open_envelope(cls, msg.data, msg.headers, subject=msg.subject)
            except DecodeError as exc:
                if self.metrics:
                    self.metrics.decode_errors.labels(kind=cls.SCHEMA).inc()
                logger.warning("dropped undecodable message", subject=exc.subject, reason=exc.reason)
                return
            if self.metrics:
                self.metrics.messages_in.labels(kind=cls.SCHEMA).inc()
            await handler(message, msg)

        return await self.nc.subscribe(subject, cb=on_message)

    def _count_out(self, message: Message) -> None:
        if self.metrics:
            self.metrics.messages_out.labels(kind=message.SCHEMA).inc()

    async def close(self, timeout: float = 5.0) -> None:
        """Drain (flush what is pending, finish handlers) within `timeout`, then close."""
        for task in self._resuming:
            task.cancel()
        if self.nc.is_closed:
            return
        self._closing = True
        try:
            await asyncio.wait_for(self.nc.drain(), timeout)
        except (TimeoutError, nats.errors.Error):
            # Nothing to drain into: the server is gone (or going) while we close.
            with contextlib.suppress(OSError):
                await self.nc.close()

    # nats-py connection callbacks

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = exc
        self.was_refused = self.was_refused or refused(exc)
        if not self._quiet:
            logger.warning("nats error", error=str(exc) or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        self.changed_at = utcnow()
        if self.metrics:
            self.metrics.nats_connected.set(0)
        if not self._closing and not self._quiet:
            logger.warning("disconnected from nats-server", url=self.url)

    async def _on_reconnected(self) -> None:
        self.changed_at = utcnow()
        if self.metrics:
            self.metrics.nats_connected.set(1)
        if not self._quiet:
            logger.info("reconnected to nats-server", url=self.url)
        self._resume_ordered_consumers()
        for listener in self.reconnect_listeners:
            listener()

    def _resume_ordered_consumers(self) -> None:
        """Recreate every ordered consumer (KV watches, stream readers) of this connection now.

        When a daemon's own server restarts, its ephemeral consumers are gone; nats-py notices
        only after two idle heartbeats go missing (10-20 s), and until then a watch hears
        nothing: an edge applied a profile change 13.7 s after its server came back (soak
        seed 7). Resuming from the last sequence each one delivered loses and repeats
        nothing, as nats-py's own reset does; it waits until JetStream answers again."""
        for sub in list(self.nc._subs.values()):  # nats-py keeps no public list
            jsi = sub._jsi
            if jsi is not None and jsi._ordered:
                task = asyncio.create_task(self._resume(jsi))
                self._resuming.add(task)
                task.add_done_callback(self._resuming.discard)

    async def _resume(self, jsi: Any) -> None:
        backoff = Backoff(0.05, cap=1.0)
        for _ in range(50):  # a restarted server recovers its streams within seconds
            try:
                await self.js.account_info()
                break
            except (nats.errors.Error, TimeoutError):
                await backoff.wait()
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await jsi.reset_ordered_consumer(jsi._sseq + 1)


async def persist(write: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run `write` (a store into this site's own server) until it succeeds. At worst that
    server is restarting (its supervisor brings it back), and what is written must not be
    lost, nor must the daemon die of it: retry with jittered back-off, logging each failure."""
    return await retry(write, what=f"storing {what}", backoff=Backoff(0.1, cap=2.0), transient=_store_failed)


def _store_failed(exc: BaseException) -> bool:
    """Any failure to store into this site's own server is retried, a JetStream refusal too
    (a bucket at its limits frees up as keys are replaced)."""
    return isinstance(exc, (*TRANSIENT, OSError))


async def store_event(bus: Bus, subject: str, event: Event) -> None:
    """Store one event in this site's stream, at least once: retried until acknowledged, its
    id the dedupe key (`Nats-Msg-Id`)."""
    await persist(lambda: bus.js_publish(subject, event, message_id=event.id), what=f"{event.kind} event")


async def connect(
    url: str,
    *,
    name: str,
    source: str,
    metrics: DaemonMetrics | None = None,
    attempts: int = 0,
    creds: Path | None = None,
    ca: Path | None = None,
    site: str | None = None,
    **options: Any,
) -> Bus:
    """Connect to `url`, retrying with jittered back-off (`attempts=0`: forever), as the
    identity in `creds`; `site` gives replies the site's own inbox prefix, which is all its
    link permissions let it receive (docs/security.md).

    After the first connection nats-py reconnects by itself, forever: a site's daemon must
    outlive restarts of its own server. The first is tried here, one attempt at a time (nats-py
    would retry a refused key or a failed TLS handshake forever): those end it
    (`CredentialsRefusedError`, `ConfigError`), an unreachable server is waited for.
    """
    backoff, tried = Backoff(0.1, cap=2.0), 0
    options |= identity.connect_options(creds, ca)
    if site:
        options["inbox_prefix"] = subjects.inbox_prefix(site)
    while True:
        tried += 1
        bus = Bus(Client(), url=url, source=source, metrics=metrics)
        try:
            await bus.nc.connect(
                servers(url),
                name=name,
                dont_randomize=True,  # the site's own server first (a clustered hub's node)
                allow_reconnect=False,  # this first attempt; set below once connected
                max_reconnect_attempts=-1,
                # Typed int in nats-py but used as seconds: reconnect quickly to the local server.
                reconnect_time_wait=0.5,  # type: ignore[arg-type]
                connect_timeout=2,
                error_cb=bus._on_error,
                disconnected_cb=bus._on_disconnected,
                reconnected_cb=bus._on_reconnected,
                **options,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            if bus.was_refused or refused(exc):
                raise CredentialsRefusedError(url, creds) from exc
            if isinstance(exc, ssl.SSLError):  # retrying will not change the certificates
                raise ConfigError(f"cannot connect to {url}: {tls_reason(exc, ca)}") from exc
            if attempts and tried >= attempts:
                msg = f"cannot connect to {url} after {tried} attempts: {exc}"
                raise TemporaryError(msg) from exc
            logger.info("waiting for nats-server", url=url, error=str(exc) or type(exc).__name__)
            await backoff.wait()
            continue
        bus.nc.options["allow_reconnect"] = True  # nats-py reads it on each loss
        bus.changed_at = utcnow()
        if metrics:
            metrics.nats_connected.set(1)
        return bus


def servers(url: str) -> list[str]:
    """The servers a URL names: one, or a clustered hub's nodes separated by commas (as the
    `nats` CLI takes them); a client moves to another when one fails."""
    return [part.strip() for part in url.split(",") if part.strip()]


RECONNECT_WAIT = 0.5  # seconds between a client's connection attempts
FIRST_CONNECT_TRIES = 3  # a server restarting gets about a second before a client gives up


def refused(exc: BaseException) -> bool:
    """nats-py's way of saying the server refused our credentials."""
    return "authorization violation" in str(exc).lower()


async def connect_within(
    url: str,
    *,
    name: str,
    source: str,
    timeout: float,
    persistent: bool = False,
    creds: Path | None = None,
    ca: Path | None = None,
) -> Bus:
    """Connect a short-lived client (the CLI, scripts) to `url`, or raise
    `ServerUnreachableError` within `timeout` seconds; never wait forever.

    A refused connection is tried `FIRST_CONNECT_TRIES` times (about a second); a server
    that accepts but never answers is given the whole `timeout`. Once connected, a lost
    connection is retried for about `timeout` seconds, then closed: whatever waits on it
    then fails instead of hanging. A `persistent` client (a long-running program) instead
    reconnects for as long as it runs; each request still has its own deadline.
    """
    bus = Bus(Client(), url=url, source=source, quiet=True)
    try:
        await asyncio.wait_for(
            bus.nc.connect(
                servers(url),
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=FIRST_CONNECT_TRIES - 1,
                reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]  # used as seconds
                connect_timeout=math.ceil(timeout),
                error_cb=bus._on_error,
                disconnected_cb=bus._on_disconnected,
                reconnected_cb=bus._on_reconnected,
                **identity.connect_options(creds, ca),
            ),
            timeout,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        await bus.nc.close()  # stop whatever nats-py left retrying
        if bus.was_refused or refused(exc):
            raise CredentialsRefusedError(url, creds) from exc
        raise ServerUnreachableError(url, unreachable_reason(bus.last_error or exc, timeout, ca)) from exc
    # nats-py reads this before each reconnect: from now on a lost server gets the deadline.
    bus.nc.options["max_reconnect_attempts"] = (
        -1 if persistent else max(1, math.ceil(timeout / RECONNECT_WAIT))
    )
    bus.changed_at = utcnow()
    return bus


def tls_reason(exc: ssl.SSLError, ca: Path | None) -> str:
    """A failed TLS handshake, with what to try (the CLI's `--ca`, a daemon's `nats_ca`)."""
    what = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    if ca is None:
        return f"TLS failed ({what}); the server takes only TLS: give the fleet CA (--ca, nats_ca)"
    if "mismatch" in what.lower():  # the CA is right, the name dialled is not in the certificate
        return f"TLS failed ({what}): dial the server by a name its certificate has (its site id, localhost)"
    return f"TLS failed ({what}): is {ca} the CA that issued this server's certificate (fleetbus pki init)?"


def unreachable_reason(exc: BaseException, timeout: float, ca: Path | None = None) -> str:
    """What went wrong, in the words of someone who typed the URL."""
    if isinstance(exc, ssl.SSLError):
        return tls_reason(exc, ca)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, TimeoutError | NoServersError):
        return f"no nats-server answered within {timeout:g} s"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__
