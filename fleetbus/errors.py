"""fleetbus's error hierarchy (rooted in `schemas.errors`) plus runtime-specific errors."""

from schemas.errors import DecodeError, FleetbusError, PermanentError, TemporaryError


class ConfigError(PermanentError):
    """Settings or input a user gave are wrong; the message says which and how to fix it."""


class ServerError(FleetbusError):
    """A nats-server process could not be started or did not become healthy."""


__all__ = [
    "ConfigError",
    "DecodeError",
    "FleetbusError",
    "PermanentError",
    "ServerError",
    "TemporaryError",
]
