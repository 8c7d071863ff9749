"""A site's own nats-server driven through its system account: reload, who is linked, kick.

The regional daemon holds a second identity (`system_creds`) in the server's `SYS` account.
With it, it makes the server re-read its admission files (`$SYS.REQ.SERVER.<id>.RELOAD`) and
closes the leaf connections of a revoked key (`$SYS.REQ.SERVER.<id>.KICK`): nats-server 2.15.1
keeps a connected leaf linked after a reload removed its user, and refuses only its
reconnects.

Which connection belongs to which key is learnt from the server's own connect events
(`$SYS.ACCOUNT.*.CONNECT`, whose `client.user` is the nkey): the leaf listing (`LEAFZ`) names
a leaf by the server name it chose, which its owner controls. A leaf connection that linked
before this watcher started is of unknown owner; `drop` closes those too (an honest edge's
server reconnects within its `leaf_reconnect`), but never the server's own uplink.
"""

import asyncio
import json
from pathlib import Path
from typing import Any

from fleetbus.errors import TemporaryError
from fleetbus.nats.bus import Bus, Msg, connect, servers
from fleetbus.runtime import log

logger = log.get_logger(__name__)


class ServerControl:
    def __init__(self, bus: Bus, *, timeout: float = 5.0) -> None:
        self.bus, self.timeout = bus, timeout
        self.connections: dict[int, str] = {}  # connection id -> its user (nkey)

    @property
    def server_id(self) -> str:
        info: dict[str, Any] = getattr(self.bus.nc, "_server_info", {}) or {}
        return str(info.get("server_id", ""))

    @classmethod
    async def connect(
        cls, url: str, creds: Path, *, name: str, source: str, ca: Path | None = None
    ) -> "ServerControl":
        """A control of the server at `url`, on a connection of its own as the system user
        in `creds` (closed by `close`); of a clustered site's servers, the first: this
        daemon's own."""
        own = servers(url)[0]
        return cls(await connect(own, name=name, source=source, creds=creds, ca=ca))

    async def close(self) -> None:
        await self.bus.close()

    async def start(self) -> None:
        await self.bus.nc.subscribe("$SYS.ACCOUNT.*.CONNECT", cb=self._connected)
        await self.bus.nc.subscribe("$SYS.ACCOUNT.*.DISCONNECT", cb=self._disconnected)
        await self.bus.nc.flush(timeout=int(self.timeout))

    async def _connected(self, msg: Msg) -> None:
        client = _client(msg)
        if client and client.get("server_id", self.server_id) == self.server_id:
            self.connections[int(client["id"])] = str(client.get("user", ""))

    async def _disconnected(self, msg: Msg) -> None:
        client = _client(msg)
        if client:
            self.connections.pop(int(client["id"]), None)

    async def _call(self, what: str, body: dict[str, Any] | None = None) -> Any:
        subject = f"$SYS.REQ.SERVER.{self.server_id}.{what}"
        try:
            reply = await self.bus.nc.request(subject, json.dumps(body or {}).encode(), timeout=self.timeout)
            answer = json.loads(reply.data)
        except (TimeoutError, ValueError) as exc:
            msg = f"the site's nats-server did not answer {what} within {self.timeout:g} s: {exc!r}"
            raise TemporaryError(msg) from exc
        except Exception as exc:  # nats-py's no-responders and connection errors
            msg = f"cannot ask the site's nats-server to {what}: {exc!r}; is system_creds its SYS user?"
            raise TemporaryError(msg) from exc
        if isinstance(answer, dict) and answer.get("error"):
            msg = f"the site's nats-server refused {what}: {answer['error']}"
            raise TemporaryError(msg)
        return answer.get("data") if isinstance(answer, dict) else None

    async def reload(self) -> None:
        """Re-read the config (and the files it includes)."""
        await self._call("RELOAD")

    async def leafs(self) -> list[dict[str, Any]]:
        data = await self._call("LEAFZ")
        return list(data.get("leafs") or []) if isinstance(data, dict) else []

    async def drop_clients(self, nkey: str) -> list[int]:
        """Close every client connection authenticated as `nkey` (a revoked operator)."""
        targets = [cid for cid, user in self.connections.items() if user == nkey]
        await asyncio.gather(*(self._kick(cid) for cid in targets))
        return targets

    async def _kick(self, cid: int) -> None:
        """Close client `cid`; one already gone is fine (the reload that removed its user
        may have closed it first: the server then answers "no such client")."""
        try:
            await self._call("KICK", {"cid": cid})
        except TemporaryError as exc:
            if "no such client" not in str(exc):
                raise

    async def drop(self, nkey: str) -> list[int]:
        """Close every leaf connection authenticated as `nkey`, and accepted ones of unknown
        owner; never this server's own links upstream (where it is the spoke)."""
        targets = []
        for leaf in await self.leafs():
            if leaf.get("is_spoke"):
                continue  # this server dialled it: its uplink
            cid = int(leaf.get("id", 0))
            owner = self.connections.get(cid)
            if cid and owner in (None, nkey):
                targets.append(cid)
                logger.info(
                    "closing a leaf connection",
                    cid=cid,
                    server_name=leaf.get("name"),
                    known=owner is not None,
                )
        await asyncio.gather(
            *(self._call("KICK", {"cid": cid}) for cid in targets)
        )  # at once, not one by one
        return targets


def _client(msg: Msg) -> dict[str, Any] | None:
    try:
        event = json.loads(msg.data)
        client = event["client"]
        client["server_id"] = event.get("server", {}).get("id", "")
        client["id"] = int(client["id"])
        return client if isinstance(client, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
