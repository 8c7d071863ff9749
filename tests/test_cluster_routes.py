"""A clustered hub's routes admit only its own nodes (docs/clustering.md#security): a server
holding a certificate of the fleet CA (every site has one) but not the route login cannot
join the cluster, so it cannot become a replica of the hub's streams. Real servers; the
attacker uses a regional's real certificate and key."""

import asyncio
import json
from pathlib import Path

from fleetbus.devfleet import identities
from fleetbus.devfleet.natsconf import Cluster
from fleetbus.devfleet.netutil import free_ports, http_get
from fleetbus.devfleet.plan import plan_fleet, ports_needed
from fleetbus.devfleet.servers import NatsServer
from schemas.heartbeat import Tier


async def routes(port: int) -> int:
    _, body = await http_get(f"http://127.0.0.1:{port}/routez", timeout=5)
    return int(json.loads(body)["num_routes"])


async def test_a_fleet_certificate_without_the_route_login_cannot_join(tmp_path: Path) -> None:
    ports = iter(free_ports(ports_needed(1, 0, mqtt=False, hub_nodes=3) + 8))
    plan = identities.secure(plan_fleet(tmp_path / "fleet", 1, 0, ports, hub_nodes=3))
    nodes = plan.nodes("hub")
    servers = [NatsServer(n.server, n.workdir) for n in nodes]
    regional = plan.site("r1")
    attackers = []
    try:
        await asyncio.gather(*(s.start() for s in servers))
        before = [await routes(n.server.http_port) for n in nodes]
        assert all(count > 0 for count in before)
        cluster = nodes[0].server.cluster
        assert cluster is not None
        assert regional.server.auth is not None
        # As r1 could: its own certificate and key, the hub's routes, no login / a guessed one.
        for index, login in enumerate(((None, None), ("route", "guess"))):
            spec = nodes[0].server.model_copy(
                update={
                    "node": f"evil-{index}",
                    "store_dir": tmp_path / f"evil-{index}" / "jetstream",
                    "client_port": next(ports),
                    "http_port": next(ports),
                    "leaf_port": next(ports),
                    "cluster": Cluster(
                        name=cluster.name,
                        port=next(ports),
                        routes=cluster.routes,
                        user=login[0],
                        password=login[1],
                    ),
                    "auth": regional.server.auth.model_copy(update={"operators": False, "admission": None}),
                }
            )
            attacker = NatsServer(spec, tmp_path / f"evil-{index}")
            attacker.health_url = f"http://127.0.0.1:{spec.http_port}/healthz?js-enabled-only=true"
            await attacker.start()
            attackers.append(attacker)
        # The hub nodes retry nothing towards an attacker; give the attackers' own route
        # attempts (every second, nats-server's default) several tries.
        for _ in range(30):
            assert [await routes(a.spec.http_port) for a in attackers] == [0, 0]
            await asyncio.sleep(0.1)  # a poll interval over 3 s
        assert [await routes(n.server.http_port) for n in nodes] == before
        for attacker in attackers:
            log = attacker.log_path.read_text()
            assert "Authorization Violation" in log or "authorization violation" in log.lower(), log[-2000:]
        assert all(s.tier is Tier.HUB for s in nodes)
    finally:
        await asyncio.gather(*(a.stop() for a in attackers), *(s.stop() for s in servers))
