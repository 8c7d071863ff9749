"""A real chain hub <- regional <- 2 edges, each its own JetStream domain, reaches across tiers."""

import nats
import pytest

from fleetbus.devfleet.netutil import http_get
from tests.helpers import eventually

pytestmark = pytest.mark.slow


async def test_edge_reaches_hub_domain_and_hub_reaches_every_edge(chain):
    for site in chain.plan.sites:
        status, _ = await http_get(site.server.health_url)
        assert status == 200, site.name

    edge = await nats.connect(chain.url("r1-e1"))
    hub = await nats.connect(chain.url("hub"))
    try:
        # From an edge: the hub's JetStream, two leaf hops up.
        info = await eventually(
            lambda: edge.jetstream(domain="hub", timeout=1).account_info(), what="edge -> hub JetStream"
        )
        assert info.domain == "hub"
        # A stream created at the hub from the edge lands in the hub's domain only.
        js_hub_from_edge = edge.jetstream(domain="hub", timeout=2)
        await js_hub_from_edge.add_stream(name="PROBE", subjects=["probe.hub"])
        assert {s.config.name for s in await hub.jetstream().streams_info()} == {"PROBE"}
        assert await edge.jetstream().streams_info() == []

        # From the hub: every edge's (and the regional's) JetStream, down the chain.
        for domain in ("r1", "r1-e1", "r1-e2"):
            info = await eventually(
                lambda d=domain: hub.jetstream(domain=d, timeout=1).account_info(),
                what=f"hub -> {domain} JetStream",
            )
            assert info.domain == domain
    finally:
        await edge.close()
        await hub.close()


async def test_local_jetstream_stays_local(chain):
    """Without a domain prefix each tier talks to its own JetStream, not its upstream's."""
    edge = await nats.connect(chain.url("r1-e2"))
    try:
        info = await edge.jetstream(timeout=2).account_info()
        assert info.domain == "r1-e2"
    finally:
        await edge.close()
