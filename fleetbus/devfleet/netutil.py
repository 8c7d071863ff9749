"""Loopback networking helpers: free ports, port checks, a tiny async HTTP GET."""

import asyncio
import errno
import socket
from urllib.parse import urlsplit


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago (all held open until chosen)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


async def http_get(url: str, timeout: float = 2.0, *, token: str | None = None) -> tuple[int, bytes]:
    """GET `url` (plain http) and return (status, body); raises OSError/TimeoutError.
    `token`: sent as `Authorization: Bearer` (the hub's dashboard and API)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query

    async def fetch() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[1].isdigit():
            msg = f"bad HTTP response from {url}"
            raise OSError(msg)
        return int(status_line[1]), body

    return await asyncio.wait_for(fetch(), timeout)


async def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        status, _ = await http_get(url, timeout)
    except (OSError, TimeoutError):
        return False
    return status == 200
