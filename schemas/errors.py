"""The error hierarchy, rooted here because `schemas` is the bottom layer.

Split by what the caller should do: retry a `TemporaryError` with back-off, report a
`PermanentError` and move on. `fleetbus.errors` re-exports these for everyone above.
"""


class FleetbusError(Exception):
    """Root of every error fleetbus raises on purpose."""


class TemporaryError(FleetbusError):
    """Worth retrying with back-off and jitter (a link is down, a server is restarting)."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(FleetbusError):
    """Retrying will not help: report it and move on."""


class DecodeError(PermanentError):
    """A message body or its headers could not be read as the expected type."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"cannot decode message on {subject!r}: {reason}")
        self.subject = subject
        self.reason = reason
