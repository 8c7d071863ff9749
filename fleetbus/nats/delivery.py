"""A subscription's messages, without a task per message.

nats-py's `Subscription.messages` waits for every message in a task of its own
(`asyncio.wait` on the queue's `get()` and the unsubscription): per message a task, a
wait and a cancellation. The hub daemon's view follows a message per edge event, report
and inventory snapshot, and during a fan-out to 10,000 hollow edges that waiting was 13 % of
its CPU (py-spy, `benchmarks/fanout.py`). Here a message already queued is taken at once;
only an empty queue waits the way nats-py does (which also ends the iteration once the
subscription is gone).
"""

import asyncio
from collections.abc import AsyncIterator

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


async def messages(sub: Subscription) -> AsyncIterator[Msg]:
    """`sub.messages`, taking queued messages without waiting."""
    waiting = sub.messages
    # nats-py's own queue and byte count (what `Subscription.messages` reads): when a later
    # version has neither, every message is waited for its way.
    queue = getattr(sub, "_pending_queue", None)
    counted = isinstance(getattr(sub, "_pending_size", None), int)
    while True:
        if isinstance(queue, asyncio.Queue) and counted and not queue.empty():
            msg = queue.get_nowait()
            queue.task_done()
            sub._pending_size -= len(msg.data)  # what nats-py's iterator does
        else:
            try:
                msg = await anext(waiting)
            except StopAsyncIteration:  # unsubscribed
                return
        yield msg
