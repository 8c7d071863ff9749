"""Hollow-edge processes for `fleetbus sim`: which regional each serves, and how many edges.

One process per regional (`python -m edge.hollow`), its edges thin clients of that regional's
server. Pure planning here; `DevFleet` starts and supervises them after the regionals' daemons.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleetbus.devfleet.plan import HOST, FleetPlan
from schemas.heartbeat import Tier


@dataclass(frozen=True)
class HollowPlan:
    region: str
    nats_url: str  # the regional's server
    first: int  # number of its first edge (`<region>-h<first>`)
    edges: int
    http_port: int
    workdir: Path

    @property
    def name(self) -> str:
        return f"{self.region}-hollow"

    @property
    def edge_ids(self) -> list[str]:
        """Its edges' ids, as `edge.hollow` names them."""
        return [f"{self.region}-h{n}" for n in range(self.first, self.first + self.edges)]

    @property
    def health_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/healthz"

    def settings(self, heartbeat_interval: float, **extra: object) -> dict[str, object]:
        """What the process's TOML settings file holds."""
        return {
            "site": self.name,
            "region": self.region,
            "nats_url": self.nats_url,
            "http_port": self.http_port,
            "state_dir": str(self.workdir / "state"),
            "edges": self.edges,
            "first": self.first,
            "heartbeat_interval": heartbeat_interval,
            **extra,
        }


def plan_hollow(plan: FleetPlan, edges: int, ports: Iterator[int]) -> list[HollowPlan]:
    """`edges` hollow edges spread evenly over the plan's regionals (the first ones get one
    more when it does not divide), one process each."""
    regionals = plan.by_tier(Tier.REGIONAL)
    share, extra = divmod(edges, len(regionals))
    return [
        HollowPlan(
            region=site.region,
            nats_url=site.server.client_url,
            first=1,
            edges=share + (1 if i < extra else 0),
            http_port=next(ports),
            workdir=plan.state_dir / "hollow" / site.region,
        )
        for i, site in enumerate(regionals)
    ]
