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
from fleetbus.deploy.compose import DAEMON_HTTP, EDGE_COUNTS, render_compose, sites
from fleetbus.devfleet.natsconf import render
from fleetbus.devfleet.plan import plan_fleet
from fleetbus.devfleet.servers import find_binary
from tests.helpers import ROOT, require_tool
from tests.test_metrics import documented


def test_committed_compose_files_are_current():
    text, configs = render_compose()
    assert (ROOT / "docker-compose.yml").read_text() == text, "run `fleetbus compose` and commit"
    for rel, config in configs.items():
        assert (ROOT / rel).read_text() == config, f"{rel} is stale: run `fleetbus compose` and commit"


def test_nats_configs_are_valid_for_nats_server(tmp_path):
    _, configs = render_compose()
    confs = {rel: text for rel, text in configs.items() if rel.endswith(".conf")}
    assert len(confs) == 1 + len(EDGE_COUNTS) + sum(EDGE_COUNTS)
    for rel, config in confs.items():
        path = tmp_path / rel.replace("/", "_")
        path.write_text(config)
        result = subprocess.run(
            [str(find_binary()), "-t", "-c", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, (rel, result.stderr)


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


def test_docker_compose_accepts_the_file_with_and_without_monitoring():
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
            if source.startswith("/"):  # a bind mount: the file is in the repository
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
    by_link = {s.link_port: by_leaf[s.link_target] for s in plan.sites if s.link_port and s.link_target}

    def dev_site(_host: str, port: int) -> str:
        return by_leaf.get(port) or by_link[port]  # straight to the leaf port, or via a link proxy

    dev = _topology({s.name: render(s.server) for s in plan.sites}, dev_site)

    _, configs = render_compose()
    compose_confs = {Path(rel).stem: text for rel, text in configs.items() if rel.endswith(".conf")}
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
