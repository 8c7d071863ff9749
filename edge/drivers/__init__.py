"""How an edge applies its effective desired state: one driver per kind of site.

A driver is idempotent and keyed by content hash: applying the state it already holds is a
no-op that reports `unchanged`.
"""

from typing import Protocol

from fleetbus.desired import DesiredState
from fleetbus.errors import FleetbusError
from schemas.inventory import AppliedState


class DriverError(FleetbusError):
    """The driver could not apply; the message says why (reported in the ApplyResult)."""


class Driver(Protocol):
    name: str

    async def applied_hash(self) -> str | None:
        """Content hash of what is applied now, `None` if nothing is."""
        ...

    async def applied(self) -> AppliedState | None:
        """What is applied now, for the inventory; `None` if nothing is."""
        ...

    async def apply(self, desired: DesiredState) -> bool:
        """Make `desired` the applied state; True if anything changed. Raises `DriverError`."""
        ...
