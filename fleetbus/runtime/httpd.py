"""A minimal asyncio HTTP endpoint for /metrics and /healthz (no web framework needed)."""

import asyncio
import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from fleetbus.errors import ConfigError
from fleetbus.runtime import log

logger = log.get_logger(__name__)

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """Serves `GET /metrics` from `registry` and `GET /healthz` from `health()`."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        self.host, self.port = host, port
        self.registry = registry
        self.health = health
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            msg = (
                f"cannot serve /metrics and /healthz on {self.host}:{self.port}: {exc.strerror}; "
                "set another port with FLEETBUS_HTTP_PORT (0 picks a free one)"
            )
            raise ConfigError(msg) from exc
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, target = request.split(b" ", 2)[:2]
            path = target.split(b"?", 1)[0]
            if method != b"GET":
                status, ctype, body = 405, "text/plain", b"only GET\n"
            elif path == b"/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
            elif path == b"/healthz":
                ok, detail = self.health()
                status, ctype = (200 if ok else 503), "application/json"
                body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode()
            else:
                status, ctype, body = 404, "text/plain", b"try /metrics or /healthz\n"
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            logger.debug("bad health request", error=str(exc))
        finally:
            writer.close()
