"""docker-compose.yml and what it mounts are generated, current, valid for docker-compose and
nats-server, and the same fleet as `fleetbus dev` renders."""

import itertools
import re
import subprocess
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from fleetbus.deploy import grafana
from fleetbus.deploy.compose import (
    DAEMON_HTTP,
    EDGE_COUNTS,
    HA_NODES,
    SITE_MOUNT,
    compose_file,
    compose_plan,
    init_compose,
    private_dir,
    prometheus_file,
    render_compose,
    sites,
)
from fleetbus.devfleet import identities
from fleetbus.devfleet.natsconf import Authorization, render
from fleetbus.devfleet.plan import FleetPlan, SitePlan, plan_fleet
from fleetbus.devfleet.servers import find_binary
from fleetbus.runtime import identity
from tests.helpers import ROOT, require_tool
from tests.test_metrics import documented

HUBS = pytest.mark.parametrize("hub_nodes", [1, HA_NODES], ids=["hub", "hub-3-nodes"])


@HUBS
def test_committed_compose_files_are_current(hub_nodes):
    text, configs = render_compose(hub_nodes)
    stale = "is stale: run `fleetbus compose render` and commit"
    assert (ROOT / compose_file(hub_nodes)).read_text() == text, f"{compose_file(hub_nodes)} {stale}"
    for rel, config in configs.items():
        assert (ROOT / rel).read_text() == config, f"{rel} {stale}"


def _config_paths(root: Path, hub_nodes: int = 1) -> dict[str, Path]:
    """Each server's nats-server config (by its server_name), as `fleetbus compose init` wrote
    it under `root`: a site's, or a clustered site's node's below it."""
    sites_dir = root / private_dir(hub_nodes) / "sites"
    return {
        p.parent.name: p
        for p in [*sites_dir.glob("*/nats-server.conf"), *sites_dir.glob("*/*/nats-server.conf")]
    }


def _site_configs(root: Path, hub_nodes: int = 1) -> dict[str, str]:
    return {name: path.read_text() for name, path in _config_paths(root, hub_nodes).items()}


