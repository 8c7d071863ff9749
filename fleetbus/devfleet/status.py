"""Health of every site of a running dev fleet: its nats-server and its daemon."""

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.state import FleetRecord, SiteRecord


@dataclass
class SiteHealth:
    site: SiteRecord
    server_ok: bool
    daemon_ok: bool
    daemon_detail: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.server_ok and self.daemon_ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site.name,
            "node": self.site.node,
            "tier": self.site.tier,
            "region": self.site.region,
            "healthy": self.ok,
            "server": "ok" if self.server_ok else "down",
            "daemon": "ok" if self.daemon_ok else "down",
            "client_url": self.site.client_url,
            "server_health_url": self.site.server_health_url,
            "daemon_health_url": self.site.daemon_health_url,
            "mqtt_url": self.site.mqtt_url,
            "dashboard_url": self.site.dashboard_url,
            "daemon_detail": self.daemon_detail,
        }


PROBE_TRIES = 3  # a server's /healthz can fail once under load: it gives itself 1 ms
PROBE_SPACING = 0.2  # s between tries


async def _probe(url: str) -> tuple[bool, dict[str, Any]]:
    """(healthy, detail) of `url`; unhealthy only if it fails `PROBE_TRIES` times in a row
    (seen: nats-server's `/healthz` answered "failed to be ready for connections after 1ms"
    once while a fleet was starting on a busy machine, and `dev status` said the site was down)."""
    ok, detail = await _probe_once(url)
    for _ in range(PROBE_TRIES - 1):
        if ok:
            break
        await asyncio.sleep(PROBE_SPACING)  # a retry interval
        ok, detail = await _probe_once(url)
    return ok, detail


async def _probe_once(url: str) -> tuple[bool, dict[str, Any]]:
    try:
        status, body = await http_get(url, timeout=2.0)
    except (OSError, TimeoutError) as exc:
        return False, {"error": str(exc) or type(exc).__name__}
    try:
        detail = json.loads(body) if body else {}
    except ValueError:
        detail = {}
    return status == 200, detail if isinstance(detail, dict) else {}


async def _site(site: SiteRecord) -> SiteHealth:
    (server_ok, _), (daemon_ok, detail) = await asyncio.gather(
        _probe(site.server_health_url), _probe(site.daemon_health_url)
    )
    return SiteHealth(site, server_ok, daemon_ok, detail)


async def check(record: FleetRecord) -> list[SiteHealth]:
    return list(await asyncio.gather(*(_site(s) for s in record.sites)))
