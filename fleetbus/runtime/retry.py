"""The one retry loop: run an operation until it succeeds, a permanent error, or a deadline.

    await retry(lambda: bus.js_publish(...), what="event", transient=is_transient, backoff=Backoff(0.1, 2.0))

Between attempts it waits the jittered back-off, or exactly what a `TemporaryError` asks for in
its `delay` (a server that says when to come back). Which errors are worth another attempt is
the caller's `transient` predicate: `fleetbus.nats.errors.is_transient` at the NATS boundary,
the default (`TemporaryError` only) elsewhere.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fleetbus.errors import TemporaryError
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff

logger = log.get_logger(__name__)

T = TypeVar("T")


def temporary(exc: BaseException) -> bool:
    return isinstance(exc, TemporaryError)


def wait_after(exc: BaseException, backoff: Backoff) -> float:
    """Seconds to wait before the next attempt: the error's own `delay` if it names one."""
    delay = exc.delay if isinstance(exc, TemporaryError) else None
    return delay if delay is not None else backoff.next_delay()


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff,
    transient: Callable[[BaseException], bool] = temporary,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """`operation()`'s result; a non-transient error, or a transient one past `deadline` (a
    `clock()` time; None: retry for ever), is raised as it is. Each retried failure is logged."""
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not transient(exc) or (deadline is not None and clock() >= deadline):
                raise
            wait = wait_after(exc, backoff)
            logger.warning("failed; retrying", what=what, error=repr(exc), retry_in=round(wait, 2))
            await asyncio.sleep(wait)
