"""The Python API for people and tools that drive a fleet from outside: `FleetClient`.

async with await FleetClient.connect() as fleet:   # dev fleet of the default state dir
    print(await fleet.hub_info())
"""

import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from fleetbus.bus import Bus, connect
from fleetbus.devfleet.state import default_state_dir, running_fleet
from fleetbus.errors import ConfigError
from schemas.subjects import HUB_DOMAIN

HUB_URL_ENV = "FLEETBUS_HUB_URL"


def resolve_hub_url(hub: str | None = None, state_dir: Path | None = None) -> str:
    """`hub`, else $FLEETBUS_HUB_URL, else the hub of the dev fleet running in `state_dir`."""
    if hub:
        return hub
    if env := os.environ.get(HUB_URL_ENV):
        return env
    directory = state_dir or default_state_dir()
    record = running_fleet(directory)
    if record is None:
        msg = (
            f"no hub given and no dev fleet running in {directory}; pass --hub nats://HOST:PORT, "
            f"set {HUB_URL_ENV}, or start one with `fleetbus dev up`"
        )
        raise ConfigError(msg)
    return record.hub.client_url


@dataclass(frozen=True)
class HubInfo:
    url: str
    domain: str | None
    streams: int
    storage_bytes: int
    buckets: tuple[str, ...]


class FleetClient:
    """A connection to the hub's nats-server, speaking fleetbus."""

    def __init__(self, bus: Bus, url: str) -> None:
        self.bus = bus
        self.url = url

    @classmethod
    async def connect(
        cls, hub: str | None = None, *, state_dir: Path | None = None, attempts: int = 3
    ) -> "FleetClient":
        url = resolve_hub_url(hub, state_dir)
        bus = await connect(url, name="fleetbus-client", source="/fleet/client", attempts=attempts)
        return cls(bus, url)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.bus.close()

    async def hub_info(self) -> HubInfo:
        js = self.bus.jetstream(HUB_DOMAIN)
        account = await js.account_info()
        names = await js.streams_info()
        buckets = tuple(
            sorted(
                s.config.name.removeprefix("KV_")
                for s in names
                if s.config.name and s.config.name.startswith("KV_")
            )
        )
        return HubInfo(
            url=self.url,
            domain=account.domain,
            streams=account.streams,
            storage_bytes=account.storage,
            buckets=buckets,
        )
