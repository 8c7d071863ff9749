"""The shape of a dev fleet: which sites, which ports, which configs. Pure, no I/O."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetbus.devfleet.natsconf import ServerSpec
from fleetbus.runtime.admission import DIR as ADMISSION_DIR
from schemas.heartbeat import Tier
from schemas.subjects import HUB_DOMAIN

HOST = "127.0.0.1"


@dataclass(frozen=True)
class SitePlan:
    """One site: its nats-server and the daemon beside it."""

    server: ServerSpec
    region: str
    daemon_http_port: int
    workdir: Path
    upstream: str | None = None  # the site whose server this one is a leaf of
    # With link proxies: the server's upstream URL points at `link_port`, a proxy forwarding
    # to `link_target` (the upstream's leaf port), so links can be cut and healed.
    link_port: int | None = None
    link_target: int | None = None
    dashboard_port: int | None = None  # the hub's web dashboard

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
        return self.workdir / "identity" / "site.nk"

    @property
    def system_creds_path(self) -> Path:
        """A regional's or edge's daemon's second identity, in its server's system account."""
        return self.workdir / "identity" / "system.nk"

    @property
    def signing_key_path(self) -> Path:
        """The hub's desired-state signing key (nkey seed), beside its site identity."""
        return self.workdir / "identity" / "desired-state.nk"

    @property
    def daemon_health_url(self) -> str:
        return f"http://{HOST}:{self.daemon_http_port}/healthz"

    def daemon_settings(self, heartbeat_interval: float) -> dict[str, object]:
        """What the daemon's TOML settings file holds."""
        values: dict[str, object] = {
            "site": self.name,
            "nats_url": self.server.client_url,
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
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)


def region_id(index: int) -> str:
    return f"r{index}"


def edge_id(region: str, index: int) -> str:
    return f"{region}-e{index}"


def ports_needed(regions: int, edges: int, *, mqtt: bool, links: bool = False) -> int:
    per_edge = 3 + (1 if mqtt else 0) + (1 if links else 0)  # client, monitoring, daemon http
    per_regional = 4 + (1 if links else 0)  # + leaf
    return 5 + regions * per_regional + regions * edges * per_edge  # hub: + dashboard


def plan_fleet(
    state_dir: Path,
    regions: int,
    edges: int,
    ports: Iterator[int],
    *,
    mqtt: bool = False,
    links: bool = False,
    edge_counts: Sequence[int] | None = None,
) -> FleetPlan:
    """Hub, `regions` regionals and `edges` edges per region (or `edge_counts[i]` in region
    i + 1), taking ports from `ports`.

    `links=True` puts a proxy port on every leaf link (see `fleetbus.devfleet.linkproxy`).
    """
    counts = list(edge_counts) if edge_counts is not None else [edges] * regions
    sites_dir = state_dir / "sites"

    def site(name: str, tier: Tier, region: str, upstream_site: SitePlan | None) -> SitePlan:
        workdir = sites_dir / name
        link_target = upstream_site.server.leaf_port if upstream_site else None
        link_port = next(ports) if (links and link_target) else None
        upstream: tuple[str, ...] = ()
        if upstream_site is not None:
            leaf_port = link_port or link_target
            upstream = (f"nats-leaf://{HOST}:{leaf_port}",)
        server = ServerSpec(
            name=name,
            tier=tier,
            host=HOST,
            store_dir=workdir / "jetstream",
            client_port=next(ports),
            http_port=next(ports),
            leaf_port=None if tier is Tier.EDGE else next(ports),
            upstream=upstream,
            mqtt_port=next(ports) if (mqtt and tier is Tier.EDGE) else None,
        )
        return SitePlan(
            server=server,
            region=region,
            daemon_http_port=next(ports),
            workdir=workdir,
            upstream=upstream_site.name if upstream_site else None,
            link_port=link_port,
            link_target=link_target if link_port else None,
            dashboard_port=next(ports) if tier is Tier.HUB else None,
        )

    hub = site(HUB_DOMAIN, Tier.HUB, HUB_DOMAIN, None)
    sites = [hub]
    for r, count in enumerate(counts, start=1):
        region = region_id(r)
        regional = site(region, Tier.REGIONAL, region, hub)
        sites.append(regional)
        sites.extend(site(edge_id(region, e), Tier.EDGE, region, regional) for e in range(1, count + 1))
    return FleetPlan(state_dir=state_dir, sites=tuple(sites))
