"""Devices at the edge: the registry, MQTT ingest through the edge nats-server's own MQTT
listener, commands from the hub, and the bridge to a site broker (Debian's mosquitto).
Devices are aiomqtt clients; servers and daemons are real processes."""

import asyncio
import contextlib
import json
import secrets
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.devices import DeviceRegistry
from fleetbus.devfleet.netutil import free_ports
from fleetbus.errors import EdgeUnreachableError
from fleetbus.runtime import pki
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.sdk.client import FleetClient
from schemas.heartbeat import Tier
from tests.conftest import admin_creds, device_login, hub_args, running_fleet
from tests.helpers import arun_cli, eventually, require_tool
from tests.test_metrics import CHECKED_ELSEWHERE, Metrics

T0 = datetime(2026, 11, 21, tzinfo=UTC)
EDGE = "r1-e1"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_registry_keeps_what_devices_report_and_rejects_the_rest():
    clock = Clock()
    registry = DeviceRegistry(offline_after=30, max_payload=1024, clock=clock)
    assert registry.take("sensor-1", "telemetry", b'{"temp": 21.5, "door": "open"}')
    assert registry.take("sensor-1", "status", b'{"state": "ok", "battery": 88}')
    clock.now = T0 + timedelta(seconds=10)
    assert registry.take("sensor-1", "telemetry", b'{"temp": 22.0}')
    rejected = {
        "not_json": (b"21.5 degrees", "telemetry"),
        "wrong_type": (b'{"temp": {"nested": 1}}', "telemetry"),
        "too_large": (json.dumps({"blob": "x" * 2000}).encode(), "telemetry"),
        "status_not_object": (b'"ok"', "status"),
        "list": (b"[1, 2]", "telemetry"),
    }
    for payload, channel in rejected.values():
        assert not registry.take("sensor-1", channel, payload)
    assert not registry.take("Bad.Id", "telemetry", b"{}")
    assert not registry.take("s//x", "telemetry", b"{}")
    assert not registry.take("sensor-1", "firmware", b"{}")
    [record] = registry.records()
    assert record.id == "sensor-1"
    assert record.messages == 3
    assert record.first_seen == T0
    assert record.last_seen == T0 + timedelta(seconds=10)
    assert record.last_telemetry == {"temp": 22.0, "door": "open"}
    assert record.last_status == {"state": "ok", "battery": 88}
    assert record.online
    clock.now = T0 + timedelta(seconds=40)  # 30 s after it was last heard
    assert not registry.records()[0].online


def test_topics_from_the_listener_and_a_site_broker_take_the_same_way():
    metrics = DaemonMetrics("edge", EDGE)
    registry = DeviceRegistry(offline_after=30, max_payload=1024, metrics=metrics, clock=Clock())
    assert registry.take_topic(["devices", "sensor-1", "telemetry"], b'{"temp": 1}')
    assert registry.take_topic(["devices", "sensor-2", "status"], b'{"state": "ok"}', source="bridge")
    for topic in ("devices/sensor-1/telemetry/extra", "devices/sensor-1", "sensors/s1/telemetry"):
        assert not registry.take_topic(topic.split("/"), b'{"temp": 1}')
    rejected = metrics.registry.get_sample_value(
        "fleetbus_device_messages_rejected_total", {"reason": "bad_topic"}
    )
    assert rejected == 3
    assert [(r.id, r.source) for r in registry.records()] == [("sensor-1", "mqtt"), ("sensor-2", "bridge")]


async def device_record(client: FleetClient, device: str, **wanted: Any) -> Any:
    snapshot = await client.get_inventory(EDGE)
    for record in snapshot.devices:
        if record.id == device and all(getattr(record, k) == v for k, v in wanted.items()):
            return record
    return None


@contextlib.asynccontextmanager
async def device_fleet(tmp_path: Path, **edge_settings: object) -> AsyncIterator[tuple[Any, FleetClient]]:
    settings: dict[Tier, dict[str, object]] = {
        Tier.EDGE: {
            "device_offline_after": 3.0,
            "inventory_scan_interval": 0.3,
            "inventory_interval": 2.0,  # readings refresh at the interval; new devices at once
            **edge_settings,
        }
    }
    async with running_fleet(tmp_path, regions=1, edges=1, settings=settings, mqtt=True) as fleet:
        client = await FleetClient.connect(
            fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan)
        )
        try:
            yield fleet, client
        finally:
            await client.close()


