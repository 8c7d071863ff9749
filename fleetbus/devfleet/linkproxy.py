"""A TCP proxy for one leaf link, so tests and the dev fleet can cut and heal real links.

    proxy = LinkProxy("127.0.0.1", 7422, target=("127.0.0.1", 7423))
    await proxy.start()
    proxy.cut()                 # open connections are reset; new ones are closed at once
    proxy.blackhole()           # nothing gets through, nobody is told: sockets stay open
    proxy.shape(delay_ms=200)   # every byte arrives 200 ms later, each way
    proxy.shape(rate_kbps=64)   # at most 64 KiB/s each way
    proxy.heal()                # forwarded again, at full speed, no delay

Cutting resets every open connection (what a dropped WAN link looks like to both servers
once TCP gives up) and refuses service until `heal()`; the servers then reconnect on their
own schedule, exactly as they would across a real link. Delay and throttle apply to bytes
read from then on, in both directions, on open and new connections alike.

A blackhole is the silent failure real WAN links have: packets vanish, no reset arrives,
both ends keep their sockets open and notice only when their pings go unanswered. The proxy
stops reading and writing (so senders' bytes pile up in TCP buffers, as they do while TCP
retransmits into the void) and holds new connections unanswered. On `heal()` whatever was
held moves on, as retransmissions do once a route returns; a connection that one end closed
in the meantime then ends at the other, too.
"""

import asyncio
import contextlib
import socket
import time
from dataclasses import asdict, dataclass

from fleetbus.runtime import log

logger = log.get_logger(__name__)

CHUNK = 64 * 1024


@dataclass
class LinkState:
    """What a link is doing now, as `dev link` reports it."""

    name: str
    cut: bool = False
    blackhole: bool = False  # nothing passes and no one is told
    delay_ms: float = 0.0  # added to every byte, each way
    rate_kbps: float = 0.0  # KiB/s each way; 0 = unlimited
    connections: int = 0  # accepted and forwarded since start
    unanswered: int = 0  # connection attempts a blackhole holds now

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class LinkProxy:
    def __init__(self, host: str, port: int, *, target: tuple[str, int], name: str = "") -> None:
        self.host, self.port = host, port
        self.target = target
        self.name = name or f"{host}:{port}->{target[0]}:{target[1]}"
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._flowing = asyncio.Event()  # clear while blackholed
        self._flowing.set()
        self.delay = 0.0  # seconds added to every byte, each way
        self.rate = 0.0  # bytes per second each way; 0 = unlimited
        self.connections = 0  # accepted and forwarded, for tests and `dev link` output
        self.unanswered = 0  # held by a blackhole now

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def is_blackholed(self) -> bool:
        return not self._flowing.is_set()

    def state(self) -> LinkState:
        return LinkState(
            self.name,
            self._cut,
            self.is_blackholed,
            self.delay * 1000,
            self.rate / 1024,
            self.connections,
            self.unanswered,
        )

    def shape(self, *, delay_ms: float | None = None, rate_kbps: float | None = None) -> None:
        """Add latency (`delay_ms`, each way) and/or cap throughput (`rate_kbps` KiB/s each
        way, 0 = unlimited) for bytes from now on; `None` leaves that setting as it is."""
        if delay_ms is not None:
            if delay_ms < 0:
                msg = f"delay must be >= 0 ms, got {delay_ms}"
                raise ValueError(msg)
            self.delay = delay_ms / 1000
        if rate_kbps is not None:
            if rate_kbps < 0:
                msg = f"throttle must be >= 0 KiB/s, got {rate_kbps}"
                raise ValueError(msg)
            self.rate = rate_kbps * 1024
        logger.info("link shaped", link=self.name, delay_ms=self.delay * 1000, rate_kbps=self.rate / 1024)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        if self._pipes:
            await asyncio.wait(self._pipes)

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until `heal()`."""
        self._cut = True
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()
        logger.info("link cut", link=self.name)

    def blackhole(self) -> None:
        """Let nothing through and tell no one: open connections stay open but silent, new
        ones are accepted and never answered, until `heal()`."""
        self._flowing.clear()
        logger.info("link blackholed", link=self.name)

    def heal(self) -> None:
        """Forward again, at full speed and with no added delay."""
        self._cut = False
        self.delay = self.rate = 0.0
        self._flowing.set()
        logger.info("link healed", link=self.name)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._cut:
            _reset(client_writer)
            return
        if not self._flowing.is_set():  # a connection attempt into a blackhole: no answer
            self._writers.add(client_writer)  # a cut still resets it
            self.unanswered += 1
            try:
                await self._flowing.wait()
            finally:
                self.unanswered -= 1
            self._writers.discard(client_writer)
            if self._cut or client_writer.is_closing():
                _reset(client_writer)
                return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_writer)
            return
        if self._cut:  # cut while we were connecting
            _reset(client_writer)
            _reset(upstream_writer)
            return
        self.connections += 1
        self._writers |= {client_writer, upstream_writer}
        for reader, writer in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            task = asyncio.create_task(self._pump(reader, writer))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction. With a delay, bytes go through a delay line (stamped on
        arrival, written when due, order kept) so latency does not cut throughput."""
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(line, writer))
        try:
            while not sender.done():
                await self._flowing.wait()
                # Small reads while throttled, so the rate is smooth rather than bursty.
                size = CHUNK if not self.rate else max(512, min(CHUNK, int(self.rate / 20)))
                chunk = await reader.read(size)
                if not chunk:
                    break
                line.put_nowait((time.monotonic() + self.delay, chunk))
            line.put_nowait((0.0, b""))  # end of stream, after what is in flight
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            self._writers.discard(writer)
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()

    async def _send(self, line: "asyncio.Queue[tuple[float, bytes]]", writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                due, chunk = await line.get()
                if not chunk:
                    return
                if self.rate:  # serialisation time at the simulated bandwidth
                    due = max(due, time.monotonic()) + len(chunk) / self.rate
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)  # the simulated latency itself
                await self._flowing.wait()  # read before a blackhole began: held with the rest
                writer.write(chunk)
                await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, like a link that went away."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()


class LinkSet:
    """A site's links to every node of a clustered upstream, cut, healed and shaped as one
    (`DevFleet.link`); each is still its own `LinkProxy` (`dev link cut hub --node 2`)."""

    def __init__(self, links: list[LinkProxy]) -> None:
        self.links = links

    @property
    def is_cut(self) -> bool:
        return all(link.is_cut for link in self.links)

    @property
    def is_blackholed(self) -> bool:
        return all(link.is_blackholed for link in self.links)

    @property
    def connections(self) -> int:
        return sum(link.connections for link in self.links)

    def shape(self, *, delay_ms: float | None = None, rate_kbps: float | None = None) -> None:
        for link in self.links:
            link.shape(delay_ms=delay_ms, rate_kbps=rate_kbps)

    def cut(self) -> None:
        for link in self.links:
            link.cut()

    def blackhole(self) -> None:
        for link in self.links:
            link.blackhole()

    def heal(self) -> None:
        for link in self.links:
            link.heal()
