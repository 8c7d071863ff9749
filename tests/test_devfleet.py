"""`fleetbus dev up|status|down` as a user runs them: real processes, real signals, real PIDs."""

import asyncio
import json
import os
import signal
import ssl
import subprocess
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import nats
import pytest

from fleetbus.devfleet import identities
from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.state import FleetRecord, pid_alive
from fleetbus.sdk.client import FleetClient
from schemas.profile import Profile, ProfileSpec
from tests.helpers import FLEETBUS, cli_env, processes_mentioning, run_cli, start_in_group, wait_until

pytestmark = pytest.mark.slow


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

        # Every URL of every site, whole, on a line of its own at 80 columns (table and JSON).
        as_table = run_cli("dev", "status", "--state-dir", str(state_dir), env=cli_env(COLUMNS="80"))
        urls = urls_in(status)
        assert len(urls) == 9 * 3 + 6 + 1  # nats, monitoring, daemon per site; mqtt per edge; dashboard
        assert_each_on_a_line(urls, as_table.stdout)
        assert max(map(len, as_table.stdout.splitlines())) <= 80

        # CLI commands find the hub through the state dir, with no configuration.
        info = run_cli("info", "--state-dir", str(state_dir))
        assert info.returncode == 0, info.stderr
        assert "domain 'hub'" in info.stdout
        listed = " ".join(info.stdout.split()).split("buckets: ")[1]  # as wrapped at 80 columns
        assert {"inventory", "overrides", "presence", "profiles", "regions", "leases"} <= set(
            listed.split(", ")
        )
        assert_dev_creds_work(state_dir)

        async def put_probe() -> int:
            async with await FleetClient.connect(
                record.hub.client_url, creds=identities.operator_creds(Path(record.state_dir))
            ) as client:  # through the hub's desk: only the hub writes desired state
                plan = await client.profiles.apply(
                    Profile(name="probe", spec=ProfileSpec(config={"kept": "across restarts"})),
                    reason="probe",
                )
                return plan.new.revision or 0

        revision = asyncio.run(put_probe())
        output = ctrl_c(up)
        assert "dev fleet stopped" in output
        assert_each_on_a_line(urls, output)  # `dev up` printed them the same way
        # Nothing is left behind: not by recorded PID, not by anything mentioning the state dir.
        assert [p for p in [*pids, record.supervisor_pid] if pid_alive(p)] == []
        assert processes_mentioning(str(state_dir)) == []
        assert not (state_dir / "fleet.json").exists()

        # A second `up` on the same state dir keeps the JetStream data.
        up = start_up(state_dir, "--regions", "1", "--edges", "1")
        wait_healthy(state_dir, up)
        record = FleetRecord.load(state_dir)
        assert record is not None

        async def read_probe() -> tuple[dict[str, object], int]:
            async with await FleetClient.connect(
                record.hub.client_url, creds=identities.operator_creds(Path(record.state_dir))
            ) as client:
                probe = await client.profiles.get("probe")
                return probe.spec.config, probe.revision or 0

        assert asyncio.run(read_probe()) == ({"kept": "across restarts"}, revision)

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


