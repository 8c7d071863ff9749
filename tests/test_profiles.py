"""Issue 3 acceptance: profiles published at the hub converge on every edge, across cuts."""

import time

import pytest

from edge.drivers.local import APPLIED_FILE, read_applied
from fleetbus.client import FleetClient
from fleetbus.compliance import State
from fleetbus.devfleet.supervisor import DevFleet
from schemas.profile import Profile
from tests.helpers import eventually

pytestmark = pytest.mark.slow

EDGES = ("r1-e1", "r1-e2")


def base_profile(version: str = "1.0", **config: object) -> Profile:
    return Profile.model_validate(
        {
            "name": "base",
            "selector": {"match_labels": {"env": "dev"}},
            "priority": 10,
            "spec": {
                "components": [{"name": "agent", "image": "registry.example/agent", "version": version}],
                "config": {"ntp": "pool.ntp.org", **config},
            },
        }
    )


def applied(fleet: DevFleet, edge: str) -> dict[str, object] | None:
    return read_applied(fleet.plan.site(edge).workdir / "daemon" / APPLIED_FILE)


async def converged(client: FleetClient, edges: tuple[str, ...] = EDGES) -> dict[str, str] | None:
    """{edge: hash} once every edge in `edges` is converged at the hub, else None."""
    rows = {r.edge: r for r in await client.compliance()}
    if all(e in rows and rows[e].state is State.CONVERGED for e in edges):
        return {e: rows[e].desired_hash or "" for e in edges}
    return None


async def test_apply_converges_on_every_edge(fleet):
    async with await FleetClient.connect(fleet.plan.site("hub").server.client_url) as client:
        began = time.monotonic()
        plan = await client.profiles.apply(base_profile(), actor="test")
        assert plan.new.revision == 1
        hashes = await eventually(lambda: converged(client), timeout=20, what="2/2 converged")
        print(f"apply -> 2/2 converged at the hub: {time.monotonic() - began:.2f}s")
        for edge in EDGES:
            desired, _ = await client.explain(edge)
            assert hashes[edge] == desired.hash
            record = applied(fleet, edge)
            assert record
            assert record["hash"] == desired.hash
            assert record["document"]["components"]["agent"]["version"] == "1.0"
