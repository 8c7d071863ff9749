"""Devices at the edge: the registry of every device heard, MQTT ingest, commands from the hub.

Devices publish over MQTT to the edge's own nats-server (its MQTT listener) or to a site
broker the edge bridges (`edge.mqttbridge`):

    devices/<device-id>/telemetry   a JSON object of scalar fields  -> NATS devices.<id>.telemetry
    devices/<device-id>/status      a JSON object (e.g. {"state": "ok"}) -> devices.<id>.status
    devices/<device-id>/cmd         commands from the hub, to the device

The registry keeps, per device, first/last seen, a message count, the last status, the last
value of each telemetry field, and online/offline (heard within `offline_after`); the
inventory carries it to the hub, so raw telemetry never crosses the WAN. A message that is
not JSON, of the wrong shape, larger than `max_payload`, or from a device id that is not a
token is counted (`fleetbus_device_messages_rejected_total{reason}`) and skipped.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleetbus.nats.bus import Bus, Msg
from fleetbus.runtime import log
from fleetbus.runtime.metrics import DaemonMetrics
from schemas import subjects
from schemas.base import TOKEN, utcnow
from schemas.codec import load_json
from schemas.device import DeviceCommand, DeviceCommandReply, DeviceRecord
from schemas.errors import DecodeError

logger = log.get_logger(__name__)

CHANNELS = ("telemetry", "status")
MAX_FIELDS = 32  # telemetry fields and status keys kept per device
# Bytes of device records one inventory snapshot carries at most: the servers refuse messages
# over 1 MB, and 10,000 devices (~180 bytes each) or 16 with 64 KiB statuses would pass it and
# stop the edge's inventory reaching the hub at all.
INVENTORY_BUDGET = 512 * 1024
# Bytes of last values (status and readings, as JSON) the registry holds for all its devices:
# 10,000 ids, each with a 64 KiB status and 32 readings of 64 KiB, would be gigabytes.
VALUES_BUDGET = 64 * 2**20
RECORD_BYTES = 200  # one record without its last status and readings, msgpack, rounded up


@dataclass
class _Device:
    first_seen: datetime
    last_seen: datetime
    source: str
    messages: int = 0
    last_status: dict[str, Any] | None = None
    last_telemetry: dict[str, Any] = field(default_factory=dict)
    detail_bytes: int = 0  # last_status and last_telemetry as JSON


class DeviceRegistry:
    def __init__(
        self,
        *,
        offline_after: float,
        max_payload: int,
        max_devices: int = 10_000,
        max_values_bytes: int = VALUES_BUDGET,
        metrics: DaemonMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.offline_after, self.max_payload, self.max_devices = offline_after, max_payload, max_devices
        self.metrics, self.clock = metrics, clock
        self.devices: dict[str, _Device] = {}
        self.max_values_bytes, self.values_bytes = max_values_bytes, 0  # sum of detail_bytes
        self._trimmed = (0, 0)  # devices left without values, and left out, at the last records()
        # Told of every accepted message (device, channel, body, when): the telemetry forwarder.
        self.listeners: list[Callable[[str, str, dict[str, Any], datetime], None]] = []

    def take_topic(self, levels: list[str], payload: bytes, *, source: str = "mqtt") -> bool:
        """Record a message on a topic split into its levels (the edge's MQTT listener gives
        `devices.<id>.<channel>`, a site broker `devices/<id>/<channel>`); any other topic is
        rejected as `bad_topic`."""
        if len(levels) != 3 or levels[0] != "devices":  # devices/<a>/<b>/...: not the contract's
            self._reject("bad_topic", "/".join(levels)[:80], "")
            return False
        return self.take(levels[1], levels[2], payload, source=source)

    def take(self, device: str, channel: str, payload: bytes, *, source: str = "mqtt") -> bool:
        """Record one message; False (counted, logged) if it is rejected."""
        body, reason = self._parse(device, channel, payload)
        if reason is not None:
            self._reject(reason, device, channel)
            return False
        now = self.clock()
        known = self.devices.get(device)
        if known is None and len(self.devices) >= self.max_devices:  # a client inventing ids
            self._reject("too_many_devices", device, channel)
            return False
        status, telemetry = (known.last_status, known.last_telemetry) if known else (None, {})
        if channel == "status":
            status = dict(list(body.items())[:MAX_FIELDS])
        else:
            telemetry = dict(list((telemetry | body).items())[:MAX_FIELDS])
        size = len(json.dumps([status, telemetry]))
        if self.values_bytes - (known.detail_bytes if known else 0) + size > self.max_values_bytes:
            self._reject("too_large", device, channel)  # the registry's memory is capped too
            return False
        if known is None:
            known = self.devices[device] = _Device(first_seen=now, last_seen=now, source=source)
            logger.info("new device", device=device, source=source)
        self.values_bytes += size - known.detail_bytes
        known.last_status, known.last_telemetry, known.detail_bytes = status, telemetry, size
        known.last_seen, known.source = now, source
        known.messages += 1
        if self.metrics:
            self.metrics.device_messages.labels(channel=channel, source=source).inc()
        for listener in self.listeners:
            listener(device, channel, body, now)
        return True

    def _reject(self, reason: str, device: str, channel: str) -> None:
        if self.metrics:
            self.metrics.device_rejected.labels(reason=reason).inc()
        logger.debug("device message rejected", device=device[:64], channel=channel, reason=reason)

    def _parse(self, device: str, channel: str, payload: bytes) -> tuple[Any, str | None]:
        """The decoded body, or why the message is rejected."""
        if not TOKEN.match(device):
            return None, "bad_device_id"
        if channel not in CHANNELS:
            return None, "unknown_channel"
        if len(payload) > self.max_payload:
            return None, "too_large"
        try:
            body = load_json(payload, what=f"devices/{device}/{channel}")
        except DecodeError:  # not JSON, or JSON no reading has (nested 1,000 deep, NaN)
            return None, "not_json"
        return body, _check_shape(channel, body)

    def online(self, device: str) -> bool:
        known = self.devices.get(device)
        return known is not None and (self.clock() - known.last_seen).total_seconds() < self.offline_after

    def records(self, budget: int = INVENTORY_BUDGET) -> list[DeviceRecord]:
        """Every device, by id, within about `budget` bytes (what the inventory carries): past
        it, devices come without their last status and readings, then not at all (logged)."""
        records, used, bare = [], 0, 0
        for device, d in sorted(self.devices.items()):
            detailed = used + RECORD_BYTES + d.detail_bytes <= budget
            if not detailed and used + RECORD_BYTES > budget:
                break
            used += RECORD_BYTES + (d.detail_bytes if detailed else 0)
            bare += not detailed
            records.append(
                DeviceRecord(
                    id=device,
                    online=self.online(device),
                    first_seen=d.first_seen,
                    last_seen=d.last_seen,
                    messages=d.messages,
                    last_status=d.last_status if detailed else None,
                    last_telemetry=d.last_telemetry if detailed else {},
                    source="bridge" if d.source == "bridge" else "mqtt",
                )
            )
        trimmed = (bare, len(self.devices) - len(records))
        if trimmed != self._trimmed and any(trimmed):  # once per change, not every scan
            logger.warning(
                "device records over the inventory's budget",
                devices=len(self.devices),
                without_values=trimmed[0],
                left_out=trimmed[1],
                budget=budget,
            )
        self._trimmed = trimmed
        return records


def _check_shape(channel: str, body: Any) -> str | None:
    if not isinstance(body, dict):
        return "wrong_type"
    if channel == "telemetry":
        for value in body.values():
            if not (value is None or isinstance(value, str | bool | int | float)):
                return "wrong_type"  # telemetry fields are scalars
            if isinstance(value, float) and not math.isfinite(value):
                return "wrong_type"
    return None


class DeviceGateway:
    """The edge daemon's side of devices: ingest from its server's MQTT listener, and commands."""

    def __init__(self, bus: Bus, registry: DeviceRegistry, *, region: str, edge: str) -> None:
        self.bus, self.registry = bus, registry
        self.region, self.edge = region, edge

    async def start(self) -> None:
        """Subscribe (a restarted connection resubscribes by itself)."""

        async def on_device(msg: Msg) -> None:
            self.registry.take_topic(msg.subject.split("."), msg.data)

        for subject in (subjects.DEVICE_TELEMETRY, subjects.DEVICE_STATUS, "devices.*.*.>"):
            await self.bus.nc.subscribe(subject, cb=on_device)
        await self.bus.subscribe(
            subjects.edge_command(self.region, self.edge, "device"), DeviceCommand, self._command
        )

    async def _command(self, command: DeviceCommand, msg: Msg) -> None:
        """Publish the command's payload on the device's command topic; say what happened."""
        registry = self.registry
        known, online = command.device in registry.devices, registry.online(command.device)
        try:
            await self.bus.nc.publish(
                subjects.device_command_topic(command.device), json.dumps(command.payload).encode()
            )
            await self.bus.nc.flush(timeout=2)
        except Exception as exc:  # the local server is restarting: say so to the sender
            reply = DeviceCommandReply(
                edge=self.edge, device=command.device, delivered=False, device_known=known, reason=repr(exc)
            )
        else:
            reply = DeviceCommandReply(
                edge=self.edge,
                device=command.device,
                delivered=True,
                device_known=known,
                device_online=online,
            )
            logger.info("device command delivered", device=command.device, sent_by=command.sent_by)
        await self.bus.respond(msg, reply)
