"""Exponential back-off with jitter, for every retry loop in fleetbus.

Jitter spreads retries out, so many sites that lost the same server do not all come back
to it in the same instant.
"""

import asyncio
import random


class Backoff:
    """`await wait()` sleeps `delay` × [0.5, 1.5) then doubles `delay` up to `cap`."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.delay = initial

    def next_delay(self) -> float:
        """The jittered delay to wait now; the next one doubles (up to `cap`)."""
        delay = self.delay * random.uniform(0.5, 1.5)
        self.delay = min(self.delay * 2, self.cap)
        return delay

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self.delay = self.initial
