"""docker-compose.yml and each site's files, rendered from the same code as `dev up`.

`fleetbus compose render` writes docker-compose.yml, docker-compose.ha.yml (the same fleet
with a 3-node hub: docs/clustering.md) and the monitoring configs; a test checks the committed
files are current, so the container fleet and the dev fleet cannot drift apart. `fleetbus
compose init [--hub-nodes 3]` makes what is not committed, under deploy/compose/ (deploy/
compose-ha/ for the 3-node hub, a fleet of its own: its CA, keys and volumes): the fleet CA
(`pki/`), the operators' keys (`operators/`) and per site (`sites/<site>/`) its key, its TLS
certificate, its nats-server config with the dev fleet's identities and permissions
(`fleetbus.devfleet.identities`, client ports TLS too), its admission files and its daemon's
settings. Each site's directory is mounted into its two containers only (into each node's
two, for a clustered hub: its nodes share the site's identity).

Why a second file rather than a compose profile: a profile can add services (the second and
third hub nodes) but cannot change the config of the ones that always run, and a 3-node hub
changes them all: the hub's server gets routes, every regional's leaf remote lists every node.
"""

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import yaml

from fleetbus.deploy import grafana
from fleetbus.devfleet import identities
from fleetbus.devfleet.natsconf import Cluster, LinkTls, ServerSpec
from fleetbus.devfleet.plan import FleetPlan, SitePlan, plan_fleet
from fleetbus.devfleet.servers import NATS_SERVER_VERSION, write_site_config
from fleetbus.devfleet.supervisor import toml_text
from fleetbus.errors import ConfigError
from fleetbus.runtime import pki
from schemas.heartbeat import Tier

NATS_IMAGE = f"nats:{NATS_SERVER_VERSION}-alpine"  # the server version the wheel pins
CLIENT, MONITOR, LEAF, ROUTE, DAEMON_HTTP, DASHBOARD = 4222, 8222, 7422, 6222, 9000, 8080
PRIVATE_DIR = "deploy/compose"  # what `fleetbus compose init` makes (not committed)
HA_NODES = 3  # the hub's nodes in docker-compose.ha.yml
SITE_MOUNT = PurePosixPath("/fleetbus/site")  # a site's directory, in both of its containers
CA_MOUNT = PurePosixPath("/fleetbus/ca.pem")  # the fleet CA's certificate (public)
HEARTBEAT = 5.0
# Daemon settings the compose file gives as environment (they differ from the dev fleet's).
FROM_ENVIRONMENT = ("http_port", "state_dir", "dashboard_port")
PATH_SETTINGS = ("nats_creds", "nats_ca", "admission_dir", "system_creds", "signing_key")
PROMETHEUS_IMAGE = "prom/prometheus:v3.5.0"
GRAFANA_IMAGE = "grafana/grafana:12.1.1"
MONITORING = "monitoring"  # the compose profile with Prometheus and Grafana
EDGE_COUNTS = (2, 1)  # edges per region: r1-e1, r1-e2 behind r1; r2-e1 behind r2


def _host(site: str) -> str:
    return f"nats-{site}"


def private_dir(hub_nodes: int = 1) -> str:
    """Where `fleetbus compose init` keeps a fleet's sites: the 3-node hub's fleet is another."""
    return PRIVATE_DIR if hub_nodes == 1 else f"{PRIVATE_DIR}-ha"


def compose_file(hub_nodes: int = 1) -> str:
    return "docker-compose.yml" if hub_nodes == 1 else "docker-compose.ha.yml"


def prometheus_file(hub_nodes: int = 1) -> str:
    return "deploy/prometheus/prometheus.yml" if hub_nodes == 1 else "deploy/prometheus/prometheus-ha.yml"


def _spec(site: SitePlan, plan: FleetPlan) -> ServerSpec:
    """`site`'s server in a container: named by its container, on the usual ports, its
    leaf remote listing every server of the site above, a cluster's routes every node's."""
    server = site.server
    cluster = server.cluster
    if cluster is not None:
        routes = tuple(f"nats-route://{_host(n.key)}:{ROUTE}" for n in plan.nodes(site.name))
        cluster = Cluster(name=cluster.name, port=ROUTE, routes=routes)
    return ServerSpec(
        name=site.name,
        tier=site.tier,
        node=server.node,
        cluster=cluster,
        host=_host(site.key),
        store_dir=PurePosixPath("/data/jetstream"),
        client_port=CLIENT,
        http_port=MONITOR,
        leaf_port=None if site.tier is Tier.EDGE else LEAF,
        upstream=tuple(f"nats-leaf://{_host(u.key)}:{LEAF}" for u in plan.nodes(site.upstream or "")),
        mqtt_port=1883 if site.tier is Tier.EDGE else None,
    )