@pytest.mark.slow
async def test_devices_on_the_edge_mqtt_listener_reach_the_hub_and_take_commands(tmp_path):
    async with device_fleet(tmp_path) as (fleet, client):
        mqtt_port = fleet.plan.site(EDGE).server.mqtt_port
        assert mqtt_port is not None
        login = await device_login(fleet.plan, EDGE, "sensor-1")
        async with aiomqtt.Client("127.0.0.1", mqtt_port, identifier="sensor-1", **login) as device:
            await device.subscribe("devices/sensor-1/cmd", qos=1)
            await device.publish("devices/sensor-1/status", json.dumps({"state": "ok"}), qos=1)
            await device.publish("devices/sensor-1/telemetry", json.dumps({"temp": 21.5}), qos=1)

            record = await eventually(
                lambda: device_record(client, "sensor-1", online=True),
                timeout=20,
                what="the device in the hub's inventory",
            )
            assert record.last_telemetry == {"temp": 21.5}
            assert record.last_status == {"state": "ok"}
            assert record.source == "mqtt"

            # Malformed messages are counted and skipped; the edge keeps running.
            edge = fleet.daemons[EDGE]
            pid = edge.pid
            await device.publish("devices/sensor-1/telemetry", b"not json", qos=1)
            await device.publish("devices/sensor-1/telemetry", json.dumps({"temp": [1, 2]}), qos=1)
            await device.publish("devices/sensor-1/telemetry", b"x" * (1024 * 1024 - 200), qos=1)
            # An id that is not one (a dot) can come only from a gateway: a device's own
            # credentials reach only its own topics.
            gateway = await device_login(fleet.plan, EDGE, "gw-1", gateway=True)
            async with aiomqtt.Client("127.0.0.1", mqtt_port, identifier="gw-1", **gateway) as gw:
                await gw.publish("devices/bad.id/telemetry", json.dumps({"temp": 1}), qos=1)
            metrics = Metrics(fleet)

            async def rejected() -> dict[str, float] | None:
                scrape = await metrics.scrape(EDGE)
                counts = {
                    reason: scrape.value("fleetbus_device_messages_rejected_total", reason=reason)
                    for reason in ("not_json", "wrong_type", "too_large", "bad_device_id")
                }
                return counts if all(counts.values()) else None

            counts = await eventually(rejected, timeout=20, what="malformed messages counted")
            assert counts == {"not_json": 1, "wrong_type": 1, "too_large": 1, "bad_device_id": 1}
            scrape = await metrics.scrape(EDGE)
            assert scrape.value("fleetbus_device_messages_total", channel="telemetry", source="mqtt") == 1
            assert {
                "fleetbus_device_messages_total",
                "fleetbus_device_messages_rejected_total",
            } <= CHECKED_ELSEWHERE
            assert edge.running
            assert edge.pid == pid
            record = await device_record(client, "sensor-1")
            assert record.last_telemetry == {"temp": 21.5}  # the bad ones changed nothing

            # A command from the hub reaches the device's MQTT subscription.
            reply = await client.send_device_command(EDGE, "sensor-1", {"reboot": True}, sent_by="test")
            assert reply.delivered
            assert reply.device_known
            async with asyncio.timeout(10):
                message = await anext(aiter(device.messages))
            assert str(message.topic) == "devices/sensor-1/cmd"
            assert json.loads(message.payload) == {"reboot": True}  # type: ignore[arg-type]

            # The CLI, the same way.
            payload = tmp_path / "cmd.json"
            payload.write_text(json.dumps({"led": "blink"}))
            result = await arun_cli(
                "device", "send", EDGE, "sensor-1", "-f", str(payload), *hub_args(fleet.plan)
            )
            assert result.returncode == 0, result.stderr
            assert "delivered to devices/sensor-1/cmd at r1-e1" in result.stdout
            async with asyncio.timeout(10):
                message = await anext(aiter(device.messages))
            assert json.loads(message.payload) == {"led": "blink"}  # type: ignore[arg-type]

        # The device goes silent: offline after its timeout, in the hub's inventory.
        await eventually(
            lambda: device_record(client, "sensor-1", online=False), timeout=20, what="the device offline"
        )

        # An edge that cannot answer: a clear error, exit 3 (unreachable), nothing queued.
        fleet.link("r1-e1").cut()
        with pytest.raises(EdgeUnreachableError, match="did not answer within 1 s"):
            await client.send_device_command(EDGE, "sensor-1", {"reboot": True}, timeout=1)
        result = await arun_cli(
            "device", "send", EDGE, "sensor-1", "-f", str(payload), *hub_args(fleet.plan), "--timeout", "1"
        )
        assert result.returncode == 3
        assert "did not answer within 1 s: it is offline or its link is down" in result.stderr


