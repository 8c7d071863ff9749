"""The bridge to a site's own MQTT broker (e.g. Mosquitto): the only module importing aiomqtt.

When a site already runs a broker, the edge daemon subscribes to the configured topics there
(`mqtt_bridge_topics`, default the device contract's `devices/+/telemetry` and
`devices/+/status`) and feeds the same device registry as its own MQTT listener. When the broker
goes away it reconnects with back-off (0.5 s doubling to 30 s); the registry is the daemon's,
so a broker restart loses nothing of it.
"""

import asyncio
from urllib.parse import urlsplit

import aiomqtt

from edge.devices import DeviceRegistry
from fleetbus.errors import ConfigError
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff

logger = log.get_logger(__name__)


def broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        msg = f"mqtt_bridge_url {url!r}: give mqtt://HOST[:PORT]"
        raise ConfigError(msg)
    return parts.hostname, parts.port or 1883


async def run(url: str, topics: list[str], registry: DeviceRegistry, *, client_id: str) -> None:
    """Take device messages from the broker at `url` until cancelled, reconnecting as needed."""
    host, port = broker_address(url)
    retry = Backoff(0.5, cap=30.0)
    while True:
        try:
            async with aiomqtt.Client(host, port, identifier=client_id, keepalive=15) as client:
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
