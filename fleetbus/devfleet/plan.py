"""The shape of a dev fleet: which sites, which ports, which configs. Pure, no I/O."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fleetbus.devfleet.natsconf import Cluster, ServerSpec
from fleetbus.runtime.admission import DIR as ADMISSION_DIR
from schemas.heartbeat import Tier
from schemas.subjects import HUB_DOMAIN

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Link:
    """A leaf link through a proxy: the server dials `port`, the proxy forwards to `target`
    (the upstream node's leaf port), so the link can be cut and healed."""

    port: int
    target: int
    node: str  # the upstream server it reaches (its server_name)


@dataclass(frozen=True)
class SitePlan:
    """One site: its nats-server and the daemon beside it."""

    server: ServerSpec
    region: str
    daemon_http_port: int
    workdir: Path
    upstream: str | None = None  # the site whose server this one is a leaf of
    # With link proxies: one per server of the upstream site (its nodes, if clustered).
    links: tuple[Link, ...] = ()
    dashboard_port: int | None = None  # the hub's web dashboard
    # A clustered site's nodes share the site's directory (its identity, keys); each node's
    # server and daemon keep their own in `workdir` below it. None: `workdir` is the site's.
    site_dir: Path | None = None
    # A clustered site's other nodes' client URLs: its daemon moves to one while its own is down.
    peers: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """What names this server and daemon among the fleet's: the site, or its node."""
        return self.server.server_name

    @property
    def home(self) -> Path:
        return self.site_dir or self.workdir

    @property
    def dashboard_url(self) -> str | None:
        return f"http://{HOST}:{self.dashboard_port}/" if self.dashboard_port else None

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def tier(self) -> Tier:
        return self.server.tier

    @property
    def creds_path(self) -> Path:
        """The site's identity (nkey seed), generated in its own directory
        (`fleetbus.devfleet.identities`)."""
        return self.home / "identity" / "site.nk"

    @property
    def system_creds_path(self) -> Path:
        """A regional's or edge's daemon's second identity, in its server's system account."""
        return self.home / "identity" / "system.nk"

    @property
    def signing_key_path(self) -> Path:
        """The hub's desired-state signing key (nkey seed), beside its site identity."""
        return self.home / "identity" / "desired-state.nk"

    @property
    def daemon_health_url(self) -> str:
        return f"http://{HOST}:{self.daemon_http_port}/healthz"

    def daemon_settings(self, heartbeat_interval: float) -> dict[str, object]:
        """What the daemon's TOML settings file holds."""
        values: dict[str, object] = {
            "site": self.name,
            "nats_url": ",".join([self.server.client_url, *self.peers]),
            "http_port": self.daemon_http_port,
            "state_dir": str(self.workdir / "daemon"),
        }
        auth = self.server.auth
        if auth is not None:
            values["nats_creds"] = str(self.creds_path)
            if auth.tls is not None:
                values["nats_ca"] = str(auth.tls.ca)
        if self.tier is Tier.EDGE:
            values |= {
                "region": self.region,
                "heartbeat_interval": heartbeat_interval,
                "labels": {"region": self.region, "env": "dev"},
            }
            # An --insecure fleet verifies nothing (and says so); a secure one trusts the hub's key.
            values |= {"trusted_keys": list(auth.trusted_keys)} if auth else {"verify_desired_state": False}
            if self.server.auth is not None and self.server.auth.devices:
                values |= {
                    "admission_dir": str(self.workdir / ADMISSION_DIR),
                    "system_creds": str(self.system_creds_path),
                }
        elif self.tier is Tier.REGIONAL:
            values["heartbeat_interval"] = heartbeat_interval
            auth = self.server.auth
            if auth is not None and auth.admission is not None:
                values |= {
                    "admission_dir": str(self.workdir / ADMISSION_DIR),
                    "system_creds": str(self.system_creds_path),
                    "enroll_issuers": list(auth.enroll_issuers),
                    "enroll_url": self.server.client_url,
                }
        else:
            if self.dashboard_port:
                values["dashboard_port"] = self.dashboard_port
            if self.server.cluster is not None:
                values |= {"node": self.key, "replicas": len(self.server.cluster.routes)}
            if auth is None:
                values["desk_insecure"] = True
            else:
                values |= {
                    "signing_key": str(self.signing_key_path),
                    "admins": auth.admins,
                    "viewers": auth.viewers,
                }
                if auth.operators:
                    values |= {
                        "admission_dir": str(self.workdir / ADMISSION_DIR),
                        "system_creds": str(self.system_creds_path),
                    }
        return values


@dataclass(frozen=True)
class FleetPlan:
    state_dir: Path
    sites: tuple[SitePlan, ...]

    def by_tier(self, tier: Tier) -> list[SitePlan]:
        return [s for s in self.sites if s.tier is tier]

    def site(self, name: str) -> SitePlan:
        """The site `name` (a clustered site's first node), or the node named `name`."""
        for site in self.sites:
            if name in (site.name, site.key):
                return site
        raise KeyError(name)

    @property
    def hub_url(self) -> str:
        """What a client of the hub dials: its client URL, or every node's, comma-separated."""
        return ",".join(s.server.client_url for s in self.by_tier(Tier.HUB))

    def nodes(self, name: str) -> list[SitePlan]:
        """Every server of the site `name`: one, or a cluster's nodes."""
        return [s for s in self.sites if s.name == name]


def region_id(index: int) -> str:
    return f"r{index}"


def edge_id(region: str, index: int) -> str:
    return f"{region}-e{index}"


def hub_node(index: int) -> str:
    return f"{HUB_DOMAIN}-n{index}"


def ports_needed(regions: int, edges: int, *, mqtt: bool, links: bool = False, hub_nodes: int = 1) -> int:
    per_edge = 3 + (1 if mqtt else 0) + (1 if links else 0)  # client, monitoring, daemon http
    per_regional = 4 + (hub_nodes if links else 0)  # + leaf
    per_hub = 5 + (1 if hub_nodes > 1 else 0)  # + dashboard (+ route)
    return hub_nodes * per_hub + regions * per_regional + regions * edges * per_edge


def plan_fleet(
    state_dir: Path,
    regions: int,
    edges: int,
    ports: Iterator[int],
    *,
    mqtt: bool = False,
    links: bool = False,
    edge_counts: Sequence[int] | None = None,
    hub_nodes: int = 1,
) -> FleetPlan:
    """Hub, `regions` regionals and `edges` edges per region (or `edge_counts[i]` in region
    i + 1), taking ports from `ports`.

    `links=True` puts a proxy port on every leaf link (see `fleetbus.devfleet.linkproxy`).
    `hub_nodes` > 1 runs the hub as a JetStream cluster of that many nodes, each with its own
    daemon; every regional's leaf remote lists every node (through its own proxy each).
    """
    counts = list(edge_counts) if edge_counts is not None else [edges] * regions
    sites_dir = state_dir / "sites"

    def site(
        name: str,
        tier: Tier,
        region: str,
        upstream: list[SitePlan],
        *,
        node: str | None = None,
        cluster: Cluster | None = None,
    ) -> SitePlan:
        workdir = sites_dir / name / node if node else sites_dir / name
        uplinks = tuple(
            Link(port=next(ports), target=up.server.leaf_port, node=up.key)
            for up in upstream
            if links and up.server.leaf_port
        )
        urls = tuple(f"nats-leaf://{HOST}:{link.port}" for link in uplinks) or tuple(
            up.server.leaf_url for up in upstream if up.server.leaf_url
        )
        server = ServerSpec(
            name=name,
            tier=tier,
            node=node,
            cluster=cluster,
            host=HOST,
            store_dir=workdir / "jetstream",
            client_port=next(ports),
            http_port=next(ports),
            leaf_port=None if tier is Tier.EDGE else next(ports),
            upstream=urls,
            mqtt_port=next(ports) if (mqtt and tier is Tier.EDGE) else None,
        )
        return SitePlan(
            server=server,
            region=region,
            daemon_http_port=next(ports),
            workdir=workdir,
            upstream=upstream[0].name if upstream else None,
            links=uplinks,
            dashboard_port=next(ports) if tier is Tier.HUB else None,
            site_dir=sites_dir / name if node else None,
        )

    if hub_nodes > 1:
        route_ports = [next(ports) for _ in range(hub_nodes)]
        routes = tuple(f"nats-route://{HOST}:{port}" for port in route_ports)
        hubs = [
            site(
                HUB_DOMAIN,
                Tier.HUB,
                HUB_DOMAIN,
                [],
                node=hub_node(i),
                cluster=Cluster(name=HUB_DOMAIN, port=port, routes=routes),
            )
            for i, port in enumerate(route_ports, start=1)
        ]
        hubs = [
            replace(node, peers=tuple(n.server.client_url for n in hubs if n is not node)) for node in hubs
        ]
    else:
        hubs = [site(HUB_DOMAIN, Tier.HUB, HUB_DOMAIN, [])]
    sites = list(hubs)
    for r, count in enumerate(counts, start=1):
        region = region_id(r)
        regional = site(region, Tier.REGIONAL, region, hubs)
        sites.append(regional)
        sites.extend(site(edge_id(region, e), Tier.EDGE, region, [regional]) for e in range(1, count + 1))
    return FleetPlan(state_dir=state_dir, sites=tuple(sites))