@contextlib.contextmanager
def mosquitto(tmp_path: Path, port: int, conf: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    binary = require_tool("/usr/sbin/mosquitto", "mosquitto")
    config = tmp_path / "mosquitto.conf"
    config.write_text(conf or f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


async def publish_when_up(port: int, topic: str, payload: dict[str, Any]) -> bool:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"dev-{topic.split('/')[1]}") as device:
        await device.publish(topic, json.dumps(payload), qos=1)
    return True


@pytest.mark.slow
async def test_the_bridge_reconnects_after_mosquitto_restarts_and_loses_nothing(tmp_path):
    [port] = free_ports(1)
    async with device_fleet(tmp_path, mqtt_bridge_url=f"mqtt://127.0.0.1:{port}") as (_, client):
        with mosquitto(tmp_path, port):

            async def bridged(rpm: int) -> Any:
                # Until the bridge has (re)subscribed, what devices publish is not for it (QoS 1,
                # clean sessions, nothing retained): publish until one arrives at the hub.
                await publish_when_up(port, "devices/plc-7/telemetry", {"rpm": rpm})
                return await device_record(client, "plc-7", last_telemetry={"rpm": rpm})

            first = await eventually(lambda: bridged(1200), timeout=30, what="the bridged device at the hub")
            assert first.source == "bridge"
            assert first.last_telemetry == {"rpm": 1200}
        # Mosquitto is gone. Then it comes back on the same port; the bridge reconnects.
        with mosquitto(tmp_path, port):
            again = await eventually(lambda: bridged(1300), timeout=60, what="the bridge reconnected")
        assert again.first_seen == first.first_seen  # the registry lost nothing
        assert again.messages > first.messages


@pytest.mark.slow
async def test_the_bridge_logs_in_over_tls_to_a_broker_that_requires_it(tmp_path):
    """mqtts:// with the broker's certificate verified, and a username and password: a
    broker refusing anonymous and plaintext clients still feeds the registry."""
    [port] = free_ports(1)
    ca = pki.ensure_ca(tmp_path / "pki")
    cert = pki.ensure_site_cert(ca, tmp_path / "broker", "broker", ("127.0.0.1",))
    passwords = tmp_path / "passwords"
    tool = require_tool("/usr/bin/mosquitto_passwd", "mosquitto")
    plc_login = {"username": "plc-9", "password": secrets.token_urlsafe(12)}
    bridge_password = secrets.token_urlsafe(12)
    for user, password in (("fleetbus", bridge_password), tuple(plc_login.values())):
        flags = ["-c"] if not passwords.exists() else []
        subprocess.run([tool, *flags, "-b", str(passwords), user, password], check=True)
    (tmp_path / "secret").write_text(bridge_password + "\n")
    conf = (
        # As root, mosquitto drops to its own user, which cannot read pytest's private tmp dir.
        f"user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
        f"certfile {cert.cert}\nkeyfile {cert.key}\ncafile {cert.ca}\npersistence false\n"
    )
    bridge = {
        "mqtt_bridge_url": f"mqtts://127.0.0.1:{port}",
        "mqtt_bridge_username": "fleetbus",
        "mqtt_bridge_password_file": str(tmp_path / "secret"),
        "mqtt_bridge_ca": str(cert.ca),
    }
    context = ssl.create_default_context(cafile=str(cert.ca))
    async with device_fleet(tmp_path, **bridge) as (_, client):
        with mosquitto(tmp_path, port, conf):
            # The broker refuses a plaintext client and a client without credentials.
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", port, identifier="plain", **plc_login):
                    pass
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", port, identifier="anon", tls_context=context):
                    pass

            async def bridged() -> Any:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    port,
                    identifier="plc-9",
                    **plc_login,
                    tls_context=context,
                ) as device:
                    await device.publish("devices/plc-9/telemetry", json.dumps({"rpm": 900}), qos=1)
                return await device_record(client, "plc-9", last_telemetry={"rpm": 900})

            record = await eventually(bridged, timeout=30, what="the bridged device at the hub")
            assert record.source == "bridge"