@HUBS
def test_nats_configs_are_valid_for_nats_server(tmp_path, hub_nodes):
    # With this machine's paths (the containers' do not exist here), so every file is checked.
    init_compose(tmp_path, hub_nodes=hub_nodes, in_containers=False)
    paths = _config_paths(tmp_path, hub_nodes)
    assert len(paths) == hub_nodes + len(EDGE_COUNTS) + sum(EDGE_COUNTS)
    for site, path in paths.items():
        result = subprocess.run(
            [str(find_binary()), "-t", "-c", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, (site, result.stderr)


def docker_compose_config(*args: str, hub_nodes: int = 1) -> dict[str, Any]:
    binary = require_tool("/usr/bin/docker-compose", "docker-compose")
    result = subprocess.run(
        [binary, "-f", str(ROOT / compose_file(hub_nodes)), *args, "config"],
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


@HUBS
def test_docker_compose_accepts_the_file_with_and_without_monitoring(tmp_path, hub_nodes):
    init_compose(tmp_path, hub_nodes=hub_nodes)  # what the file mounts from deploy/compose*/ (not committed)
    plain = docker_compose_config(hub_nodes=hub_nodes)
    monitored = docker_compose_config("--profile", "monitoring", hub_nodes=hub_nodes)
    daemons = sorted(n for n in plain["services"] if n.startswith("fleetbus-"))
    hubs = ["hub"] if hub_nodes == 1 else [f"hub-n{n}" for n in range(1, hub_nodes + 1)]
    expected = [*hubs, "r1", "r1-e1", "r1-e2", "r2", "r2-e1"]
    assert daemons == [f"fleetbus-{s}" for s in expected]
    assert sorted(n for n in plain["services"] if n.startswith("nats-")) == [f"nats-{s}" for s in expected]
    assert {"prometheus", "grafana"} <= set(monitored["services"])
    for name, service in monitored["services"].items():
        if name.startswith(("nats-", "fleetbus-")):
            assert "healthcheck" in service, name
        for source, _target in mounts(service):
            private = str(ROOT / private_dir(hub_nodes))
            if source.startswith(private):  # made by `fleetbus compose init`
                there = Path(str(tmp_path / private_dir(hub_nodes)) + source.removeprefix(private))
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
    """Per server, from its rendered nats-server config: domain, listeners, leaf remotes and
    cluster routes (as the servers they reach)."""
    out = {}
    for site, text in configs.items():
        domain = re.search(r'domain: "([^"]+)"', text)
        urls = re.search(r"urls: \[([^\]]*)\]", text)
        remotes = re.findall(r'nats-leaf://([^:"]+):(\d+)"', urls.group(1)) if urls else []
        routes = re.findall(r'nats-route://(?:[^@"]+@)?([^:"]+):(\d+)"', text)
        out[site] = {
            "server_name": re.search(r'server_name: "([^"]+)"', text).group(1),  # type: ignore[union-attr]
            "domain": domain.group(1) if domain else None,
            "leaf_listen": bool(re.search(r"leafnodes \{\n  listen:", text)),
            "mqtt": "mqtt {" in text,
            "http": bool(re.search(r'^http: "', text, flags=re.MULTILINE)),
            "upstream": [site_of(host, int(port)) for host, port in remotes],
            "routes": [site_of(host, int(port)) for host, port in routes],
        }
    return out


def _dev_plan(state_dir: Path, first_port: int, hub_nodes: int) -> FleetPlan:
    """What `fleetbus dev up` plans for the compose fleet's sites (with link proxies)."""
    ports = itertools.count(first_port)
    return plan_fleet(
        state_dir,
        len(EDGE_COUNTS),
        0,
        ports,
        mqtt=True,
        links=True,
        edge_counts=EDGE_COUNTS,
        hub_nodes=hub_nodes,
    )


@HUBS
def test_compose_topology_matches_what_fleetbus_dev_renders(tmp_path, hub_nodes):
    plan = _dev_plan(tmp_path, 20000, hub_nodes)
    by_port = {s.server.leaf_port: s.key for s in plan.sites if s.server.leaf_port}
    by_port |= {link.port: by_port[link.target] for s in plan.sites for link in s.links}
    by_port |= {s.server.cluster.port: s.key for s in plan.sites if s.server.cluster}
    # Straight to a leaf or route port, or through a link proxy.
    dev = _topology({s.key: render(s.server) for s in plan.sites}, lambda _host, port: by_port[port])

    init_compose(tmp_path / "compose", hub_nodes=hub_nodes)
    compose_confs = _site_configs(tmp_path / "compose", hub_nodes)
    compose = _topology(compose_confs, lambda host, _port: host.removeprefix("nats-"))

    assert compose == dev
    hubs = [s.key for s in plan.nodes("hub")]
    assert compose["r1-e2"]["upstream"] == ["r1"]
    assert compose["r2"]["upstream"] == hubs
    assert {compose[hub]["domain"] for hub in hubs} == {"hub"}
    assert all(compose[hub]["routes"] == (hubs if hub_nodes > 1 else []) for hub in hubs)

    # Ports: each daemon serves /metrics; the hub's also its dashboard, as in the dev plan; a
    # clustered hub's daemon dials its own node first, then the others.
    services = yaml.safe_load(render_compose(hub_nodes)[0])["services"]
    for site in sites(hub_nodes):
        env = services[f"fleetbus-{site.key}"]["environment"]
        assert env["FLEETBUS_HTTP_PORT"] == str(DAEMON_HTTP)
        nodes = [site.key, *(n.key for n in plan.nodes(site.name) if n.key != site.key)]
        assert env["FLEETBUS_NATS_URL"] == ",".join(f"nats://nats-{n}:4222" for n in nodes)
        assert ("FLEETBUS_DASHBOARD_PORT" in env) == (plan.site(site.key).dashboard_port is not None)
    for n, hub in enumerate(hubs):
        assert f"127.0.0.1:{8080 + n}:8080" in services[f"fleetbus-{hub}"]["ports"]
        assert f"127.0.0.1:{4222 + n}:4222" in services[f"nats-{hub}"]["ports"]
        config = services[f"nats-{hub}"]["command"][-1]  # in the site's mounted directory
        site_dir = tmp_path / "compose" / private_dir(hub_nodes) / "sites" / "hub"
        assert (site_dir / PurePosixPath(config).relative_to(SITE_MOUNT)).exists(), config


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

    def route_login(site: SitePlan) -> bool | None:
        cluster = site.server.cluster
        return None if cluster is None else bool(cluster.user and cluster.password)

    return {s.key: shape(s.server.auth) | {"route_login": route_login(s)} for s in plan.sites}


@HUBS
def test_compose_has_the_identities_and_permissions_of_the_dev_fleet(tmp_path, hub_nodes):
    """`compose init` secures the containers as `dev up --client-tls` secures the dev fleet
    (one code path: `identities.secure`), and what it renders carries every identity."""
    root = tmp_path / "compose"
    init_compose(root, hub_nodes=hub_nodes)
    compose = identities.secure(compose_plan(root, hub_nodes), client_tls=True)  # the keys init made
    dev = identities.secure(_dev_plan(tmp_path / "dev", 21000, hub_nodes), client_tls=True)
    assert _auth_shape(compose) == _auth_shape(dev)
    regional = _auth_shape(compose)["r1"]
    assert regional["admits"] == ["r1-e1", "r1-e2"]
    assert regional["client_tls"]
    # Each site's files hold every public key its server admits, and its own seed only.
    configs = _site_configs(root, hub_nodes)
    for site in compose.sites:
        auth = site.server.auth
        assert auth is not None
        text = configs[site.key]
        users = site.workdir / "admission" / "users.conf"
        if users.exists():
            text += users.read_text()
        for user in auth.users:
            assert user.nkey is None or user.nkey in text, (site.name, user.who)
        for edge, key in (auth.admission or {}).items():
            assert key in text, (site.name, edge)
        seeds = set(re.findall(r'nkey: "(S[A-Z0-9]+)"', text))
        assert seeds == ({identity.load(site.creds_path).seed()} if site.upstream else set())
        assert "\ntls {" in text, site.name  # the client port takes only TLS


@HUBS
def test_prometheus_scrapes_every_daemon_and_grafana_charts_every_documented_metric(hub_nodes):
    _, configs = render_compose(hub_nodes)
    prometheus = yaml.safe_load(configs[prometheus_file(hub_nodes)])
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"fleetbus-{s.key}:{DAEMON_HTTP}" for s in sites(hub_nodes)}

    used = {m for expr in grafana.expressions() for m in re.findall(r"\bfleetbus_\w+", expr)}
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in used}
    assert used == documented(), (
        f"charted, not documented: {sorted(used - documented())}; "
        f"documented, not charted: {sorted(documented() - used)}"
    )
    dashboard = grafana.dashboard()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
