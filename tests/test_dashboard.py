"""Issue 6: the hub's dashboard and JSON API, on a real fleet (servers, daemons, link proxies).

The browser test drives Debian's chromium headless through selenium and saves screenshots
under test-output/dashboard/.
"""

import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from fleetbus.devfleet import identities
from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.errors import ForbiddenError
from fleetbus.runtime import apitoken, identity
from fleetbus.runtime.signing import Signer
from fleetbus.sdk.client import FleetClient
from schemas.base import utcnow
from schemas.desk import Role
from schemas.profile import Profile, ProfileSpec
from tests.browser import OUTPUT, chromium
from tests.conftest import admin_creds, hub_args, running_fleet
from tests.helpers import arun_cli, eventually

pytestmark = pytest.mark.slow

EDGES = ("r1-e1", "r1-e2")


def dashboard(fleet: DevFleet) -> str:
    url = fleet.plan.site("hub").dashboard_url
    assert url, "the dev fleet plans a dashboard port for the hub"
    return url


async def get(fleet: DevFleet, path: str) -> tuple[int, Any]:
    status, body = await http_get(dashboard(fleet) + path.lstrip("/"), timeout=5, token=fleet.dashboard_token)
    return status, json.loads(body)


async def all_online_and_converged(fleet: DevFleet) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]] | None:
        _, body = await get(fleet, "/api/edges")
        rows = body["edges"]
        ok = [r["edge"] for r in rows if r["presence"] == "online" and r["compliance"] == "converged"]
        return rows if sorted(ok) == list(EDGES) else None

    return await eventually(probe, timeout=30, what="every edge online and converged on /api/edges")


