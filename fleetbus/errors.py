"""fleetbus's error hierarchy (rooted in `schemas.errors`) plus runtime-specific errors."""

from schemas.errors import DecodeError, FleetbusError, PermanentError, TemporaryError


class ConfigError(PermanentError):
    """Settings or input a user gave are wrong; the message says which and how to fix it."""


class EdgeUnreachableError(TemporaryError):
    """An edge did not answer a request from the hub (offline, or a link on the way is down)."""


class RefusedError(PermanentError):
    """A request that would do harm as given (forget an edge that is online); the message
    says how to insist."""


class ServerUnreachableError(TemporaryError):
    """A nats-server did not accept a connection, or stopped answering, within a deadline."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class HubUnreachableError(TemporaryError):
    """The hub's nats-server could not be reached (or was lost) within the client's deadline."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the hub at {url}: {reason}; is the fleet running? `fleetbus dev status`"
        )
        self.url = url
        self.reason = reason


class ServerError(FleetbusError):
    """A nats-server process could not be started or did not become healthy."""


__all__ = [
    "ConfigError",
    "DecodeError",
    "EdgeUnreachableError",
    "FleetbusError",
    "HubUnreachableError",
    "PermanentError",
    "RefusedError",
    "ServerError",
    "ServerUnreachableError",
    "TemporaryError",
]