def assert_dev_creds_work(state_dir: Path) -> None:
    """`dev creds` gives a dashboard builder a key that reads, and a site's key for its server."""
    sd = ("--state-dir", str(state_dir))
    viewer = json.loads(run_cli("dev", "creds", "--viewer", "--json", *sd).stdout)
    assert viewer["ca"] is None

    async def read_as_viewer() -> list[str]:
        nc = await nats.connect(viewer["url"], nkeys_seed=viewer["nkey"], allow_reconnect=False)
        try:
            return [s.config.name for s in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    assert "KV_profiles" in asyncio.run(read_as_viewer())
    edge = run_cli("dev", "creds", "r1-e1", *sd)
    assert edge.returncode == 0, edge.stderr
    assert "identity/site.nk" in edge.stdout
    unknown = run_cli("dev", "creds", "nosuch", *sd)
    assert unknown.returncode == 2
    assert "sites: hub, r1" in unknown.stderr


def test_insecure_dev_fleet_warns_and_needs_no_key(tmp_path: Path):
    state_dir = tmp_path / "insecure"
    up = start_up(state_dir, "--regions", "1", "--edges", "1", "--insecure")
    try:
        wait_healthy(state_dir, up)
        record = FleetRecord.load(state_dir)
        assert record is not None
        assert record.insecure

        async def anonymous_info() -> str:
            nc = await nats.connect(record.hub.client_url, allow_reconnect=False)
            try:
                return (await nc.jetstream().account_info()).domain or ""
            finally:
                await nc.close()

        assert asyncio.run(anonymous_info()) == "hub"
        status = run_cli("dev", "status", "--state-dir", str(state_dir))
        assert "INSECURE" in status.stderr
        creds = run_cli("dev", "creds", "--operator", "--state-dir", str(state_dir))
        assert creds.returncode == 2
        assert "--insecure" in creds.stderr
        output = ctrl_c(up)
        assert "INSECURE" in output
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def leaf_connections(monitoring_url: str) -> int:
    status, body = asyncio.run(http_get(monitoring_url + "/leafz"))
    assert status == 200
    return int(json.loads(body)["leafnodes"])


def urls_in(status: dict[str, Any]) -> list[str]:
    keys = ("client_url", "server_health_url", "daemon_health_url", "mqtt_url", "dashboard_url")
    found = [s[k] for s in status["sites"] for k in keys if s.get(k)]
    return [u.split("/healthz")[0] if "/healthz" in u else u for u in found]


def assert_each_on_a_line(urls: list[str], text: str) -> None:
    words = {line.split()[1] for line in text.splitlines() if len(line.split()) > 1}
    assert set(urls) - words == set(), text


def test_version_and_shell_completion():
    version = run_cli("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"fleetbus {package_version('fleetbus')}"
    # What `eval "$(fleetbus --show-completion)"` installs runs this; `--show-completion` itself
    # detects the shell from the parent processes, which a test run may not have.
    completion = run_cli(env={**cli_env(), "_FLEETBUS_COMPLETE": "source_bash"})
    assert completion.returncode == 0, completion.stderr
    assert "complete" in completion.stdout
    assert "_FLEETBUS_COMPLETE" in completion.stdout


def test_dev_link_kill_restart_from_another_terminal(tmp_path: Path):
    """Fault controls as a user types them, each checked by its effect on the real fleet."""
    state_dir = tmp_path / "faults"
    up = start_up(state_dir, "--regions", "1", "--edges", "1", "--heartbeat-interval", "0.5")
    sd = ("--state-dir", str(state_dir))
    try:
        wait_healthy(state_dir, up)
        record = FleetRecord.load(state_dir)
        assert record is not None
        edge = next(s for s in record.sites if s.name == "r1-e1")
        edge_monitor = edge.server_health_url.split("/healthz")[0]
        assert leaf_connections(edge_monitor) == 1

        cut = run_cli("dev", "link", "cut", "r1-e1", *sd)
        assert cut.returncode == 0, cut.stderr
        assert "r1-e1" in cut.stdout
        assert "cut" in cut.stdout
        wait_until(lambda: leaf_connections(edge_monitor) == 0, what="edge leaf link down")
        heal = run_cli("dev", "link", "heal", "r1-e1", *sd)
        assert heal.returncode == 0, heal.stderr
        wait_until(lambda: leaf_connections(edge_monitor) == 1, timeout=30, what="edge leaf link back")

        # A blackhole: the link looks up to both servers (no reset), but nothing passes.
        holed = run_cli("dev", "link", "blackhole", "r1-e1", *sd)
        assert holed.returncode == 0, holed.stderr
        assert "blackhole" in holed.stdout
        assert leaf_connections(edge_monitor) == 1  # still connected, as far as it knows
        heal = run_cli("dev", "link", "heal", "r1-e1", *sd)
        assert heal.returncode == 0, heal.stderr
        assert "blackhole" not in run_cli("dev", "link", "show", *sd).stdout

        shaped = run_cli("dev", "link", "delay", "120", "r1", *sd)
        assert shaped.returncode == 0, shaped.stderr
        shaped = run_cli("dev", "link", "throttle", "256", "r1", *sd)
        assert shaped.returncode == 0, shaped.stderr
        show = run_cli("dev", "link", "show", *sd)
        row = next(line for line in show.stdout.splitlines() if line.strip("│ ").startswith("r1 "))
        assert row.split() == ["│", "r1", "│", "up", "│", "120", "│", "256", "│", "1", "│"], show.stdout

        # Bad input: named, exit 2, nothing changed.
        for args, message in (
            (("link", "cut", "hub"), "has no uplink"),
            (("link", "cut", "r9-e9"), "no site 'r9-e9'"),
            (("kill", "nowhere"), "no site 'nowhere'"),
            (("link", "delay", "-5", "r1"), "-5"),
        ):
            bad = run_cli("dev", *args, *sd)
            assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
            assert message in bad.stderr + bad.stdout, (args, bad.stderr)
        assert leaf_connections(edge_monitor) == 1

        # kill: SIGKILL, and the site stays down until restart.
        old_daemon = edge.daemon_pid
        killed = run_cli("dev", "kill", "r1-e1", "--daemon", *sd)
        assert killed.returncode == 0, killed.stderr
        assert not pid_alive(old_daemon)
        status = json.loads(run_cli("dev", "status", "--json", *sd).stdout)
        assert [s["site"] for s in status["sites"] if not s["healthy"]] == ["r1-e1"]
        assert pid_alive(edge.server_pid)  # only the daemon was chosen
        restarted = run_cli("dev", "restart", "r1-e1", "--daemon", *sd)
        assert restarted.returncode == 0, restarted.stderr
        wait_healthy(state_dir, up)
        edge = next(s for s in FleetRecord.load(state_dir).sites if s.name == "r1-e1")  # type: ignore[union-attr]
        assert edge.daemon_pid != old_daemon
        assert pid_alive(edge.daemon_pid)

        # A crash nobody asked for: the supervisor restarts it and fleet.json follows.
        old_server = edge.server_pid
        os.kill(old_server, signal.SIGKILL)

        def new_server_pid() -> int | None:
            site = next(s for s in FleetRecord.load(state_dir).sites if s.name == "r1-e1")  # type: ignore[union-attr]
            return site.server_pid if site.server_pid != old_server and pid_alive(site.server_pid) else None

        wait_until(new_server_pid, timeout=30, what="restarted server recorded")
        wait_healthy(state_dir, up)
        output = ctrl_c(up)
        assert "dev fleet stopped" in output
        assert not (state_dir / "control.sock").exists()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def test_client_tls_dev_fleet_gives_every_client_the_ca(tmp_path: Path):
    """`dev up --client-tls`: `dev creds` names the CA, and the CLI finds it by itself."""
    state_dir = tmp_path / "client-tls"
    up = start_up(state_dir, "--regions", "1", "--edges", "1", "--client-tls")
    try:
        wait_healthy(state_dir, up)
        sd = ("--state-dir", str(state_dir))
        viewer = json.loads(run_cli("dev", "creds", "--viewer", "--json", *sd).stdout)
        assert viewer["ca"], viewer
        assert Path(viewer["ca"]).is_file()

        async def read_as_viewer(**tls: Any) -> list[str]:
            nc = await nats.connect(viewer["url"], nkeys_seed=viewer["nkey"], allow_reconnect=False, **tls)
            try:
                return [s.config.name for s in await nc.jetstream().streams_info()]
            finally:
                await nc.close()

        fleet_ca = ssl.create_default_context(cafile=viewer["ca"])
        assert "KV_profiles" in asyncio.run(read_as_viewer(tls=fleet_ca))
        with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs do not know the fleet's
            asyncio.run(read_as_viewer(tls=ssl.create_default_context()))
        status = run_cli("status", *sd)
        assert status.returncode == 0, status.stderr
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.communicate(timeout=60)