def compose_plan(root: Path, hub_nodes: int = 1) -> FleetPlan:
    """The compose fleet as the dev fleet's planner (`plan_fleet`) makes it: its sites,
    regions, leaf links and hub nodes, kept under `root`/`private_dir(hub_nodes)`, with
    container names and fixed ports."""
    plan = plan_fleet(
        root / private_dir(hub_nodes),
        len(EDGE_COUNTS),
        0,
        itertools.count(1),
        mqtt=True,
        edge_counts=EDGE_COUNTS,
        hub_nodes=hub_nodes,
    )
    return replace(
        plan,
        sites=tuple(
            replace(
                s,
                server=_spec(s, plan),
                peers=tuple(f"nats://{_host(n.key)}:{CLIENT}" for n in plan.nodes(s.name) if n.key != s.key),
            )
            for s in plan.sites
        ),
    )


def sites(hub_nodes: int = 1) -> list[SitePlan]:
    """Every server (and daemon) of the compose fleet, the hub's first."""
    return list(compose_plan(Path("/unused"), hub_nodes).sites)


def init_compose(root: Path, *, hub_nodes: int = 1, in_containers: bool = True) -> list[Path]:
    """Make the compose fleet's identities (kept where they exist: keys are made once) and
    write each site's nats-server config, admission files and daemon settings, with the
    paths its containers see them at (`in_containers=False`: this machine's, to check a
    config with `nats-server -t`). Returns the files written."""
    plan = identities.secure(compose_plan(root, hub_nodes), client_tls=True)
    ca = identities.ca_cert(plan.state_dir)
    written = []
    for site in plan.sites:
        place = _container_path(site, ca) if in_containers else PurePath
        auth = site.server.auth
        if auth is None or auth.tls is None:
            msg = f"site {site.name} has no identity"  # identities.secure gives every site one
            raise ConfigError(msg)
        tls = LinkTls(cert=place(auth.tls.cert), key=place(auth.tls.key), ca=place(auth.tls.ca))
        spec = site.server.model_copy(
            update={
                "auth": auth.model_copy(update={"tls": tls}),
                "store_dir": site.server.store_dir if in_containers else site.workdir / "jetstream",
            }
        )
        written.append(write_site_config(spec, site.workdir, listen_host="0.0.0.0"))
        settings = {
            key: str(place(Path(str(value)))) if key in PATH_SETTINGS else value
            for key, value in site.daemon_settings(HEARTBEAT).items()
            if key not in FROM_ENVIRONMENT
        }
        path = site.workdir / "daemon.toml"
        path.write_text(toml_text(settings))
        written.append(path)
    return written


def _container_path(site: SitePlan, ca: Path) -> Callable[[PurePath], PurePath]:
    """Where a file of `site` is inside its containers: its directory (a clustered site's,
    with every node's below it) is mounted at `SITE_MOUNT`, the CA's certificate at
    `CA_MOUNT`; nothing else of this machine is."""

    def place(path: PurePath) -> PurePath:
        if Path(path) == ca:
            return CA_MOUNT
        try:
            return SITE_MOUNT / Path(path).relative_to(site.home)
        except ValueError as exc:
            msg = f"{path} is not in {site.name}'s directory {site.home}: it would not be mounted"
            raise ConfigError(msg) from exc

    return place


