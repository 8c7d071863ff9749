"""The control socket of a running dev fleet: `fleetbus dev link|kill|restart` from any terminal.

`dev up` owns the link proxies and the processes, so faults are injected through it: it
serves a unix socket (path recorded in fleet.json) taking one JSON request per line and
answering one JSON line, `{"ok": true, ...}` or `{"ok": false, "error": "..."}`:

    {"op": "links"}                                        every uplink and its state
    {"op": "link", "site": "r1-e1", "action": "cut"}       cut | blackhole | heal | delay | throttle
    {"op": "link", "site": "r1-e1", "action": "delay", "value": 200}
    {"op": "kill", "site": "r1", "server": true, "daemon": false}
    {"op": "restart", "site": "r1", "server": true, "daemon": false}

A site's link is its uplink; "all" names every link. The tests call the same `DevFleet`
methods directly.
"""

import asyncio
import contextlib
import hashlib
import json
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetbus.devfleet.linkproxy import LinkProxy
from fleetbus.errors import ConfigError, FleetbusError
from fleetbus.runtime import log

if TYPE_CHECKING:
    from fleetbus.devfleet.supervisor import DevFleet

logger = log.get_logger(__name__)

SOCKET_NAME = "control.sock"
LINK_ACTIONS = ("cut", "blackhole", "heal", "delay", "throttle")
MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux


def socket_path(state_dir: Path) -> Path:
    """`<state dir>/control.sock`, or a short path under the temp dir if that is too long."""
    path = state_dir / SOCKET_NAME
    if len(str(path)) < MAX_UNIX_PATH:
        return path
    digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:12]  # noqa: S324 - a name, not security
    return Path(tempfile.gettempdir()) / f"fleetbus-{digest}.sock"


class ControlServer:
    def __init__(self, fleet: "DevFleet") -> None:
        self.fleet = fleet
        self.path = socket_path(fleet.plan.state_dir)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # left by a supervisor that was SIGKILLed
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.path.chmod(0o600)
        self.fleet.control_path = self.path

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.fleet.control_path = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                reply = {"ok": True} | await self.handle(json.loads(line))
            except (FleetbusError, ValueError, KeyError) as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()

    async def handle(self, request: object) -> dict[str, Any]:
        if not isinstance(request, dict):
            msg = "a request is a JSON object"
            raise ConfigError(msg)
        op = request.get("op")
        if op == "links":
            return {"links": [link.state().as_dict() for link in self.fleet.links.values()]}
        site = str(request.get("site", ""))
        node = request.get("node")
        if node is not None and not isinstance(node, int):
            msg = f"node must be a number, not {node!r}"
            raise ConfigError(msg)
        if op == "link":
            return {"links": [self._link(link, request) for link in self._links(site, node)]}
        if op in ("kill", "restart"):
            which = {"server": bool(request.get("server")), "daemon": bool(request.get("daemon"))}
            act = self.fleet.kill if op == "kill" else self.fleet.restart
            logger.info("fault control", op=op, site=site, node=node, **which)
            return {"processes": await act(site, node=node, **which)}
        msg = f"unknown op {op!r}"
        raise ConfigError(msg)

    def _links(self, site: str, node: int | None) -> list[LinkProxy]:
        if node is not None:
            return self.fleet.node_links(self.fleet.node_key(site, node)).links
        if site == "all":
            return list(self.fleet.links.values())
        self.fleet.link(site)  # an unknown site, or one without a proxy, is named as such
        return self.fleet.links_of(site)

    def _link(self, link: LinkProxy, request: dict[str, Any]) -> dict[str, object]:
        action = request.get("action")
        if action == "cut":
            link.cut()
        elif action == "blackhole":
            link.blackhole()
        elif action == "heal":
            link.heal()
        elif action == "delay":
            link.shape(delay_ms=float(request["value"]))
        elif action == "throttle":
            link.shape(rate_kbps=float(request["value"]))
        else:
            msg = f"unknown link action {action!r}; one of {', '.join(LINK_ACTIONS)}"
            raise ConfigError(msg)
        return link.state().as_dict()


def call(control_path: str | None, request: dict[str, Any], *, timeout: float = 60.0) -> dict[str, Any]:
    """Send one request to a running fleet's control socket; raise `ConfigError` with its
    error message if it refuses."""
    if not control_path:
        msg = "this dev fleet has no control socket (is it still starting?)"
        raise ConfigError(msg)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(control_path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as answer:
                line = answer.readline()
    except OSError as exc:
        msg = f"cannot reach the dev fleet's control socket {control_path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    try:
        reply: dict[str, Any] = json.loads(line)
    except ValueError as exc:
        msg = f"the dev fleet answered something unreadable: {line[:200]!r}"
        raise ConfigError(msg) from exc
    if not reply.get("ok"):
        raise ConfigError(str(reply.get("error", "refused")))
    return reply
