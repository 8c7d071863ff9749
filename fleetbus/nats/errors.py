"""The one place that decides which nats-py failures are transient.

A transient failure (no connection, no responders, a timeout, a JetStream that is restarting)
is worth retrying: `TRANSIENT` is the tuple to catch, `is_transient` the test, and `translate`
turns any nats-py error into fleetbus's own (`TemporaryError` or `PermanentError`), worded for
what was being done, so nothing above this package needs to know nats-py's exception classes.
"""

from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError
from nats.js.errors import NotFoundError as NatsNotFoundError

from fleetbus.errors import FleetbusError, MissingError, PermanentError, TemporaryError

# What a loop that must never stop catches (a daemon following its own server, which its
# supervisor restarts): every nats-py error, JetStream API answers included, and timeouts.
# Where a JetStream refusal ("bad request") must end the operation instead, test with
# `is_transient`, which counts only a lost connection, a timeout and a 503 as transient.
TRANSIENT = (NatsError, TimeoutError)

# An edge (or any responder) did not answer a request: nobody listening, or not in time.
NO_ANSWER = (NoRespondersError, NatsTimeoutError, TimeoutError)

# The hub (or any server) did not answer at all: its JetStream is down or the link is.
UNANSWERED = (
    ConnectionClosedError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    NatsTimeoutError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a lost connection, a timeout, a JetStream not answering (503)."""
    if isinstance(exc, TemporaryError):
        return True
    if isinstance(exc, APIError):
        return isinstance(exc, ServiceUnavailableError)
    return isinstance(exc, TRANSIENT)


def translate(exc: BaseException, doing: str) -> FleetbusError:
    """`exc` as fleetbus's error: `doing` says what failed ("reading bucket profiles")."""
    if isinstance(exc, FleetbusError):
        return exc
    if isinstance(exc, NatsNotFoundError):
        return MissingError(f"{doing}: not found ({exc.description or 'no such stream or message'})")
    if is_transient(exc):
        return TemporaryError(f"{doing}: {type(exc).__name__} {exc}".rstrip())
    return PermanentError(f"{doing}: {exc}")


def jetstream_silent(exc: BaseException) -> bool:
    """The server answered, its JetStream did not (no responders for its API: down, or the
    domain is not there)."""
    return isinstance(exc, NoRespondersError | ServiceUnavailableError | NoStreamResponseError)
