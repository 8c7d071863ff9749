"""The Python API for people and tools that drive a fleet from outside: `FleetClient`.

    async with await FleetClient.connect() as fleet:   # dev fleet of the default state dir
        plan = await fleet.profiles.apply(Profile(name="base", ...), actor="me")
        print(plan.new.revision, plan.diff)
        for row in await fleet.compliance():
            print(row.edge, row.state)

`fleet.profiles` and `fleet.overrides` are the hub's profile authority
(`fleetbus.authority`); `explain()` and `compliance()` compute with the same pure function
the edges use.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from nats.js.errors import KeyNotFoundError

from fleetbus.authority import NotFoundError, OverrideStore, ProfileStore, keys
from fleetbus.bus import Bus, connect
from fleetbus.compliance import EdgeCompliance, assess
from fleetbus.desired import DesiredState, compute, edge_groups
from fleetbus.devfleet.state import default_state_dir, running_fleet
from fleetbus.errors import ConfigError, DecodeError
from schemas import subjects
from schemas.base import utcnow
from schemas.codec import decode_body
from schemas.event import Event
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
        js = bus.jetstream(HUB_DOMAIN)
        self.profiles = ProfileStore(js)
        self.overrides = OverrideStore(js)

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

    async def reports(self) -> list[Event]:
        """The last ApplyResult event of every edge that reported (hub bucket `applied`)."""
        js = self.bus.jetstream(HUB_DOMAIN)
        kv = await js.key_value(subjects.APPLIED_BUCKET)
        found = []
        for key in await keys(js, subjects.APPLIED_BUCKET):
            try:
                entry = await kv.get(key)
                found.append(
                    decode_body(
                        Event, entry.value or b"", subject=subjects.kv_subject(subjects.APPLIED_BUCKET, key)
                    )
                )
            except (KeyNotFoundError, DecodeError):
                continue  # gone meanwhile, or a bad event: the edge's next report replaces it
        return found

    async def report(self, edge: str) -> Event | None:
        for event in await self.reports():
            if event.edge == edge:
                return event
        return None

    async def explain(
        self,
        edge: str,
        *,
        labels: Mapping[str, str] | None = None,
        region: str | None = None,
        now: datetime | None = None,
    ) -> tuple[DesiredState, Event | None]:
        """The desired state of `edge` as the hub computes it, with the layer behind each value.

        Labels and groups come from the edge's last report; pass `labels` (and `region`) to
        explain an edge that has not reported, or a what-if.
        """
        report = await self.report(edge)
        if labels is None:
            if report is None or report.apply_result is None:
                msg = (
                    f"edge {edge!r} has not reported to the hub yet, so its labels are unknown; "
                    "pass --label KEY=VALUE (and --region) to explain it for given labels"
                )
                raise NotFoundError(msg)
            labels, groups = report.apply_result.labels, report.apply_result.groups
        else:
            home = region or (report.region if report else None)
            groups = edge_groups(home, labels) if home else []
        profiles = await self.profiles.all()
        overrides = [o.override for o in await self.overrides.all()]
        desired = compute(
            profiles, labels, edge=edge, groups=groups, overrides=overrides, now=now or utcnow()
        )
        return desired, report

    async def compliance(self, *, now: datetime | None = None) -> list[EdgeCompliance]:
        """Per reporting edge: converged / pending / failed (see `fleetbus.compliance`)."""
        profiles = await self.profiles.all()
        overrides = [o.override for o in await self.overrides.all()]
        return assess(profiles, overrides, await self.reports(), now=now or utcnow())
