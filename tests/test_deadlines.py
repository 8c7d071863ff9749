"""Nothing waits forever (issue 19 item 2): every command that talks to the hub, and
`FleetClient.connect`, gives up within its deadline with one clear line and exit code 3."""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import pytest

from fleetbus.devfleet.netutil import free_ports
from fleetbus.errors import HubUnreachableError, TemporaryError
from fleetbus.sdk.client import FleetClient
from tests.conftest import Chain, admin_creds, hub_args, running_fleet
from tests.helpers import FLEETBUS, ROOT, arun_cli, cli_env

EXIT_UNREACHABLE = 3
# Starting the CLI's Python process takes about a second on a busy 2-core machine.
MARGIN = 3.0


def refused_url() -> str:
    """A loopback port nothing listens on."""
    return f"nats://127.0.0.1:{free_ports(1)[0]}"


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[str]:
    """A TCP listener that accepts connections and never says a word (not even INFO)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep the socket open, silent

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def assert_unreachable(result, url: str, reason: str, took: float, deadline: float) -> None:
    assert result.returncode == EXIT_UNREACHABLE, (result.returncode, result.stdout, result.stderr)
    assert took < deadline + MARGIN, f"took {took:.1f} s, deadline {deadline} s"
    expected = f"cannot reach the hub at {url}: {reason}; is the fleet running? `fleetbus dev status`"
    assert expected in result.stderr
    # One line: no traceback, no nats-py warning per retry.
    assert result.stderr.strip().count("\n") == 0, result.stderr


async def timed_cli(*args: str, env: dict[str, str] | None = None) -> tuple[object, float]:
    started = time.monotonic()
    result = await arun_cli(*args, env=env, timeout=60)
    return result, time.monotonic() - started


@pytest.mark.parametrize("command", [["status"], ["info"], ["profile", "ls"], ["watch", "presence"]])
async def test_a_refused_port_fails_at_once_with_exit_3(command):
    url = refused_url()
    result, took = await timed_cli(*command, "--hub", url)
    assert_unreachable(result, url, "connection refused", took, deadline=5)


async def test_a_killed_hub_server_fails_within_the_deadline(hub_server: Chain):
    url = hub_server.url("hub")
    await hub_server.servers["hub"].kill(restart=False)
    result, took = await timed_cli("info", "--hub", url)
    assert_unreachable(result, url, "connection refused", took, deadline=5)


async def test_a_listener_that_never_speaks_fails_at_the_deadline():
    async with silent_listener() as url:
        result, took = await timed_cli("--timeout", "2", "status", "--hub", url)
        assert_unreachable(result, url, "no nats-server answered within 2 s", took, deadline=2)
        assert took >= 2  # it did wait for an answer that could still have come
        # The same deadline from the environment.
        result, took = await timed_cli("info", "--hub", url, env=cli_env(FLEETBUS_TIMEOUT="1.5"))
        assert_unreachable(result, url, "no nats-server answered within 1.5 s", took, deadline=1.5)


async def test_a_bad_timeout_is_a_usage_error():
    result = await arun_cli("--timeout", "0", "info", "--hub", refused_url())
    assert result.returncode == 2
    assert "--timeout (env FLEETBUS_TIMEOUT) must be between 0.1 and 3600, got 0" in result.stderr


async def test_fleet_client_connect_raises_a_temporary_error_within_the_deadline():
    url = refused_url()
    started = time.monotonic()
    with pytest.raises(HubUnreachableError, match="connection refused") as refused:
        await FleetClient.connect(url, timeout=5)
    assert isinstance(refused.value, TemporaryError)
    assert time.monotonic() - started < 5
    async with silent_listener() as silent:
        started = time.monotonic()
        with pytest.raises(HubUnreachableError, match="no nats-server answered within 1 s"):
            await FleetClient.connect(silent, timeout=1)
        assert time.monotonic() - started < 1 + 0.5


async def test_requests_after_the_hub_dies_fail_within_the_deadline(hub_server: Chain):
    url = hub_server.url("hub")
    fleet = await FleetClient.connect(url, timeout=2, creds=admin_creds(hub_server.plan))
    assert (await fleet.hub_info()).domain == "hub"
    await hub_server.servers["hub"].kill(restart=False)

    async def ask_the_dead_hub() -> None:
        async with fleet:
            await fleet.hub_info()

    started = time.monotonic()
    with pytest.raises(HubUnreachableError, match=f"cannot reach the hub at {url}: no answer within 2 s"):
        await ask_the_dead_hub()
    assert time.monotonic() - started < 2 + 1


@pytest.mark.slow
async def test_a_watch_ends_with_exit_3_when_the_hub_dies_under_it(tmp_path):
    async with running_fleet(tmp_path) as fleet:
        url = fleet.plan.site("hub").server.client_url
        proc = await asyncio.create_subprocess_exec(
            *FLEETBUS, "--timeout", "2", "watch", "presence", "--json", *hub_args(fleet.plan),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(), cwd=ROOT,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stderr is not None
        edges: set[str] = set()
        async with asyncio.timeout(30):  # both edges' presence, printed by the running watch
            while len(edges) < 2:
                line = (await proc.stdout.readline()).decode()
                assert line, "`watch presence` ended before printing both edges"
                edges.add(json.loads(line)["edge"])
        await fleet.kill("hub", daemon=False)
        started = time.monotonic()
        await asyncio.wait_for(proc.wait(), 2 + MARGIN)
        took = time.monotonic() - started
        stderr = (await proc.stderr.read()).decode()
        assert proc.returncode == EXIT_UNREACHABLE, stderr
        assert f"cannot reach the hub at {url}: " in stderr
        assert stderr.strip().count("\n") == 0, stderr
        assert took < 2 + MARGIN
