"""Daemon lifecycle on real servers: tasks, failure, signals, health, metrics, heartbeats."""

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from fleetbus.daemon.lifecycle import Daemon
from fleetbus.devfleet import identities
from fleetbus.devfleet.netutil import free_ports, http_get
from fleetbus.devfleet.process import SupervisedProcess
from fleetbus.errors import DaemonFailedError
from fleetbus.runtime.settings import HubSettings
from schemas import subjects
from schemas.heartbeat import Tier
from tests.helpers import cli_env, eventually

pytestmark = pytest.mark.slow


def daemon_process(
    tmp_path: Path, tier: str, site: str, nats_url: str, creds: Path, *extra: str
) -> SupervisedProcess:
    port = free_ports(1)[0]
    argv = [
        sys.executable,
        "-m",
        tier,
        "--site",
        site,
        "--nats-url",
        nats_url,
        "--nats-creds",
        str(creds),
        "--http-port",
        str(port),
        "--state-dir",
        str(tmp_path / site),
        *extra,
    ]
    return SupervisedProcess(
        f"{tier} {site}",
        argv,
        f"http://127.0.0.1:{port}/healthz",
        tmp_path / f"{site}.log",
        env=cli_env(FLEETBUS_LOG_FORMAT="json"),
    )


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_first_failing_task_stops_the_others_and_is_reraised(hub_server, tmp_path):
    settings = HubSettings(
        nats_url=hub_server.url("hub"),
        nats_creds=hub_server.creds("hub"),
        state_dir=tmp_path,
        shutdown_timeout=5,
    )
    cleaned_up = asyncio.Event()

    async def steady() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    async def broken() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("disk on fire")

    async with Daemon(settings, tier=Tier.HUB) as daemon:
        daemon.add_task("steady", steady)
        daemon.add_task("broken", broken)
        with pytest.raises(DaemonFailedError, match="broken") as caught:
            await daemon.run()
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert cleaned_up.is_set()
    assert daemon.bus.nc.is_closed


async def test_request_stop_ends_run_cleanly_and_shutdown_is_idempotent(hub_server, tmp_path):
    settings = HubSettings(
        nats_url=hub_server.url("hub"), nats_creds=hub_server.creds("hub"), state_dir=tmp_path
    )
    daemon = Daemon(settings, tier=Tier.HUB)
    async with daemon:
        started = asyncio.Event()

        async def worker() -> None:
            started.set()
            await asyncio.Event().wait()

        daemon.add_task("worker", worker)
        runner = asyncio.create_task(daemon.run())
        await asyncio.wait_for(started.wait(), 5)
        status, body = await http_get(f"http://127.0.0.1:{daemon.http.port}/healthz")
        assert status == 200
        assert b'"worker": "running"' in body
        daemon.request_stop()
        await asyncio.wait_for(runner, 5)
    await daemon.shutdown()  # second call: nothing left to do, no error


async def test_hub_daemon_survives_garbage_and_stops_on_sigterm(hub_server, tmp_path):
    hub = daemon_process(tmp_path, "hub", "hub", hub_server.url("hub"), hub_server.creds("hub"))
    await hub.start()
    nc = await hub_server.connect("hub")
    try:
        # The hub provisioned its buckets, with the history the profiles need.
        info = await nc.jetstream().stream_info("KV_profiles")
        assert info.config.max_msgs_per_subject == 16
        # Garbage on a subject the hub decodes: counted, logged, daemon still healthy.
        await nc.publish(subjects.regional_heartbeat("r9"), b"\xc1 not msgpack")
        await nc.flush()
        metrics_url = hub.health_url.replace("healthz", "metrics")

        async def counted() -> bool:
            _, body = await http_get(metrics_url)
            return metric(body.decode(), "fleetbus_decode_errors_total") >= 1

        await eventually(counted, what="decode error counted")
        assert (await http_get(hub.health_url))[0] == 200
        dropped = [
            json.loads(line) for line in hub.log_path.read_text().splitlines() if "undecodable" in line
        ]
        assert dropped[0]["subject"] == "fleet.region.r9.hb"
        assert dropped[0]["site"] == "hub"
        assert "not valid application/msgpack" in dropped[0]["reason"]
    finally:
        await nc.close()
    proc = hub._proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert '"daemon stopped"' in hub.log_path.read_text()


async def test_edges_heartbeat_their_regional_and_provision_idempotently(chain, tmp_path):
    regional = daemon_process(
        tmp_path, "regional", "r1", chain.url("r1"), chain.creds("r1"), "--heartbeat-interval", "0.2"
    )
    trusted = ("--trusted-keys", identities.signing_key(chain.plan).public_key)
    edges = [
        daemon_process(
            tmp_path,
            "edge",
            e,
            chain.url(e),
            chain.creds(e),
            "--region",
            "r1",
            "--heartbeat-interval",
            "0.2",
            *trusted,
        )
        for e in ("r1-e1", "r1-e2")
    ]
    procs = [regional, *edges]
    try:
        for proc in procs:
            await proc.start()
        metrics_url = regional.health_url.replace("healthz", "metrics")

        async def both_heard() -> bool:
            _, body = await http_get(metrics_url)
            return metric(body.decode(), "fleetbus_peers_heard") == 2

        await eventually(both_heard, what="regional hears both edges")

        nc = await chain.connect("r1-e1")
        try:
            events = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
            assert events.config.subjects == ["fleet.edge.r1.r1-e1.events.>"]
            inventory = await nc.jetstream().stream_info(subjects.INVENTORY_STREAM)
            assert inventory.config.max_msgs_per_subject == 1
        finally:
            await nc.close()
        # Restarting provisions again over existing streams without error.
        await edges[0].restart()
        assert (await http_get(edges[0].health_url))[0] == 200
    finally:
        for proc in procs:
            await proc.stop()


async def test_a_failing_startup_step_is_retried_then_reported(hub_server, tmp_path, monkeypatch):
    monkeypatch.setattr("fleetbus.daemon.lifecycle.STARTUP_DEADLINE", 0.5)
    settings = HubSettings(
        nats_url=hub_server.url("hub"), nats_creds=hub_server.creds("hub"), state_dir=tmp_path
    )
    attempts = []

    async def provision() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise TimeoutError  # e.g. JetStream not ready yet
        raise ValueError("still broken")

    async def never_ready() -> None:
        attempts.append(1)
        raise TimeoutError

    async with Daemon(settings, tier=Tier.HUB) as daemon:
        daemon.on_start(provision)
        with pytest.raises(DaemonFailedError, match="provision") as caught:
            await daemon.run()
    # Retried past the transient errors; the deadline then turned the last one into a failure.
    assert len(attempts) >= 3
    assert isinstance(caught.value.__cause__, ValueError)

    attempts.clear()
    async with Daemon(settings, tier=Tier.HUB) as daemon:
        daemon.on_start(never_ready)
        with pytest.raises(DaemonFailedError, match="never_ready"):
            await daemon.run()
    assert len(attempts) > 1