def _services(site: SitePlan, plan: FleetPlan, private: str) -> dict[str, Any]:
    spec, key, tier = site.server, site.key, site.tier.value
    own = [
        f"./{private}/sites/{site.name}:{SITE_MOUNT}",
        f"./{private}/{identities.PKI_DIR}/{pki.CA_CERT}:{CA_MOUNT}:ro",
    ]
    workdir = SITE_MOUNT / site.workdir.relative_to(site.home)  # a node's, below its site's
    nats_service: dict[str, Any] = {
        "image": NATS_IMAGE,
        "command": ["-c", f"{workdir}/nats-server.conf"],
        "volumes": [*own, f"{key}-jetstream:/data/jetstream"],
        "healthcheck": {
            "test": [
                "CMD",
                "wget",
                "-q",
                "-O",
                "/dev/null",
                f"http://127.0.0.1:{MONITOR}/healthz?js-enabled-only=true",
            ],
            "interval": "5s",
            "timeout": "3s",
            "retries": 10,
            "start_period": "5s",
        },
        "restart": "unless-stopped",
    }
    if site.upstream:
        up = plan.nodes(site.upstream)
        nats_service["depends_on"] = {_host(u.key): {"condition": "service_healthy"} for u in up}
    # The hub's ports on this machine: its first node's are the usual ones, the next node's +1.
    shift = plan.nodes(site.name).index(site)
    if spec.tier is Tier.HUB:
        nats_service["ports"] = [
            f"127.0.0.1:{CLIENT + shift}:{CLIENT}",
            f"127.0.0.1:{MONITOR + shift}:{MONITOR}",
        ]
    env = {
        "FLEETBUS_SITE": site.name,
        "FLEETBUS_NATS_URL": ",".join([spec.client_url, *site.peers]),
        "FLEETBUS_HTTP_HOST": "0.0.0.0",
        "FLEETBUS_HTTP_PORT": str(DAEMON_HTTP),
        "FLEETBUS_STATE_DIR": "/var/lib/fleetbus",
        "FLEETBUS_LOG_FORMAT": "json",
    }
    if spec.tier is Tier.EDGE:
        env["FLEETBUS_REGION"] = site.region
    if spec.tier is Tier.HUB:
        env |= {"FLEETBUS_DASHBOARD_HOST": "0.0.0.0", "FLEETBUS_DASHBOARD_PORT": str(DASHBOARD)}
    daemon: dict[str, Any] = {
        "image": "fleetbus:dev",
        "build": {"context": ".", "dockerfile": "deploy/Dockerfile"},
        "command": ["python", "-m", tier, "--config", f"{workdir}/daemon.toml"],
        # Root in its own container, to read its site's key (mode 0600 on the bind mount).
        "user": "0",
        "environment": env,
        "volumes": [*own, f"{key}-state:/var/lib/fleetbus"],
        "depends_on": {_host(key): {"condition": "service_healthy"}},
        "healthcheck": {
            "test": [
                "CMD",
                "python",
                "-c",
                f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{DAEMON_HTTP}/healthz')",
            ],
            "interval": "5s",
            "timeout": "3s",
            "retries": 10,
        },
        "restart": "unless-stopped",
    }
    if spec.tier is Tier.HUB:
        daemon["ports"] = [f"127.0.0.1:{DASHBOARD + shift}:{DASHBOARD}"]
    return {_host(key): nats_service, _daemon(key): daemon}


def _daemon(site: str) -> str:
    return f"fleetbus-{site}"


def _monitoring(prometheus: str) -> dict[str, Any]:
    """Prometheus scraping every daemon, Grafana with it as data source and the fleetbus
    dashboard; only with `docker compose --profile monitoring up`."""
    return {
        "prometheus": {
            "image": PROMETHEUS_IMAGE,
            "profiles": [MONITORING],
            "volumes": [
                f"./{prometheus}:/etc/prometheus/prometheus.yml:ro",
                "prometheus-data:/prometheus",
            ],
            "ports": ["127.0.0.1:9090:9090"],
            "restart": "unless-stopped",
        },
        "grafana": {
            "image": GRAFANA_IMAGE,
            "profiles": [MONITORING],
            "environment": {
                "GF_AUTH_ANONYMOUS_ENABLED": "true",
                "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": "/var/lib/grafana/dashboards/fleetbus.json",
            },
            "volumes": [
                "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro",
                "./deploy/grafana/fleetbus.json:/var/lib/grafana/dashboards/fleetbus.json:ro",
                "grafana-data:/var/lib/grafana",
            ],
            "ports": ["127.0.0.1:3000:3000"],
            "depends_on": ["prometheus"],
            "restart": "unless-stopped",
        },
    }


