"""The leaf-link proxy: forwards both ways, cut resets and refuses, heal lets through again."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from fleetbus.devfleet.linkproxy import LinkProxy
from fleetbus.devfleet.netutil import free_ports
from tests.helpers import eventually


async def echo_server(port: int) -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", port)


async def roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[LinkProxy, int]]:
    """An echo server behind a proxy: (the proxy, the port to connect to)."""
    target, listen = free_ports(2)
    server = await echo_server(target)
    proxy = LinkProxy("127.0.0.1", listen, target=("127.0.0.1", target))
    await proxy.start()
    try:
        yield proxy, listen
    finally:
        await proxy.stop()
        server.close()
        await server.wait_closed()


async def test_forwards_cuts_and_heals(proxied):
    proxy, listen = proxied
    assert await roundtrip(listen, b"x" * 200_000) == b"x" * 200_000

    reader, writer = await asyncio.open_connection("127.0.0.1", listen)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    proxy.cut()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)  # the open connection is reset
    writer.close()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await roundtrip(listen, b"refused")  # and new ones are dropped at once

    proxy.heal()
    assert await roundtrip(listen, b"back") == b"back"
    assert proxy.connections == 3


async def test_delay_adds_latency_each_way_and_throttle_caps_throughput(proxied):
    proxy, listen = proxied
    reader, writer = await asyncio.open_connection("127.0.0.1", listen)

    async def rtt(payload: bytes) -> float:
        began = time.monotonic()
        writer.write(payload)
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(len(payload)), 30)
        return time.monotonic() - began

    fast = await rtt(b"p")
    proxy.shape(delay_ms=150)  # applies to the open connection too
    slow = await rtt(b"p")
    assert slow >= 0.3 > fast  # 150 ms each way
    assert proxy.state().delay_ms == 150

    proxy.shape(delay_ms=0, rate_kbps=64)
    took = await rtt(b"x" * 32 * 1024)  # 32 KiB each way through a 64 KiB/s link
    assert took >= 0.45, took
    proxy.heal()
    assert proxy.state().rate_kbps == 0
    assert await rtt(b"x" * 32 * 1024) < 0.25
    with pytest.raises(ValueError, match="delay must be >= 0"):
        proxy.shape(delay_ms=-1)
    writer.close()


async def test_blackhole_holds_everything_silently_until_heal(proxied):
    proxy, listen = proxied
    reader, writer = await asyncio.open_connection("127.0.0.1", listen)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"

    proxy.blackhole()
    assert proxy.state().blackhole
    writer.write(b"held")  # the sender sees no error: its bytes wait as in a lost route
    await writer.drain()
    late_reader, late_writer = await asyncio.open_connection("127.0.0.1", listen)  # accepted...
    late_writer.write(b"late")
    for r in (reader, late_reader):
        with pytest.raises(TimeoutError):  # ...but nothing comes back, and nothing is reset
            await asyncio.wait_for(r.readexactly(4), 0.5)
    assert not reader.at_eof()
    assert not late_reader.at_eof()

    proxy.heal()  # what was held moves on, in order, on both connections
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
    assert await asyncio.wait_for(late_reader.readexactly(4), 5) == b"late"
    assert not proxy.state().blackhole
    for w in (writer, late_writer):
        w.close()


async def test_a_cut_during_a_blackhole_resets_even_unanswered_connections(proxied):
    proxy, listen = proxied
    proxy.blackhole()
    reader, writer = await asyncio.open_connection("127.0.0.1", listen)
    writer.write(b"x")
    await writer.drain()
    await eventually(lambda: _true(proxy.state().unanswered == 1), timeout=5, what="the attempt held")
    proxy.cut()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    writer.close()


async def _true(value: bool) -> bool:
    return value
