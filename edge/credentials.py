"""Devices' MQTT credentials at the edge (`fleetbus device add|remove`, docs/security.md#devices).

The hub sends a device's id and the bcrypt hash of its password (the password itself is shown
once, to the operator); the edge daemon keeps them in the admission files its server includes
(`fleetbus.runtime.admission.edge_files`) and has its server reload them through its system
account. The server then admits the device on its MQTT listener only, pinned to its own
topics; a removed device's connection is closed by the reload (nats-server re-checks its
clients' users) and its reconnects are refused.
"""

import asyncio
from pathlib import Path

from fleetbus.errors import ConfigError
from fleetbus.nats.bus import Bus, Msg
from fleetbus.nats.sysadmin import ServerControl
from fleetbus.runtime import log
from fleetbus.runtime.admission import DeviceEntry, Devices, edge_files
from schemas import subjects
from schemas.base import utcnow
from schemas.device import DeviceCommandReply, DeviceCredentials

logger = log.get_logger(__name__)

BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


class CredentialsDesk:
    def __init__(
        self,
        bus: Bus,
        *,
        region: str,
        edge: str,
        directory: Path,
        system_creds: Path | None,
        nats_url: str,
        ca: Path | None = None,
    ) -> None:
        self.bus, self.region, self.edge = bus, region, edge
        self.files = edge_files(directory)
        self.system_creds, self.nats_url, self.ca = system_creds, nats_url, ca
        self.lock = asyncio.Lock()
        self.control: ServerControl | None = None

    async def start(self) -> None:
        self.files.registry()  # a clear error now if it is unreadable
        if self.system_creds is not None:
            self.control = await ServerControl.connect(
                self.nats_url,
                self.system_creds,
                name=f"fleetbus-edge-{self.edge}-system",
                source=self.edge,
                ca=self.ca,
            )
        subject = subjects.edge_command(self.region, self.edge, "device_credentials")
        await self.bus.subscribe(subject, DeviceCredentials, self._change)

    async def close(self) -> None:
        if self.control is not None:
            await self.control.close()

    async def _change(self, request: DeviceCredentials, msg: Msg) -> None:
        try:
            await self._apply(request)
        except (ConfigError, ValueError) as exc:
            reply = DeviceCommandReply(
                edge=self.edge, device=request.device, delivered=False, reason=str(exc)
            )
        except Exception as exc:  # the reload failed (the server is restarting): say so
            reply = DeviceCommandReply(
                edge=self.edge, device=request.device, delivered=False, reason=f"not applied: {exc!r}"
            )
        else:
            reply = DeviceCommandReply(edge=self.edge, device=request.device, delivered=True)
            logger.info("device credentials changed", device=request.device, action=request.action)
        await self.bus.respond(msg, reply)

    async def _apply(self, request: DeviceCredentials) -> None:
        if request.edge != self.edge:
            msg = f"this is edge {self.edge!r}, not {request.edge!r}"
            raise ValueError(msg)
        async with self.lock:
            devices = await asyncio.to_thread(self.files.registry)
            taken = {u.name for u in await asyncio.to_thread(self.files.base) if u.name}
            if request.device in taken:
                msg = f"{request.device!r} is a name this edge's server reserves; choose another device id"
                raise ValueError(msg)
            if request.action == "add":
                if not request.password_hash.startswith(BCRYPT_PREFIXES):
                    msg = "password_hash must be a bcrypt hash"
                    raise ValueError(msg)
                entry = DeviceEntry(password_hash=request.password_hash, gateway=request.gateway, at=utcnow())
                updated = Devices(devices={**devices.devices, request.device: entry})
            elif request.device in devices.devices:
                updated = Devices(devices={k: v for k, v in devices.devices.items() if k != request.device})
            else:
                msg = f"device {request.device!r} has no credentials at edge {self.edge!r}"
                raise ValueError(msg)
            if self.control is None:
                msg = "no system_creds: this edge cannot make its server reload its users"
                raise ConfigError(msg)
            await asyncio.to_thread(self.files.write, updated)
            try:
                await self.control.reload()
            except Exception:
                await asyncio.to_thread(self.files.write, devices)  # as before: a retry finds it so
                raise
