"""How an edge applies its effective desired state: one driver per kind of site.

A driver is idempotent: applying the state it already holds is a no-op that reports
`unchanged`. Drivers that manage objects (kubernetes) also say what happened to each one.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from fleetbus.core.desired import DesiredState
from fleetbus.errors import FleetbusError
from schemas.event import ObjectResult
from schemas.inventory import AppliedState, KubernetesInventory


class DriverError(FleetbusError):
    """The driver could not apply; the message says why (reported in the ApplyResult), and
    `objects` what happened to each object it did get to."""

    def __init__(self, message: str, objects: list[ObjectResult] | None = None) -> None:
        super().__init__(message)
        self.objects = objects or []


@dataclass(frozen=True)
class Applied:
    changed: bool
    objects: list[ObjectResult] = field(default_factory=list)


@dataclass(frozen=True)
class Drift:
    """A live object differs from what the driver applied."""

    object: str  # e.g. "Deployment fleetbus-shop/web"
    ref: dict[str, Any]  # api_version, kind, namespace, name
    component: str | None
    fields: list[str]  # where it differs, e.g. ["spec.replicas"]; ["<missing>"] if deleted
    action: str  # reported | corrected | correction_failed
    error: str | None = None

    def as_data(self) -> dict[str, Any]:
        return {
            "object": self.ref,
            "component": self.component,
            "fields": self.fields,
            "action": self.action,
            "error": self.error,
        }


class Driver(Protocol):
    name: str

    async def applied(self) -> AppliedState | None:
        """What is applied now, for the inventory; `None` if nothing is."""
        ...

    async def apply(self, desired: DesiredState) -> Applied:
        """Make `desired` the applied state. Raises `DriverError`."""
        ...


@runtime_checkable
class ClusterDriver(Driver, Protocol):
    """A driver for a cluster that can drift and has nodes and workloads (kubernetes)."""

    async def inventory(self) -> KubernetesInventory:
        """The cluster, for the edge's inventory."""
        ...

    async def watch_drift(self, interval: float, report: Callable[[Drift], Awaitable[None]]) -> None:
        """Look for drift every `interval` seconds until cancelled; `report` each finding."""
        ...
