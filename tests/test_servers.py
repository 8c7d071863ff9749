"""nats-server supervision: a crashed server is restarted and keeps its JetStream data."""

import asyncio
import os
import signal

import pytest

from fleetbus.devfleet.state import pid_alive
from fleetbus.runtime.tasks import cancel_and_wait
from tests.helpers import eventually

pytestmark = pytest.mark.slow


async def test_supervisor_restarts_a_killed_server_with_its_data(hub_server):
    server = hub_server.servers["hub"]
    nc = await hub_server.connect("hub")
    kv = await nc.jetstream().create_key_value(bucket="survivor")
    revision = await kv.put("k", b"v")
    await nc.close()

    supervising = asyncio.create_task(server.supervise())
    try:
        first_pid = server.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)  # a crash, not a stop

        async def restarted() -> bool:
            return server.restarts == server.crashes == 1 and server.running and server.pid != first_pid

        await eventually(restarted, timeout=20, what="server restarted after SIGKILL")
        assert not pid_alive(first_pid)
        nc = await hub_server.connect("hub")
        try:
            entry = await (await nc.jetstream().key_value("survivor")).get("k")
            assert (entry.value, entry.revision) == (b"v", revision)
        finally:
            await nc.close()
        await server.kill(restart=False)  # asked for: not a crash, and not restarted
        assert server.crashes == 1
        assert not server.running
    finally:
        await server.stop()
        assert not await cancel_and_wait([supervising], timeout=10)
    assert not server.running
    assert server.restarts == 1