class Sse:
    """A raw Server-Sent Events reader on /api/stream (what a browser's EventSource gets)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def next(self) -> tuple[str, Any]:
        name, data = "message", ""
        while True:
            line = (await self.reader.readline()).decode().rstrip("\r\n")
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data += line.removeprefix("data: ")
            elif not line and data:
                return name, json.loads(data)


@contextlib.asynccontextmanager
async def sse(fleet: DevFleet, token: str | None = None) -> AsyncIterator[Sse]:
    port = fleet.plan.site("hub").dashboard_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token or fleet.dashboard_token}\r\n"
    writer.write(
        f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n", 1)[0], head
    assert b"text/event-stream" in head, head
    try:
        yield Sse(reader, writer)
    finally:
        writer.close()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[DevFleet]:
    async with running_fleet(tmp_path) as running:
        yield running


async def test_api_answers_from_the_fleet_and_streams_changes(fleet):
    rows = await all_online_and_converged(fleet)
    assert {r["region"] for r in rows} == {"r1"}

    # A profile: /api/profiles shows its revision and which edges run it.
    async with await FleetClient.connect(
        fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan)
    ) as client:
        profile = Profile.model_validate(
            {
                "name": "base",
                "selector": {"match_labels": {"env": "dev"}},
                "spec": {"config": {"ntp": "pool.ntp.org"}},
            }
        )
        await client.profiles.apply(profile)

    async def running_everywhere() -> list[dict[str, Any]] | None:
        _, body = await get(fleet, "/api/profiles")
        return body if body and sorted(body[0]["running"].get("1", [])) == list(EDGES) else None

    profiles = await eventually(running_everywhere, timeout=30, what="revision 1 running on both edges")
    assert profiles[0]["name"] == "base"
    assert profiles[0]["revision"] == 1
    assert [h["revision"] for h in profiles[0]["history"]] == [1]

    status, detail = await get(fleet, "/api/edges/r1-e1")
    assert status == 200
    assert detail["edge"]["edge"] == "r1-e1"
    assert detail["inventory"]["edge"] == "r1-e1"
    assert {"path": "config.ntp", "value": "pool.ntp.org", "source": "profile base@1"} in detail["explain"]
    assert detail["desired_hash"] == detail["edge"]["desired_hash"]
    assert any(e["kind"] == "apply_result" for e in detail["events"])

    status, summary = await get(fleet, "/api/compliance")
    assert status == 200
    assert (summary["total"], summary["counts"]) == (2, {"converged": 2}), summary
    status, regions = await get(fleet, "/api/regions")
    assert [(r["region"], r["state"], r["edges"]) for r in regions] == [("r1", "online", 2)]
    status, events = await get(fleet, "/api/events?kind=apply_result&edge=r1-e2&limit=5")
    assert status == 200
    assert events
    assert all(e["edge"] == "r1-e2" for e in events)
    status, filtered = await get(fleet, "/api/edges?presence=online&q=r1-e2")
    assert [r["edge"] for r in filtered["edges"]] == ["r1-e2"]
    assert filtered["total"] == 1

    # Live: killing an edge daemon turns its row stale on the stream, unasked.
    async with sse(fleet) as stream:
        name, hello = await stream.next()
        assert name == "hello"
        assert hello["version"] > 0
        await fleet.kill("r1-e2", server=False)

        async def stale_on_stream() -> bool:
            while True:
                name, data = await stream.next()
                if name == "edges" and any(
                    r["edge"] == "r1-e2" and r["presence"] in ("stale", "offline") for r in data
                ):
                    return True

        await asyncio.wait_for(stale_on_stream(), 20)


async def test_api_errors_are_clear_and_never_500(fleet):
    await all_online_and_converged(fleet)
    status, body = await get(fleet, "/api/edges/no-such-edge")
    assert status == 404
    assert "no-such-edge" in body["error"], body
    assert "/api/edges" in body["error"], body

    odd = [
        "/api/edges?limit=abc",
        "/api/edges?limit=-1",
        "/api/edges?limit=99999999999999999999999",
        "/api/edges?offset=1e3",
        "/api/edges?presence=sideways",
        "/api/edges?compliance=%00",
        "/api/edges?q=%ff%fe%00%C0%AF",
        "/api/edges?q=" + "x" * 5000,
        "/api/edges?region=r1&region=r2&limit=1&limit=2",
        "/api/edges?%%%%=&&&==",
        "/api/edges?presence=online&compliance=failed&region=%E2%98%83",
        "/api/edges/%2e%2e%2f%2e%2e",
        "/api/edges/r1-e1%00",
        "/api/events?limit=0",
        "/api/events?severity=loud",
        "/api/events?limit=5&kind=%F0%9F%92%A5&edge=",
        "/api/profiles?x[]=1&y[a]=b",
        "/api/compliance?limit=abc",
        "/api/regions?%ZZ",
    ]
    for path in odd:
        status, body = await get(fleet, path)
        assert status < 500, (path, status, body)
        assert status in (200, 404, 422), (path, status, body)
        if status == 422:
            assert body["error"], (path, body)
    status, body = await get(fleet, "/api/edges?presence=sideways")
    assert status == 422
    assert "presence" in body["error"], body

    status, schema = await get(fleet, "/openapi.json")
    assert status == 200
    paths = set(schema["paths"])
    expected = {"/api/edges", "/api/edges/{edge}", "/api/profiles", "/api/compliance", "/api/events"}
    assert expected <= paths, paths

    # A page elsewhere that rebinds its own name to this address gets nothing (DNS rebinding):
    # the API answers only requests naming a host in `dashboard_hosts`.
    url = urllib.parse.urlsplit(dashboard(fleet))
    for host, expected_status in (("rebind.example", 400), ("localhost", 200), ("127.0.0.1", 200)):
        answer = await _raw_get(
            url.hostname or "",
            url.port or 80,
            "/api/edges",
            f"{host}:{url.port}",
            token=fleet.dashboard_token,
        )
        assert answer.startswith(f"HTTP/1.1 {expected_status}"), (host, answer[:200])
        assert ("r1-e1" in answer) == (expected_status == 200), (host, answer[:200])


async def _raw_get(
    address: str, port: int, path: str, host: str, *, token: str | None = None, method: str = "GET"
) -> str:
    """`method` `path` at `address` with the Host header a browser would send for `host`."""
    reader, writer = await asyncio.open_connection(address, port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n".encode())
        await writer.drain()
        return (await asyncio.wait_for(reader.read(), 5)).decode(errors="replace")
    finally:
        writer.close()


async def test_browser_sees_every_edge_and_a_killed_daemon_turn_stale(fleet):
    await all_online_and_converged(fleet)
    async with chromium() as browser:
        await asyncio.to_thread(browser.get, fleet.login_url)  # sets the token's cookie, then `/`

        def tiles() -> dict[str, str]:
            found = browser.find_elements(By.CSS_SELECTOR, "a.tile[data-edge]")
            return {t.get_attribute("data-edge"): t.get_attribute("data-presence") for t in found}

        async def every_edge_shown() -> dict[str, str] | None:
            shown = await asyncio.to_thread(tiles)
            return shown if sorted(shown) == list(EDGES) and set(shown.values()) == {"online"} else None

        await eventually(every_edge_shown, timeout=20, what="both edges shown online in the browser")
        await asyncio.to_thread(browser.save_screenshot, str(OUTPUT / "fleet-online.png"))
        page_id = await asyncio.to_thread(browser.execute_script, "return window.performance.timeOrigin")

        await fleet.kill("r1-e1", server=False)

        async def turned_stale() -> dict[str, str] | None:
            shown = await asyncio.to_thread(tiles)
            return shown if shown.get("r1-e1") in ("stale", "offline") else None

        shown = await eventually(turned_stale, timeout=20, what="r1-e1's tile turning stale/offline")
        assert shown["r1-e2"] == "online", shown
        # The same page: it changed live, nobody reloaded it.
        assert (
            await asyncio.to_thread(browser.execute_script, "return window.performance.timeOrigin") == page_id
        )
        await asyncio.to_thread(browser.save_screenshot, str(OUTPUT / "fleet-edge-stale.png"))
        assert (OUTPUT / "fleet-edge-stale.png").stat().st_size > 0


async def test_the_view_keeps_following_after_the_hubs_server_restarts(fleet):
    await all_online_and_converged(fleet)
    await fleet.kill("hub", daemon=False)
    await fleet.restart("hub", daemon=False)
    async with await FleetClient.connect(
        fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan), timeout=20
    ) as client:
        profile = Profile.model_validate(
            {
                "name": "after-restart",
                "selector": {"match_labels": {"env": "dev"}},
                "spec": {"config": {"b": 2}},
            }
        )
        await eventually(lambda: client.profiles.apply(profile), timeout=30, what="apply")

    async def followed() -> bool:
        _, profiles = await get(fleet, "/api/profiles")
        _, body = await get(fleet, "/api/edges")
        running = [r for r in body["edges"] if r["profile_revisions"].get("after-restart") == 1]
        return any(p["name"] == "after-restart" for p in profiles) and len(running) == len(EDGES)

    # Within 8 s: the hub's hellos after its server is back have the regional kick its replicas'
    # sources at once; without them, nats-server's own retry took 9 s to more than 30 s.
    await eventually(followed, timeout=8, what="the dashboard following the fleet after the restart")
    assert fleet.crashes() == {}


async def test_with_the_hubs_server_dead_nothing_is_shown_as_live(fleet):
    """The hub daemon keeps serving while its own nats-server is dead: it must say so on every
    answer, show every edge and region `unknown` (what it last knew in the reason), never
    `online`; and be live again once the server is back."""
    await all_online_and_converged(fleet)
    _, hub = await get(fleet, "/api/hub")
    assert hub["connected"] is True
    assert hub["stale_seconds"] == 0
    async with chromium() as browser:
        await asyncio.to_thread(browser.get, fleet.login_url)
        await asyncio.to_thread(browser.get, dashboard(fleet) + "#/edge/r1-e1")

        def badge() -> tuple[str, str]:
            live = browser.find_element(By.ID, "live")
            return str(live.get_attribute("data-state")), live.text

        async def badge_is(state: str) -> tuple[str, str] | None:
            shown = await asyncio.to_thread(badge)
            return shown if shown[0] == state else None

        await eventually(lambda: badge_is("live"), timeout=20, what="the page's badge saying live")
        await fleet.kill("hub", daemon=False)
        _, text = await eventually(lambda: badge_is("stale"), timeout=20, what="the badge turning stale")
        assert "hub lost its nats-server" in text

        async def uplink_unclaimed() -> str | None:
            text = await asyncio.to_thread(lambda: browser.find_element(By.ID, "edge-uplink").text)
            return text if text.startswith("uplink unknown now") else None

        await asyncio.to_thread(browser.refresh)  # the edge page, read while the hub hears nothing
        await eventually(uplink_unclaimed, timeout=20, what="the edge page not claiming a connected uplink")
        await asyncio.to_thread(browser.save_screenshot, str(OUTPUT / "hub-bus-lost.png"))

    async def stale() -> dict[str, Any] | None:
        _, status = await get(fleet, "/api/hub")
        return status if not status["connected"] else None

    status = await eventually(stale, timeout=10, what="/api/hub saying the hub lost its server")
    assert "stale" in status["message"] or "nothing" in status["message"]
    _, body = await get(fleet, "/api/edges")
    assert body["hub"]["connected"] is False
    assert {r["presence"] for r in body["edges"]} == {"unknown"}
    assert all("last known online" in r["presence_reason"] for r in body["edges"])
    assert {r["uplink"] for r in body["edges"]} == {"unknown"}
    _, regions = await get(fleet, "/api/regions")
    assert {r["state"] for r in regions} == {"unknown"}
    headers = await _headers(fleet, "/api/regions")
    assert headers["x-fleetbus-hub"].startswith("disconnected; since=")

    await fleet.restart("hub", daemon=False)
    await all_online_and_converged(fleet)
    _, hub = await get(fleet, "/api/hub")
    assert hub["connected"] is True


async def _headers(fleet: DevFleet, path: str) -> dict[str, str]:
    url = urllib.parse.urlsplit(dashboard(fleet) + path.lstrip("/"))
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        auth = f"Authorization: Bearer {fleet.dashboard_token}\r\n"
        writer.write(
            f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n{auth}Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        head = (await asyncio.wait_for(reader.read(65536), 5)).decode(errors="replace").split("\r\n\r\n")[0]
    finally:
        writer.close()
    return {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.splitlines()[1:])
    }


async def test_every_route_but_health_needs_a_token_and_a_viewer_only_reads(fleet, tmp_path):
    url = urllib.parse.urlsplit(dashboard(fleet))
    host, port = url.hostname or "", url.port or 80

    async def ask(path: str, token: str | None = None, method: str = "GET") -> str:
        return await _raw_get(host, port, path, f"127.0.0.1:{port}", token=token, method=method)

    assert (await ask("/health")).startswith("HTTP/1.1 200")
    for path in ("/", "/api/edges", "/api/stream", "/docs", "/openapi.json", "/static/app.js"):
        answer = await ask(path)
        assert answer.startswith("HTTP/1.1 401"), (path, answer[:200])
        assert "fleetbus token create" in answer
        assert "r1-e1" not in answer
    # Not the hub's: garbage, a token another key signed, one of the hub's that expired.
    stranger = Signer(identity.ensure(tmp_path, "stranger"))
    hub_key = Signer(identity.load(fleet.plan.site("hub").signing_key_path))
    soon = utcnow() + timedelta(hours=1)
    forged, _ = apitoken.mint(stranger, role=Role.ADMIN, expires=soon, issued_by="mallory")
    expired, _ = apitoken.mint(
        hub_key, role=Role.ADMIN, expires=utcnow() - timedelta(seconds=1), issued_by="x"
    )
    for bad, why in (
        ("fbv1.e30.AAAA", "not a dashboard token"),
        (forged, "not signed by this hub"),
        (expired, "expired"),
    ):
        answer = await ask("/api/edges", bad)
        assert answer.startswith("HTTP/1.1 401"), (why, answer[:200])
        assert why in answer

    # A viewer's token, from `fleetbus token create`: reads work, writes do not.
    made = await arun_cli(
        "token", "create", "--role", "viewer", "--expires", "1h", "--reason", "wall", *hub_args(fleet.plan)
    )
    assert made.returncode == 0, made.stderr
    viewer = made.stdout.strip()
    assert (await ask("/api/edges", viewer)).startswith("HTTP/1.1 200")
    for method in ("POST", "PUT", "DELETE"):
        answer = await ask("/api/edges", viewer, method)
        assert answer.startswith("HTTP/1.1 403"), (method, answer[:200])
        assert "read-only" in answer

    # The login URL keeps the token in an HttpOnly cookie and takes it off the address bar.
    answer = await ask(f"/?token={viewer}")
    head = answer.split("\r\n\r\n", 1)[0].lower()
    assert head.startswith("http/1.1 303"), head
    assert "location: /\r\n" in head + "\r\n"
    assert f"set-cookie: fleetbus_token={viewer.lower()}" in head
    assert "httponly" in head
    assert "samesite=strict" in head

    # The audit trail has who asked for the token, never the token.
    audit = await arun_cli("audit", "--json", *hub_args(fleet.plan))
    rows = [r for r in json.loads(audit.stdout) if r["op"] == "token.create"]
    assert [(r["actor"], r["outcome"], r["reason"]) for r in rows][-1] == ("admin", "ok", "wall")
    assert viewer not in audit.stdout


async def test_the_audit_page_shows_who_asked_for_what(fleet):
    """The audit trail on the dashboard: the admin's apply and a viewer's refused one, with
    the identities the hub verified (API and browser)."""
    viewer_creds = identities.operator_creds(fleet.plan.state_dir, identities.VIEWER)
    profile = Profile(name="audited", spec=ProfileSpec(config={"a": 1}))
    async with await FleetClient.connect(
        fleet.plan.site("hub").server.client_url,
        creds=admin_creds(fleet.plan),
        ca=identities.ca_cert(fleet.plan.state_dir),
    ) as admin:
        await admin.profiles.apply(profile, reason="for the audit page")
    async with await FleetClient.connect(
        fleet.plan.site("hub").server.client_url,
        creds=viewer_creds,
        ca=identities.ca_cert(fleet.plan.state_dir),
    ) as viewer:
        with pytest.raises(ForbiddenError):
            await viewer.profiles.apply(profile, reason="a viewer tries")
    _, records = await get(fleet, "/api/audit?hours=1")
    applies = [
        (r["actor"], r["op"], r["target"], r["outcome"], r["reason"])
        for r in records
        if r["op"] == "profile.apply"
    ]
    assert applies == [  # newest first
        ("viewer", "profile.apply", "profile audited", "refused", "a viewer tries"),
        ("admin", "profile.apply", "profile audited", "ok", "for the audit page"),
    ]
    _, only_viewer = await get(fleet, "/api/audit?hours=1&actor=viewer")
    assert {r["actor"] for r in only_viewer} == {"viewer"}
    url = dashboard(fleet) + "api/audit?hours=0"
    status, body = await http_get(url, timeout=5, token=fleet.dashboard_token)
    assert status == 422
    assert b"hours" in body

    async with chromium() as browser:
        await asyncio.to_thread(browser.get, fleet.login_url)
        await asyncio.to_thread(browser.get, dashboard(fleet) + "#/audit")

        def shown() -> list[list[str]]:
            found = browser.find_elements(By.CSS_SELECTOR, '#audit tr[data-op="profile.apply"]')
            return [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in found]

        async def both_rows() -> list[list[str]] | None:
            rows = await asyncio.to_thread(shown)
            return rows if len(rows) == 2 else None

        rows = await eventually(both_rows, timeout=20, what="the two applies on the audit page")
        assert [(r[1], r[6], r[7]) for r in rows] == [
            ("viewer", "refused", "a viewer tries"),
            ("admin", "ok", "for the audit page"),
        ]
        await asyncio.to_thread(browser.save_screenshot, str(OUTPUT / "audit.png"))


async def _token_of(fleet: DevFleet, *regions: str) -> str:
    scope = [arg for r in regions for arg in ("--region", r)]
    made = await arun_cli(
        "token", "create", "--role", "viewer", *scope, "--expires", "1h", *hub_args(fleet.plan)
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


async def test_a_token_of_some_regions_shows_only_their_edges(fleet):
    await all_online_and_converged(fleet)
    mine, other = await _token_of(fleet, "r1"), await _token_of(fleet, "r9")

    async def read(path: str, token: str) -> tuple[int, Any]:
        status, body = await http_get(dashboard(fleet) + path.lstrip("/"), timeout=5, token=token)
        return status, json.loads(body)

    assert (await read("/api/edges", mine))[1]["total"] == len(EDGES)
    assert (await read("/api/edges", other))[1]["total"] == 0
    status, body = await read("/api/edges/r1-e1", other)
    assert status == 404  # as for an edge nobody knows
    assert [r["region"] for r in (await read("/api/regions", mine))[1]] == ["r1"]
    assert (await read("/api/regions", other))[1] == []
    assert (await read("/api/compliance", other))[1]["total"] == 0
    assert (await read("/api/events", mine))[1]  # r1's edges have events ...
    assert (await read("/api/events", other))[1] == []  # ... that r9's token does not see
    status, body = await read("/api/audit", other)
    assert status == 403
    assert "every region" in body["error"]

    # The live feed: a profile change moves every edge (and tells every feed `profiles`); the
    # feed of r9's token tells `profiles` with no edge or event of r1 before it.
    async with sse(fleet, other) as feed, sse(fleet, mine) as shown:
        async with await FleetClient.connect(
            fleet.plan.site("hub").server.client_url,
            creds=admin_creds(fleet.plan),
            ca=identities.ca_cert(fleet.plan.state_dir),
        ) as admin:
            await admin.profiles.apply(Profile(name="scoped", spec=ProfileSpec(config={"b": 2})))

        async def until_profiles(stream: Sse) -> list[tuple[str, Any]]:
            seen = []
            while True:
                name, data = await asyncio.wait_for(stream.next(), 20)
                seen.append((name, data))
                if name == "profiles":
                    return seen

        for_other = await until_profiles(feed)
        for_mine = await until_profiles(shown)
        assert "r1-e1" not in json.dumps(for_other), for_other
        assert {name for name, _ in for_other} <= {"hello", "hub", "profiles"}, for_other
        assert "r1-e1" in json.dumps(for_mine)
    audit = json.loads((await arun_cli("audit", "--json", *hub_args(fleet.plan))).stdout)
    assert any("of regions r9" in r["detail"] for r in audit if r["op"] == "token.create")
