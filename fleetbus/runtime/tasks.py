"""Stopping asyncio tasks reliably.

On Python 3.11 `asyncio.wait_for` can swallow a cancellation that arrives in the same loop
iteration as the result it was waiting for (CPython gh-86296, fixed in 3.12). nats-py awaits
every request through `wait_for`, so a task cancelled while, say, a publish ack comes back
may carry on as if nothing happened and then wait forever. `cancel_and_wait` therefore
repeats the cancellation until the tasks end.
"""

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], timeout: float, *, every: float = 0.5
) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` (again every `every` s) until all end or `timeout` passes; return the
    ones still running then. Results and exceptions are left on the tasks."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(every, left))
    return pending
