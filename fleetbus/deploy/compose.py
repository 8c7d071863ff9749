"""docker-compose.yml and its nats-server configs, rendered from the same code as `dev up`.

`fleetbus compose` writes them; a test checks the committed files are current, so the
container fleet and the dev fleet cannot drift apart.
"""

import itertools
import json
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import yaml

from fleetbus.deploy import grafana
from fleetbus.devfleet.natsconf import ServerSpec, render
from fleetbus.devfleet.plan import plan_fleet
from fleetbus.devfleet.servers import NATS_SERVER_VERSION
from schemas.heartbeat import Tier

NATS_IMAGE = f"nats:{NATS_SERVER_VERSION}-alpine"  # the server version the wheel pins
CLIENT, MONITOR, LEAF, DAEMON_HTTP, DASHBOARD = 4222, 8222, 7422, 9000, 8080
CONFIG_DIR = "deploy/compose"
PROMETHEUS_IMAGE = "prom/prometheus:v3.5.0"
GRAFANA_IMAGE = "grafana/grafana:12.1.1"
MONITORING = "monitoring"  # the compose profile with Prometheus and Grafana
EDGE_COUNTS = (2, 1)  # edges per region: r1-e1, r1-e2 behind r1; r2-e1 behind r2


def _host(site: str) -> str:
    return f"nats-{site}"


def _spec(site: str, tier: Tier, upstream: str | None) -> ServerSpec:
    return ServerSpec(
        name=site,
        tier=tier,
        host=_host(site),
        store_dir=PurePosixPath("/data/jetstream"),
        client_port=CLIENT,
        http_port=MONITOR,
        leaf_port=None if tier is Tier.EDGE else LEAF,
        upstream=(f"nats-leaf://{_host(upstream)}:{LEAF}",) if upstream else (),
        mqtt_port=1883 if tier is Tier.EDGE else None,
    )


class ComposeSite(NamedTuple):
    spec: ServerSpec
    region: str
    upstream: str | None  # the site whose server this one is a leaf of


def sites() -> list[ComposeSite]:
    """Every site of the compose fleet, hub first: the sites, regions and leaf links of the
    dev fleet's planner (`plan_fleet`), with container names and fixed ports."""
    plan = plan_fleet(
        Path("/unused"), len(EDGE_COUNTS), 0, itertools.count(1), mqtt=True, edge_counts=EDGE_COUNTS
    )
    return [ComposeSite(_spec(s.name, s.tier, s.upstream), s.region, s.upstream) for s in plan.sites]


