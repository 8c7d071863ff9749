"""The dashboard with 1,000 edges: grouped by region, filterable, plain tiles (no rows of text),
and still live. The hub's view is filled with synthetic records (no fleet of 1,000 sites runs
here; issue 7's simulator will drive the real path), served by the real app and uvicorn,
and driven in headless Chromium."""

import asyncio
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from fleetbus.core.desired import compute, edge_groups
from fleetbus.devfleet.netutil import free_ports
from fleetbus.nats.kv import Entry
from fleetbus.runtime.tasks import cancel_and_wait
from hub import api, web
from hub.fleetview import FleetView
from schemas.base import utcnow
from schemas.event import ApplyResult, ApplyStatus, Event
from schemas.inventory import InventorySnapshot
from schemas.presence import PresenceChange, PresenceState
from schemas.profile import Profile
from tests.browser import OUTPUT, chromium
from tests.helpers import eventually

if TYPE_CHECKING:
    from fleetbus.sdk.client import FleetClient

REGIONS, PER_REGION = 4, 250


def record(key: str) -> Entry[Any]:
    return Entry(key=key, value=None, revision=1, stored_at=utcnow())


def presence(region: str, edge: str, state: PresenceState) -> PresenceChange:
    return PresenceChange(region=region, edge=edge, state=state, changed_at=utcnow(), last_seen=utcnow())


def synthetic_fleet() -> FleetView:
    """1,000 edges over 4 regions: every 10th offline, every 7th pending, one profile."""
    # Nothing here reads the bus: the app answers from the view, which is filled below.
    view = FleetView(cast("FleetClient", None))
    profile = Profile.model_validate(
        {"name": "base", "spec": {"config": {"ntp": "pool.ntp.org"}}, "revision": 2, "updated_by": "ops"}
    )
    view._on_profile(record("base"), profile)
    now = utcnow()
    for r in range(1, REGIONS + 1):
        region = f"r{r}"
        view._on_region(
            record(region), PresenceChange(region=region, state=PresenceState.ONLINE, changed_at=now)
        )
        for e in range(1, PER_REGION + 1):
            edge = f"{region}-e{e}"
            labels = {"region": region, "store": f"s{e % 17}"}
            state = PresenceState.OFFLINE if e % 10 == 0 else PresenceState.ONLINE
            view._on_presence(record(f"{region}.{edge}"), presence(region, edge, state))
            snap = InventorySnapshot(region=region, edge=edge, seq=1, observed_at=now, labels=labels)
            view._on_inventory(record(f"{region}.{edge}"), snap)
            groups = edge_groups(region, labels)
            desired = compute([profile], labels, edge=edge, groups=groups, overrides=[], now=now)
            result = ApplyResult(
                desired_hash="sha256:old" if e % 7 == 0 else desired.hash,
                profile_revisions={"base": 1 if e % 7 == 0 else 2},
                status=ApplyStatus.APPLIED,
                driver="local",
                duration_seconds=0.01,
                labels=labels,
                groups=groups,
            )
            event = Event(
                id=f"{edge}-1",
                kind="apply_result",
                region=region,
                edge=edge,
                observed_at=now - timedelta(seconds=e),
                apply_result=result,
            )
            view._on_report(record(f"{region}.{edge}"), event)
    return view


def test_rows_for_1000_edges_are_computed_once_per_policy_change():
    view = synthetic_fleet()
    started = time.perf_counter()
    rows = api.rows(view)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    again = api.rows(view)
    warm = time.perf_counter() - started
    print(f"1,000 rows: {cold * 1000:.0f} ms with compliance computed, {warm * 1000:.0f} ms cached")
    assert rows == again
    assert len(rows) == REGIONS * PER_REGION
    counts = api.compliance(view).counts
    pending = sum(1 for e in range(1, PER_REGION + 1) if e % 7 == 0) * REGIONS
    assert counts == {"pending": pending, "converged": REGIONS * PER_REGION - pending}


@pytest.mark.slow
async def test_browser_stays_usable_and_live_with_1000_edges():
    view = synthetic_fleet()
    (port,) = free_ports(1)
    server = asyncio.create_task(web.serve(web.create_app(view, tokens=None), web.bind("127.0.0.1", port)))

    def shown() -> dict[str, Any]:
        return browser.execute_script(
            """const t = [...document.querySelectorAll('a.tile[data-edge]')];
            return {tiles: t.length, text: t.filter(x => x.textContent.trim()).length,
                    regions: document.querySelectorAll('details.region').length,
                    offline: t.filter(x => x.dataset.presence === 'offline').length,
                    r3e5: (t.find(x => x.dataset.edge === 'r3-e5') || {dataset: {}}).dataset.presence};"""
        )

    try:
        async with chromium(height=900) as browser:
            started = time.monotonic()
            await asyncio.to_thread(browser.get, f"http://127.0.0.1:{port}/")

            async def all_tiles() -> dict[str, Any] | None:
                state = await asyncio.to_thread(shown)
                return state if state["tiles"] == REGIONS * PER_REGION else None

            state = await eventually(all_tiles, timeout=30, what="1,000 tiles drawn")
            print(f"1,000 tiles drawn {time.monotonic() - started:.2f}s after navigation")
            assert state["regions"] == REGIONS
            assert state["text"] == 0, "with 1,000 edges tiles are squares, not rows of text"
            assert state["offline"] == REGIONS * PER_REGION // 10
            await asyncio.to_thread(browser.save_screenshot, str(OUTPUT / "fleet-1000.png"))

            # Live at this size: one edge goes offline at the hub; its tile follows, no reload.
            view._on_presence(record("r3.r3-e5"), presence("r3", "r3-e5", PresenceState.OFFLINE))
            await view._notify()

            async def tile_offline() -> bool:
                return (await asyncio.to_thread(shown))["r3e5"] == "offline"

            await eventually(tile_offline, timeout=10, what="r3-e5's tile turning offline live")

            # Filters: a region and a presence narrow the tiles; the count says how many.
            def narrow() -> str:
                Select(browser.find_element(By.ID, "f-region")).select_by_visible_text("r2")
                Select(browser.find_element(By.ID, "f-presence")).select_by_visible_text("offline")
                return browser.find_element(By.ID, "shown").text

            text = await asyncio.to_thread(narrow)
            assert text == f"{PER_REGION // 10} of {REGIONS * PER_REGION} shown", text
            state = await asyncio.to_thread(shown)
            assert state["tiles"] == PER_REGION // 10
            assert state["text"] == state["tiles"], "a short list is labelled"
    finally:
        await cancel_and_wait([server], 5)
