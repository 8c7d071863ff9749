"""docker-compose.yml and what it mounts are generated, current, valid for docker-compose and
nats-server, and the same fleet as `fleetbus dev` renders."""

import itertools
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fleetbus.deploy import grafana
from fleetbus.deploy.compose import (
    DAEMON_HTTP,
    EDGE_COUNTS,
    PRIVATE_DIR,
    compose_plan,
    init_compose,
    render_compose,
    sites,
)
from fleetbus.devfleet import identities
from fleetbus.devfleet.natsconf import Authorization, render
from fleetbus.devfleet.plan import FleetPlan, plan_fleet
from fleetbus.devfleet.servers import find_binary
from fleetbus.runtime import identity
from tests.helpers import ROOT, require_tool
from tests.test_metrics import documented


def test_committed_compose_files_are_current():
    text, configs = render_compose()
    assert (ROOT / "docker-compose.yml").read_text() == text, "run `fleetbus compose render` and commit"
    for rel, config in configs.items():
        assert (ROOT / rel).read_text() == config, f"{rel} is stale: run `fleetbus compose render` and commit"


def _site_configs(root: Path) -> dict[str, str]:
    """Each site's nats-server config, as `fleetbus compose init` wrote it under `root`."""
    return {p.parent.name: p.read_text() for p in (root / PRIVATE_DIR / "sites").glob("*/nats-server.conf")}