def _services(spec: ServerSpec, region: str, upstream: str | None) -> dict[str, Any]:
    site, tier = spec.name, spec.tier.value
    nats_service: dict[str, Any] = {
        "image": NATS_IMAGE,
        "command": ["-c", "/etc/nats/nats-server.conf"],
        "volumes": [
            f"./{CONFIG_DIR}/{site}.conf:/etc/nats/nats-server.conf:ro",
            f"{site}-jetstream:/data/jetstream",
        ],
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
    if upstream:
        nats_service["depends_on"] = {_host(upstream): {"condition": "service_healthy"}}
    if spec.tier is Tier.HUB:
        nats_service["ports"] = [f"127.0.0.1:{CLIENT}:{CLIENT}", f"127.0.0.1:{MONITOR}:{MONITOR}"]
    env = {
        "FLEETBUS_SITE": site,
        "FLEETBUS_NATS_URL": spec.client_url,
        "FLEETBUS_HTTP_HOST": "0.0.0.0",
        "FLEETBUS_HTTP_PORT": str(DAEMON_HTTP),
        "FLEETBUS_STATE_DIR": "/var/lib/fleetbus",
        "FLEETBUS_LOG_FORMAT": "json",
    }
    if spec.tier is Tier.EDGE:
        env["FLEETBUS_REGION"] = region
    if spec.tier is Tier.HUB:
        env |= {"FLEETBUS_DASHBOARD_HOST": "0.0.0.0", "FLEETBUS_DASHBOARD_PORT": str(DASHBOARD)}
    daemon: dict[str, Any] = {
        "image": "fleetbus:dev",
        "build": {"context": ".", "dockerfile": "deploy/Dockerfile"},
        "command": ["python", "-m", tier],
        "environment": env,
        "volumes": [f"{site}-state:/var/lib/fleetbus"],
        "depends_on": {_host(site): {"condition": "service_healthy"}},
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
        daemon["ports"] = [f"127.0.0.1:{DASHBOARD}:{DASHBOARD}"]
    return {_host(site): nats_service, _daemon(site): daemon}


def _daemon(site: str) -> str:
    return f"fleetbus-{site}"


def _monitoring() -> dict[str, Any]:
    """Prometheus scraping every daemon, Grafana with it as data source and the fleetbus
    dashboard; only with `docker compose --profile monitoring up`."""
    return {
        "prometheus": {
            "image": PROMETHEUS_IMAGE,
            "profiles": [MONITORING],
            "volumes": [
                "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
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


def _prometheus_config(fleet: list[ComposeSite]) -> str:
    jobs = []
    for tier in Tier:
        targets = [f"{_daemon(s.spec.name)}:{DAEMON_HTTP}" for s in fleet if s.spec.tier is tier]
        jobs.append({"job_name": f"fleetbus-{tier.value}", "static_configs": [{"targets": targets}]})
    config = {"global": {"scrape_interval": "15s", "evaluation_interval": "15s"}, "scrape_configs": jobs}
    return GENERATED + yaml.safe_dump(config, sort_keys=False)


GENERATED = "# Generated by `fleetbus compose`: edit fleetbus/deploy/compose.py, not this file.\n"
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


def render_compose() -> tuple[str, dict[str, str]]:
    """(docker-compose.yml text, {path: text} of every file it mounts: nats-server configs,
    Prometheus config, Grafana provisioning and dashboard)."""
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    configs: dict[str, str] = {}
    fleet = sites()
    for spec, region, upstream in fleet:
        services |= _services(spec, region, upstream)
        volumes |= {f"{spec.name}-jetstream": {}, f"{spec.name}-state": {}}
        configs[f"{CONFIG_DIR}/{spec.name}.conf"] = render(spec, listen_host="0.0.0.0")
    services |= _monitoring()
    volumes |= {"prometheus-data": {}, "grafana-data": {}}
    configs["deploy/prometheus/prometheus.yml"] = _prometheus_config(fleet)
    configs["deploy/grafana/provisioning/datasources/prometheus.yml"] = GENERATED + yaml.safe_dump(
        GRAFANA_DATASOURCE, sort_keys=False
    )
    configs["deploy/grafana/provisioning/dashboards/fleetbus.yml"] = GENERATED + yaml.safe_dump(
        GRAFANA_DASHBOARDS, sort_keys=False
    )
    configs["deploy/grafana/fleetbus.json"] = json.dumps(grafana.dashboard(), indent=2) + "\n"
    header = (
        "# A fleetbus dev fleet in containers: hub, 2 regionals, 3 edges; each site is the\n"
        "# official nats image plus a fleetbus daemon. Generated by `fleetbus compose render`\n"
        "# from the same code as `fleetbus dev up`: edit that, not this file.\n"
        "# `docker compose up`; with Prometheus and Grafana: `docker compose --profile monitoring up`.\n"
        "# INSECURE for now: these servers run without identities or permissions (unlike\n"
        "# `fleetbus dev up`); keep them off any network others reach. docs/security.md#not-built-yet\n"
    )
    body = yaml.safe_dump({"services": services, "volumes": volumes}, sort_keys=False, width=120)
    return header + body, configs


def write_compose(root: Path) -> list[Path]:
    text, configs = render_compose()
    written = [root / "docker-compose.yml"]
    written[0].write_text(text)
    for rel, config in configs.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config)
        written.append(path)
    return written
