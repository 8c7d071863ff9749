"""Stopping asyncio tasks reliably.

On Python 3.11 `asyncio.wait_for` can swallow a cancellation that arrives in the same loop
iteration as the result it was waiting for (CPython gh-86296, fixed in 3.12). nats-py awaits
every request through `wait_for`, so a task cancelled while, say, a publish ack comes back
may carry on as if nothing happened and then wait forever. `cancel_and_wait` therefore
repeats the cancellation until the tasks end.

`wait_event` waits for an event with a timeout without `wait_for`'s task of its own.
"""

import asyncio
import contextlib
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


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set or `timeout` seconds pass; whether it is set. The periodic
    loops of every edge (heartbeats, inventory scans) wait this way: `asyncio.wait_for` runs
    the wait in a task of its own and, at every timeout, cancels it and waits for it to end,
    which for the 2,500 hollow edges of one process was ~40 % of its CPU (py-spy: wait_for,
    _cancel_and_wait, call_soon)."""
    if event.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