def test_nats_configs_are_valid_for_nats_server(tmp_path):
    # With this machine's paths (the containers' do not exist here), so every file is checked.
    init_compose(tmp_path, in_containers=False)
    confs = _site_configs(tmp_path)
    assert len(confs) == 1 + len(EDGE_COUNTS) + sum(EDGE_COUNTS)
    for site, config in confs.items():
        path = tmp_path / PRIVATE_DIR / "sites" / site / "nats-server.conf"
        assert path.read_text() == config
        result = subprocess.run(
            [str(find_binary()), "-t", "-c", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, (site, result.stderr)


def docker_compose_config(*args: str) -> dict[str, Any]:
    binary = require_tool("/usr/bin/docker-compose", "docker-compose")
    result = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), *args, "config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, as docker-compose 1.29 normalises them
    (`SOURCE:TARGET:MODE`; an absolute source is a bind mount)."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out.append((volume["source"], volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            out.append((source, target))
    return out


def test_docker_compose_accepts_the_file_with_and_without_monitoring(tmp_path):
    init_compose(tmp_path)  # what the file mounts from deploy/compose/ (not committed)
    plain = docker_compose_config()
    monitored = docker_compose_config("--profile", "monitoring")
    daemons = sorted(n for n in plain["services"] if n.startswith("fleetbus-"))
    expected = ["hub", "r1", "r1-e1", "r1-e2", "r2", "r2-e1"]
    assert daemons == [f"fleetbus-{s}" for s in expected]
    assert sorted(n for n in plain["services"] if n.startswith("nats-")) == [f"nats-{s}" for s in expected]
    assert {"prometheus", "grafana"} <= set(monitored["services"])
    for name, service in monitored["services"].items():
        if name.startswith(("nats-", "fleetbus-")):
            assert "healthcheck" in service, name
        for source, _target in mounts(service):
            private = str(ROOT / PRIVATE_DIR)
            if source.startswith(private):  # made by `fleetbus compose init`
                there = Path(str(tmp_path / PRIVATE_DIR) + source.removeprefix(private))
                assert there.exists(), (name, source)
            elif source.startswith("/"):  # a bind mount: the file is in the repository
                assert Path(source).exists(), (name, source)
            else:
                assert source in monitored["volumes"], (name, source)
    for site in expected:  # JetStream data lives in a named volume per site
        targets = {t: s for s, t in mounts(monitored["services"][f"nats-{site}"])}
        assert targets["/data/jetstream"] == f"{site}-jetstream"
    assert monitored["services"]["grafana"]["profiles"] == ["monitoring"]


def _topology(configs: dict[str, str], site_of: Callable[[str, int], str]) -> dict[str, dict[str, Any]]:
    """Per site, from its rendered nats-server config: domain, listeners, leaf remotes (as
    the sites they reach)."""
    out = {}
    for site, text in configs.items():
        domain = re.search(r'domain: "([^"]+)"', text)
        remotes = re.findall(r'urls: \["nats-leaf://([^:"]+):(\d+)"\]', text)
        out[site] = {
            "server_name": re.search(r'server_name: "([^"]+)"', text).group(1),  # type: ignore[union-attr]
            "domain": domain.group(1) if domain else None,
            "leaf_listen": bool(re.search(r"leafnodes \{\n  listen:", text)),
            "mqtt": "mqtt {" in text,
            "http": bool(re.search(r'^http: "', text, flags=re.MULTILINE)),
            "upstream": [site_of(host, int(port)) for host, port in remotes],
        }
    return out


def test_compose_topology_matches_what_fleetbus_dev_renders(tmp_path):
    ports = itertools.count(20000)
    plan = plan_fleet(tmp_path, len(EDGE_COUNTS), 0, ports, mqtt=True, links=True, edge_counts=EDGE_COUNTS)
    by_leaf = {s.server.leaf_port: s.name for s in plan.sites if s.server.leaf_port}
    by_link = {link.port: by_leaf[link.target] for s in plan.sites for link in s.links}

    def dev_site(_host: str, port: int) -> str:
        return by_leaf.get(port) or by_link[port]  # straight to the leaf port, or via a link proxy

    dev = _topology({s.name: render(s.server) for s in plan.sites}, dev_site)

    init_compose(tmp_path / "compose")
    compose_confs = _site_configs(tmp_path / "compose")
    compose = _topology(compose_confs, lambda host, _port: host.removeprefix("nats-"))

    assert compose == dev
    assert compose["r1-e2"]["upstream"] == ["r1"]
    assert compose["r2"]["upstream"] == ["hub"]
    assert compose["hub"]["domain"] == "hub"

    # Ports: each site's daemon serves /metrics; the hub also its dashboard, as in the dev plan.
    services = yaml.safe_load(render_compose()[0])["services"]
    for site in sites():
        env = services[f"fleetbus-{site.spec.name}"]["environment"]
        assert env["FLEETBUS_HTTP_PORT"] == str(DAEMON_HTTP)
        assert env["FLEETBUS_NATS_URL"] == f"nats://nats-{site.spec.name}:4222"
        assert ("FLEETBUS_DASHBOARD_PORT" in env) == (plan.site(site.spec.name).dashboard_port is not None)
    assert "127.0.0.1:8080:8080" in services["fleetbus-hub"]["ports"]


def _auth_shape(plan: FleetPlan) -> dict[str, dict[str, Any]]:
    """Per site, who its server admits with which rights, and what of TLS it runs; keys left
    out (each fleet has its own)."""

    def shape(auth: Authorization | None) -> dict[str, Any]:
        assert auth is not None
        return {
            "users": sorted(
                (u.who, u.name or "", bool(u.nkey), repr(u.permissions), u.connection_types)
                for u in auth.users
            ),
            "leaf_key": auth.leaf_seed is not None,
            "tls": auth.tls is not None,
            "client_tls": auth.client_tls,
            "mqtt_anonymous": auth.mqtt_anonymous,
            "admits": sorted(auth.admission or {}),
            "devices": auth.devices,
            "issuers": len(auth.enroll_issuers),
            "system": auth.system_nkey is not None,
        }

    return {s.name: shape(s.server.auth) for s in plan.sites}


def test_compose_has_the_identities_and_permissions_of_the_dev_fleet(tmp_path):
    """`compose init` secures the containers as `dev up --client-tls` secures the dev fleet
    (one code path: `identities.secure`), and what it renders carries every identity."""
    root = tmp_path / "compose"
    init_compose(root)
    compose = identities.secure(compose_plan(root), client_tls=True)  # the keys init made
    ports = itertools.count(21000)
    dev_plan = plan_fleet(
        tmp_path / "dev", len(EDGE_COUNTS), 0, ports, mqtt=True, links=True, edge_counts=EDGE_COUNTS
    )
    dev = identities.secure(dev_plan, client_tls=True)
    assert _auth_shape(compose) == _auth_shape(dev)
    regional = _auth_shape(compose)["r1"]
    assert regional["admits"] == ["r1-e1", "r1-e2"]
    assert regional["client_tls"]
    # Each site's files hold every public key its server admits, and its own seed only.
    configs = _site_configs(root)
    for site in compose.sites:
        auth = site.server.auth
        assert auth is not None
        text = configs[site.name]
        users = root / PRIVATE_DIR / "sites" / site.name / "admission" / "users.conf"
        if users.exists():
            text += users.read_text()
        for user in auth.users:
            assert user.nkey is None or user.nkey in text, (site.name, user.who)
        for edge, key in (auth.admission or {}).items():
            assert key in text, (site.name, edge)
        seeds = set(re.findall(r'nkey: "(S[A-Z0-9]+)"', text))
        assert seeds == ({identity.load(site.creds_path).seed()} if site.upstream else set())
        assert "\ntls {" in text, site.name  # the client port takes only TLS


def test_prometheus_scrapes_every_daemon_and_grafana_charts_every_documented_metric():
    _, configs = render_compose()
    prometheus = yaml.safe_load(configs["deploy/prometheus/prometheus.yml"])
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"fleetbus-{s.spec.name}:{DAEMON_HTTP}" for s in sites()}

    used = {m for expr in grafana.expressions() for m in re.findall(r"\bfleetbus_\w+", expr)}
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in used}
    assert used == documented(), (
        f"charted, not documented: {sorted(used - documented())}; "
        f"documented, not charted: {sorted(documented() - used)}"
    )
    dashboard = grafana.dashboard()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
