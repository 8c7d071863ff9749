"""`fleetbus dev up|status|down` as a user runs them: real processes, real signals, real PIDs."""

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import nats
import pytest

from fleetbus.devfleet.state import FleetRecord, pid_alive
from fleetbus.netutil import http_get
from tests.helpers import FLEETBUS, ROOT, cli_env, processes_mentioning, run_cli, wait_until

pytestmark = pytest.mark.slow


def start_in_group(argv: list[str]) -> subprocess.Popen[str]:
    # Own process group, so the test can send Ctrl-C the way a terminal does (to the group).
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
        cwd=ROOT,
        start_new_session=True,
    )


def start_up(state_dir: Path, *args: str) -> subprocess.Popen[str]:
    return start_in_group([*FLEETBUS, "dev", "up", "--state-dir", str(state_dir), *args])


def wait_healthy(state_dir: Path, up: subprocess.Popen[str]) -> dict:
    def healthy() -> dict | None:
        if up.poll() is not None:
            raise AssertionError(f"dev up exited {up.returncode}: {up.stdout.read() if up.stdout else ''}")
        result = run_cli("dev", "status", "--json", "--state-dir", str(state_dir))
        return json.loads(result.stdout) if result.returncode == 0 else None

    return wait_until(healthy, timeout=120, what="every site healthy")  # type: ignore[return-value]


async def all_health_urls_answer(record: FleetRecord) -> None:
    for site in record.sites:
        for url in (site.server_health_url, site.daemon_health_url):
            status, _ = await http_get(url)
            assert status == 200, (site.name, url)


def ctrl_c(up: subprocess.Popen[str]) -> str:
    os.killpg(up.pid, signal.SIGINT)
    output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    return output


def test_dev_fleet_up_status_ctrl_c_restart_keeps_data_and_down(tmp_path: Path):
    state_dir = tmp_path / "fleet"
    up = start_up(state_dir, "--heartbeat-interval", "0.5")
    try:
        status = wait_healthy(state_dir, up)
        assert len(status["sites"]) == 1 + 2 + 2 * 3  # the default: 2 regions x 3 edges
        assert status["ready"]
        assert all(s["healthy"] for s in status["sites"])
        record = FleetRecord.load(state_dir)
        assert record is not None
        asyncio.run(all_health_urls_answer(record))
        pids = [p for s in record.sites for p in (s.server_pid, s.daemon_pid)]
        assert all(pid_alive(p) for p in pids)
        assert len(processes_mentioning(str(state_dir))) >= len(pids)

        # CLI commands find the hub through the state dir, with no configuration.
        info = run_cli("info", "--state-dir", str(state_dir))
        assert info.returncode == 0, info.stderr
        assert "domain 'hub'" in info.stdout
        assert "inventory, overrides, presence, profiles, regions" in info.stdout

        async def put_probe() -> int:
            nc = await nats.connect(record.hub.client_url)
            try:
                kv = await nc.jetstream().key_value("profiles")
                return await kv.put("probe", b"kept across restarts")
            finally:
                await nc.close()

        revision = asyncio.run(put_probe())
        output = ctrl_c(up)
        assert "dev fleet stopped" in output
        # Nothing is left behind: not by recorded PID, not by anything mentioning the state dir.
        assert [p for p in [*pids, record.supervisor_pid] if pid_alive(p)] == []
        assert processes_mentioning(str(state_dir)) == []
        assert not (state_dir / "fleet.json").exists()

        # A second `up` on the same state dir keeps the JetStream data.
        up = start_up(state_dir, "--regions", "1", "--edges", "1")
        wait_healthy(state_dir, up)
        record = FleetRecord.load(state_dir)
        assert record is not None

        async def read_probe() -> tuple[bytes, int]:
            nc = await nats.connect(record.hub.client_url)
            try:
                entry = await (await nc.jetstream().key_value("profiles")).get("probe")
                return entry.value or b"", entry.revision or 0
            finally:
                await nc.close()

        assert asyncio.run(read_probe()) == (b"kept across restarts", revision)

        # A second `up` while one runs is refused, and changes nothing.
        again = run_cli("dev", "up", "--state-dir", str(state_dir))
        assert again.returncode == 2
        assert "already running" in again.stderr

        # `down` from another terminal stops everything.
        down = run_cli("dev", "down", "--state-dir", str(state_dir))
        assert down.returncode == 0, down.stderr
        up.communicate(timeout=30)
        assert up.returncode == 0
        assert processes_mentioning(str(state_dir)) == []
        assert run_cli("dev", "status", "--state-dir", str(state_dir)).returncode == 1
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def test_make_dev_brings_up_the_default_fleet_and_ctrl_c_leaves_nothing(tmp_path: Path):
    """The README's first command, as typed: `make dev`, then Ctrl-C in the terminal."""
    state_dir = tmp_path / "make-dev"
    make = start_in_group(["make", "--no-print-directory", "dev", f"ARGS=--state-dir {state_dir}"])
    try:
        status = wait_healthy(state_dir, make)
        assert len(status["sites"]) == 9
        record = FleetRecord.load(state_dir)
        assert record is not None
        asyncio.run(all_health_urls_answer(record))
        pids = [p for s in record.sites for p in (s.server_pid, s.daemon_pid)]
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        output, _ = make.communicate(timeout=60)
        assert "dev fleet stopped" in output
        assert [p for p in [*pids, record.supervisor_pid] if pid_alive(p)] == []
        assert processes_mentioning(str(state_dir)) == []
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
