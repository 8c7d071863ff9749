"""When a lease's holder may act (docs/clustering.md#leases). Pure: the clock is an argument.

A lease is a record in a replicated KV bucket whose age limit is `ttl`. Its holder renews it
every `every` seconds with compare-and-set on the record's revision (the fencing token); a
contender creates it once the server removed a record its holder stopped renewing. The server
keeps a record `ttl` seconds from the moment it stored it, which is after the holder sent the
renewal; so a holder that acts only until `sent + ttl - margin` (its own clock) has stopped
before anyone else can hold the lease. No two holders act at once as long as clocks on the
holder's machine run at the rate of the server's (the same machine in a dev fleet; NTP
elsewhere) and a holder cancels its duties within `margin` of its deadline.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class LeasePolicy:
    # Failover takes up to ttl + every (+ the server's expiry lag: 0.4 s measured); a holder
    # whose renewals fail for ttl - margin (its server gone, a stream leader elected) stops.
    ttl: float = 3.5  # s the server keeps a record its holder stopped renewing
    every: float = 0.5  # s between renewals (and between a contender's tries)
    margin: float = 0.5  # s before the deadline at which a holder stops acting

    def __post_init__(self) -> None:
        if not 0 < self.every < self.ttl - self.margin or self.margin < 0:
            msg = f"a lease needs 0 < every ({self.every}) < ttl ({self.ttl}) - margin ({self.margin})"
            raise ValueError(msg)

    def held(self, revision: int, sent_at: float) -> "Held":
        """The lease as held after a renewal (or creation) sent at `sent_at` got `revision`."""
        return Held(revision=revision, until=sent_at + self.ttl - self.margin)

    def next_try(self, now: float, held: "Held | None") -> float:
        """Seconds to wait before the next renewal or try: `every`, but never past the
        deadline of what is held."""
        if held is None:
            return self.every
        return max(0.0, min(self.every, held.until - now))


@dataclass(frozen=True)
class Held:
    revision: int  # the fencing token: the record this holder last stored
    until: float  # the holder's clock: act no later than this

    def valid(self, now: float) -> bool:
        return now < self.until
