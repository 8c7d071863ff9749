"""fleetbus's error hierarchy (rooted in `schemas.errors`), and the one table from error to
exit code.

Every error fleetbus raises on purpose is a `FleetbusError`, split by what the caller should
do: retry a `TemporaryError` (after its `delay`, if it names one: `fleetbus.runtime.retry`),
report a `PermanentError` and move on. Which nats-py failures are transient is decided in one
place, `fleetbus.nats.errors`. Stores raise the domain errors below; the CLI words them.
"""

from schemas.errors import DecodeError, FleetbusError, PermanentError, TemporaryError


class ConfigError(PermanentError):
    """Settings or input a user gave are wrong; the message says which and how to fix it."""


class MissingError(PermanentError):
    """What was asked for does not exist (a profile, a revision, an override, an edge's record);
    the message names it and how to list what exists."""


class ConflictError(PermanentError):
    """A compare-and-set lost: someone else changed it first; read it again and retry."""


class EdgeUnreachableError(TemporaryError):
    """An edge did not answer a request from the hub (offline, or a link on the way is down)."""


class RefusedError(PermanentError):
    """A request that would do harm as given (forget an edge that is online); the message
    says how to insist."""


class ForbiddenError(PermanentError):
    """The hub refused a request for who sent it: an unknown or revoked operator, a bad or
    replayed signature, or a role that may not do it; the message says which."""


class ServerUnreachableError(TemporaryError):
    """A nats-server did not accept a connection, or stopped answering, within a deadline."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class CredentialsRefusedError(ConfigError):
    """A nats-server refused the identity a client presented (or the lack of one)."""

    def __init__(self, url: str, creds: object) -> None:
        who = f"the credentials in {creds}" if creds else "a connection without credentials"
        super().__init__(
            f"{url} refused {who} (authorization violation); pass an identity it admits with "
            "--creds FILE or FLEETBUS_CREDS (a dev fleet's: `fleetbus dev creds --operator`)"
        )
        self.url = url


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


class DaemonFailedError(FleetbusError):
    """A daemon's task failed and stopped the daemon (exit 1); chains the cause."""

    def __init__(self, task: str, cause: BaseException) -> None:
        super().__init__(f"task {task!r} failed: {cause!r}")
        self.task = task


# Exit codes of the `fleetbus` command and the daemons, most specific class first; the README
# and docs/operations.md print this table.
EXIT_OK = 0
EXIT_NO = 1  # the command ran and the answer is "no" (`dev status` with a site down); a daemon failed
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CONFLICT = 4
EXIT_INTERRUPTED = 130

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConflictError, EXIT_CONFLICT),
    (DaemonFailedError, EXIT_NO),
    (TemporaryError, EXIT_UNREACHABLE),
    (FleetbusError, EXIT_USAGE),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
)


def exit_code(exc: BaseException) -> int:
    """The exit code for `exc` (EXIT_USAGE for anything not in the table)."""
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_USAGE)


__all__ = [
    "EXIT_CODES",
    "ConfigError",
    "ConflictError",
    "CredentialsRefusedError",
    "DaemonFailedError",
    "DecodeError",
    "EdgeUnreachableError",
    "FleetbusError",
    "ForbiddenError",
    "HubUnreachableError",
    "MissingError",
    "PermanentError",
    "RefusedError",
    "ServerError",
    "ServerUnreachableError",
    "TemporaryError",
    "exit_code",
]
