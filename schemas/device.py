"""Devices at an edge: what the edge knows of each, and commands sent to them from the hub.

Devices speak MQTT to their edge (`devices/<device-id>/telemetry`, `devices/<device-id>/status`,
commands on `devices/<device-id>/cmd`); these types are what fleetbus itself exchanges about them.
"""

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from schemas.base import Message, SiteId


class DeviceRecord(BaseModel):
    """One device an edge has heard, as its registry keeps it (part of the inventory)."""

    model_config = ConfigDict(extra="allow")

    id: SiteId
    online: bool = Field(description="Heard within the edge's device_offline_after.")
    first_seen: datetime
    last_seen: datetime
    messages: int = Field(ge=0, description="Accepted messages since the edge daemon started.")
    last_status: dict[str, JsonValue] | None = None
    last_telemetry: dict[str, JsonValue] = Field(
        default_factory=dict, description="The last value of each telemetry field (at most 32 fields)."
    )
    source: Literal["mqtt", "bridge"] = Field(
        description="The edge's MQTT listener, or the site broker bridge."
    )


class DeviceCommand(Message):
    """A command for one device, sent from the hub to the device's edge (core request)."""

    SCHEMA: ClassVar[str] = "fleet.device_command"

    region: SiteId
    edge: SiteId
    device: SiteId
    payload: JsonValue
    sent_by: str = ""
    sent_at: datetime


class DeviceCommandReply(Message):
    """The edge's answer: whether it published the command to the device's topic."""

    SCHEMA: ClassVar[str] = "fleet.device_command_reply"

    edge: SiteId
    device: SiteId
    delivered: bool
    device_known: bool = Field(default=False, description="The edge has heard this device.")
    device_online: bool = False
    reason: str = ""


class DeviceCredentials(Message):
    """An operator adds or removes a device's MQTT credentials at its edge (core request;
    answered with a `DeviceCommandReply`). Only the bcrypt hash of the password travels: the
    password is shown once, to the operator."""

    SCHEMA: ClassVar[str] = "fleet.device_credentials"

    region: SiteId
    edge: SiteId
    device: SiteId
    action: Literal["add", "remove"]
    password_hash: str = Field(default="", max_length=128)
    gateway: bool = Field(default=False, description="It may speak for every device of the edge.")
    sent_by: str = ""
