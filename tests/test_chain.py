"""A real chain hub <- regional <- 2 edges, each its own JetStream domain, reaches across tiers."""

import pytest

from fleetbus.devfleet.netutil import http_get
from tests.helpers import eventually

pytestmark = pytest.mark.slow


async def test_each_tier_reaches_the_domains_its_links_permit(chain):
    for site in chain.plan.sites:
        status, _ = await http_get(site.server.health_url)
        assert status == 200, site.name

    conns = {site: await chain.connect(site) for site in ("hub", "r1", "r1-e1")}
    try:
        # Up one hop: the upstream probe's call (an edge at its regional, a regional at the hub).
        for site, upstream in (("r1-e1", "r1"), ("r1", "hub")):
            info = await eventually(
                lambda s=site, u=upstream: conns[s].jetstream(domain=u, timeout=1).account_info(),
                what=f"{site} -> {upstream} JetStream",
            )
            assert info.domain == upstream
        # Down one hop, the hub only: it sources each region's streams through the regional's
        # domain's API.
        info = await eventually(
            lambda: conns["hub"].jetstream(domain="r1", timeout=1).account_info(), what="hub -> r1 JetStream"
        )
        assert info.domain == "r1"
        # An edge's domain is its own: its regional does not reach into it (edges push their
        # data up), nor does the hub. Two hops are not a link: nothing below the hub reaches
        # the hub's API (tests/test_security.py tries harder).
        for site, other in (("r1", "r1-e1"), ("r1", "r1-e2"), ("hub", "r1-e1"), ("r1-e1", "hub")):
            with pytest.raises(Exception):  # noqa: B017 - no responders or a timeout
                await conns[site].jetstream(domain=other, timeout=1).account_info()
    finally:
        for nc in conns.values():
            await nc.close()


async def test_local_jetstream_stays_local(chain):
    """Without a domain prefix each tier talks to its own JetStream, not its upstream's."""
    edge = await chain.connect("r1-e2")
    try:
        info = await edge.jetstream(timeout=2).account_info()
        assert info.domain == "r1-e2"
    finally:
        await edge.close()
