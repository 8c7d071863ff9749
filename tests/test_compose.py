"""docker-compose.yml and its nats configs are generated, current, and valid for nats-server."""

import subprocess

import yaml

from fleetbus.compose import render_compose
from fleetbus.servers import find_binary
from tests.helpers import ROOT


def test_committed_compose_files_are_current():
    text, configs = render_compose()
    assert (ROOT / "docker-compose.yml").read_text() == text, "run `fleetbus compose` and commit"
    for rel, config in configs.items():
        assert (ROOT / rel).read_text() == config, f"{rel} is stale: run `fleetbus compose` and commit"


def test_compose_fleet_shape_and_configs_are_valid(tmp_path):
    text, configs = render_compose()
    services = yaml.safe_load(text)["services"]
    daemons = sorted(name for name in services if name.startswith("fleetbus-"))
    assert daemons == [
        "fleetbus-hub",
        "fleetbus-r1",
        "fleetbus-r1-e1",
        "fleetbus-r1-e2",
        "fleetbus-r2",
        "fleetbus-r2-e1",
    ]
    for name, service in services.items():
        assert "healthcheck" in service, name
    for rel, config in configs.items():
        path = tmp_path / rel.replace("/", "_")
        path.write_text(config)
        result = subprocess.run(
            [str(find_binary()), "-t", "-c", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, (rel, result.stderr)
