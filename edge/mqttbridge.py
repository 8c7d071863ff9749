"""The bridge to a site's own MQTT broker (e.g. Mosquitto): the only module importing aiomqtt.

It logs in with `mqtt_bridge_username` and the password in `mqtt_bridge_password_file` when
given, and speaks TLS to an `mqtts://` broker, verifying its certificate against
`mqtt_bridge_ca` (or the system's CAs).

When a site already runs a broker, the edge daemon subscribes to the configured topics there
(`mqtt_bridge_topics`, default the device contract's `devices/+/telemetry` and
`devices/+/status`) and feeds the same device registry as its own MQTT listener. When the broker
goes away it reconnects with back-off (0.5 s doubling to 30 s); the registry is the daemon's,
so a broker restart loses nothing of it.
"""

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt

from edge.devices import DeviceRegistry
from fleetbus.errors import ConfigError
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff

logger = log.get_logger(__name__)


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool


def broker_address(url: str) -> Broker:
    """`mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (TLS, 8883)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not parts.hostname:
        msg = f"mqtt_bridge_url {url!r}: give mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
        raise ConfigError(msg)
    if parts.username or parts.password:
        msg = (
            f"mqtt_bridge_url {url!r}: no credentials in the URL; "
            "use mqtt_bridge_username and mqtt_bridge_password_file"
        )
        raise ConfigError(msg)
    tls = parts.scheme in ("mqtts", "ssl")
    return Broker(parts.hostname, parts.port or (8883 if tls else 1883), tls)


def tls_context(ca: Path | None) -> ssl.SSLContext:
    """Verify the broker's certificate: against `ca`, or the system's CAs."""
    try:
        return ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        msg = f"mqtt_bridge_ca {ca}: {exc}"
        raise ConfigError(msg) from exc


def read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        msg = f"mqtt_bridge_password_file {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc


async def run(
    url: str,
    topics: list[str],
    registry: DeviceRegistry,
    *,
    client_id: str,
    username: str | None = None,
    password_file: Path | None = None,
    ca: Path | None = None,
) -> None:
    """Take device messages from the broker at `url` until cancelled, reconnecting as needed;
    as `username` (password read from `password_file`), over TLS for `mqtts://`."""
    broker = broker_address(url)
    host, port = broker.host, broker.port
    password = read_password(password_file)
    context = tls_context(ca) if broker.tls else None
    retry = Backoff(0.5, cap=30.0)
    while True:
        try:
            async with aiomqtt.Client(
                host,
                port,
                identifier=client_id,
                keepalive=15,
                username=username,
                password=password,
                tls_context=context,
            ) as client:
                for topic in topics:
                    await client.subscribe(topic, qos=1)
                logger.info("mqtt bridge connected", broker=f"{host}:{port}", topics=topics)
                retry.reset()
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    registry.take_topic(str(message.topic).split("/"), payload, source="bridge")
        except aiomqtt.MqttError as exc:
            delay = retry.next_delay()
            logger.warning(
                "mqtt bridge disconnected; reconnecting",
                broker=f"{host}:{port}",
                error=str(exc),
                retry_in=round(delay, 1),
            )
            await asyncio.sleep(delay)  # back-off before reconnecting
