"""A TCP proxy for one leaf link, so tests and the dev fleet can cut and heal real links.

    proxy = LinkProxy("127.0.0.1", 7422, target=("127.0.0.1", 7423))
    await proxy.start()
    proxy.cut()     # open connections are reset; new ones are closed at once
    proxy.heal()    # new connections are forwarded again

Cutting resets every open connection (what a dropped WAN link looks like to both servers
once TCP gives up) and refuses service until `heal()`; the servers then reconnect on their
own schedule, exactly as they would across a real link.
"""

import asyncio
import contextlib
import socket

from fleetbus import log

logger = log.get_logger(__name__)

CHUNK = 64 * 1024


class LinkProxy:
    def __init__(self, host: str, port: int, *, target: tuple[str, int], name: str = "") -> None:
        self.host, self.port = host, port
        self.target = target
        self.name = name or f"{host}:{port}->{target[0]}:{target[1]}"
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self.connections = 0  # accepted and forwarded, for tests and `dev link` output

    @property
    def is_cut(self) -> bool:
        return self._cut

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

    def heal(self) -> None:
        self._cut = False
        logger.info("link healed", link=self.name)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._cut:
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
        try:
            while chunk := await reader.read(CHUNK):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, like a link that went away."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()