def _prometheus_config(fleet: list[SitePlan]) -> str:
    jobs = []
    for tier in Tier:
        targets = [f"{_daemon(s.key)}:{DAEMON_HTTP}" for s in fleet if s.tier is tier]
        jobs.append({"job_name": f"fleetbus-{tier.value}", "static_configs": [{"targets": targets}]})
    config = {"global": {"scrape_interval": "15s", "evaluation_interval": "15s"}, "scrape_configs": jobs}
    return GENERATED + yaml.safe_dump(config, sort_keys=False)


GENERATED = "# Generated by `fleetbus compose render`: edit fleetbus/deploy/compose.py, not this file.\n"
GRAFANA_DATASOURCE = {
    "apiVersion": 1,
    "datasources": [
        {
            "name": "Prometheus",
            "uid": "prometheus",
            "type": "prometheus",
            "access": "proxy",
            "url": "http://prometheus:9090",
            "isDefault": True,
        }
    ],
}
GRAFANA_DASHBOARDS = {
    "apiVersion": 1,
    "providers": [
        {
            "name": "fleetbus",
            "folder": "fleetbus",
            "type": "file",
            "options": {"path": "/var/lib/grafana/dashboards"},
        }
    ],
}


def render_compose(hub_nodes: int = 1) -> tuple[str, dict[str, str]]:
    """(`compose_file(hub_nodes)` text, {path: text} of every file it mounts: Prometheus
    config, Grafana provisioning and dashboard)."""
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    configs: dict[str, str] = {}
    plan = compose_plan(Path("/unused"), hub_nodes)
    for site in plan.sites:
        services |= _services(site, plan, private_dir(hub_nodes))
        volumes |= {f"{site.key}-jetstream": {}, f"{site.key}-state": {}}
    services |= _monitoring(prometheus_file(hub_nodes))
    volumes |= {"prometheus-data": {}, "grafana-data": {}}
    configs[prometheus_file(hub_nodes)] = _prometheus_config(list(plan.sites))
    configs["deploy/grafana/provisioning/datasources/prometheus.yml"] = GENERATED + yaml.safe_dump(
        GRAFANA_DATASOURCE, sort_keys=False
    )
    configs["deploy/grafana/provisioning/dashboards/fleetbus.yml"] = GENERATED + yaml.safe_dump(
        GRAFANA_DASHBOARDS, sort_keys=False
    )
    configs["deploy/grafana/fleetbus.json"] = json.dumps(grafana.dashboard(), indent=2) + "\n"
    if hub_nodes == 1:
        header = (
            "# A fleetbus dev fleet in containers: hub, 2 regionals, 3 edges; each site is the\n"
            "# official nats image plus a fleetbus daemon. Generated by `fleetbus compose render`\n"
            "# from the same code as `fleetbus dev up`: edit that, not this file.\n"
            "# First `fleetbus compose init` (the fleet CA, every site's key, certificate and config,\n"
            "# the operators' keys: under deploy/compose/, not committed), then `docker compose up`;\n"
            "# with Prometheus and Grafana: `docker compose --profile monitoring up`. Identities,\n"
            "# permissions and TLS on every port, as `fleetbus dev up --client-tls` (docs/security.md).\n"
            "# The same fleet with a 3-node hub: docker-compose.ha.yml.\n"
        )
    else:
        header = (
            f"# The fleet of docker-compose.yml with its hub as a {hub_nodes}-node JetStream cluster\n"
            "# (`fleetbus dev up --hub-nodes 3`; docs/clustering.md): a nats server and a hub daemon\n"
            "# per node, every regional's leaf remote listing every node. Generated by `fleetbus\n"
            "# compose render`: edit fleetbus/deploy/compose.py, not this file. A fleet of its own:\n"
            f"# `fleetbus compose init --hub-nodes {hub_nodes}` (under {private_dir(hub_nodes)}/), then\n"
            f"# `docker compose -p fleetbus-ha -f {compose_file(hub_nodes)} up`. Node n's client,\n"
            "# monitoring and dashboard ports are 4222, 8222 and 8080 plus n - 1 on 127.0.0.1.\n"
        )
    body = yaml.safe_dump({"services": services, "volumes": volumes}, sort_keys=False, width=120)
    return header + body, configs


def write_compose(root: Path) -> list[Path]:
    """Write both compose files and everything they mount (committed, no secrets)."""
    written = []
    for hub_nodes in (1, HA_NODES):
        text, configs = render_compose(hub_nodes)
        for rel, content in {compose_file(hub_nodes): text, **configs}.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            written.append(path)
    return list(dict.fromkeys(written))
