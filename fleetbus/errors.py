"""fleetbus's error hierarchy (rooted in `schemas.errors`) plus runtime-specific errors."""

from schemas.errors import DecodeError, FleetbusError, PermanentError, TemporaryError


class ConfigError(PermanentError):
    """Settings or input a user gave are wrong; the message says which and how to fix it."""


class EdgeUnreachableError(TemporaryError):
    """An edge did not answer a request from the hub (offline, or a link on the way is down)."""


class ServerError(FleetbusError):
    """A nats-server process could not be started or did not become healthy."""


__all__ = [
    "ConfigError",
    "DecodeError",
    "EdgeUnreachableError",
    "FleetbusError",
    "PermanentError",
    "ServerError",
    "TemporaryError",
]
