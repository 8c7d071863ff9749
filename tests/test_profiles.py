"""Issue 3 acceptance: profiles published at the hub converge on every edge, across cuts.

A real hub <- r1 <- (r1-e1, r1-e2) fleet: four nats-servers, four daemons as processes, a
TCP proxy on every leaf link (`fleet.links`), the `fleetbus` CLI as a user runs it.
"""

import asyncio
import json
import time
from pathlib import Path

import pytest

from edge.drivers.local import APPLIED_FILE, read_applied
from fleetbus.core.compliance import State
from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.plan import FleetPlan
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from tests import conftest
from tests.conftest import admin_creds, connect_as
from tests.helpers import arun_cli, eventually

pytestmark = pytest.mark.slow

EDGES = ("r1-e1", "r1-e2")


def base_profile(version: str = "1.0", **config: object) -> dict[str, object]:
    return {
        "name": "base",
        "selector": {"match_labels": {"env": "dev"}},
        "priority": 10,
        "spec": {
            "components": [{"name": "agent", "image": "registry.example/agent", "version": version}],
            "config": {"ntp": "pool.ntp.org", **config},
        },
    }


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def hub_args(fleet: DevFleet) -> tuple[str, ...]:
    return conftest.hub_args(fleet.plan)


def applied(fleet: DevFleet, edge: str) -> dict[str, object]:
    return read_applied(fleet.plan.site(edge).workdir / "daemon" / APPLIED_FILE) or {}


async def client_for(fleet: DevFleet) -> FleetClient:
    return await FleetClient.connect(fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan))


async def converged(client: FleetClient, edges: tuple[str, ...] = EDGES) -> dict[str, str] | None:
    """{edge: desired hash} once every edge in `edges` is converged at the hub, else None."""
    rows = {r.edge: r for r in await client.compliance()}
    if all(e in rows and rows[e].state is State.CONVERGED for e in edges):
        return {e: rows[e].desired_hash or "" for e in edges}
    return None


async def converged_on(client: FleetClient, edge: str, desired: str) -> bool:
    rows = {r.edge: r for r in await client.compliance()}
    row = rows.get(edge)
    return row is not None and row.state is State.CONVERGED and row.reported_hash == desired


async def apply(fleet: DevFleet, tmp_path: Path, profile: dict[str, object], *extra: str) -> str:
    result = await arun_cli(
        "profile", "apply", "-f", str(write(tmp_path / "p.json", profile)), *extra, *hub_args(fleet)
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_apply_converges_on_every_edge_and_status_says_so(fleet, tmp_path):
    began = time.monotonic()
    stdout = await apply(fleet, tmp_path, base_profile())
    assert "revision 1" in stdout
    assert "+  - name: agent" in stdout  # the diff against nothing
    async with await client_for(fleet) as client:
        hashes = await eventually(lambda: converged(client), timeout=20, what="2/2 converged")
        print(
            f"\nprofile apply -> 2/2 converged at the hub: {time.monotonic() - began:.2f}s (incl. CLI start)"
        )
        for edge in EDGES:
            desired, report = await client.explain(edge)
            assert hashes[edge] == desired.hash
            assert report is not None
            assert report.apply_result.desired_hash == desired.hash
            record = applied(fleet, edge)
            assert record["hash"] == desired.hash
            assert record["document"]["components"]["agent"]["version"] == "1.0"
    status = await arun_cli("status", *hub_args(fleet))
    assert status.returncode == 0, status.stderr
    assert "2 edges: 2 online · 2 converged" in status.stdout
    as_json = json.loads((await arun_cli("status", "--json", *hub_args(fleet))).stdout)
    assert {(e["edge"], e["state"]) for e in as_json["edges"]} == {(e, "converged") for e in EDGES}


async def test_override_changes_one_edge_and_explain_names_it(fleet, tmp_path):
    await apply(fleet, tmp_path, base_profile())
    async with await client_for(fleet) as client:
        before = await eventually(lambda: converged(client), timeout=20, what="2/2 converged")
        patch = write(tmp_path / "patch.yaml", {"config": {"ntp": "ntp.site.local"}})
        result = await arun_cli(
            "override",
            "set",
            "r1-e1",
            "-f",
            str(patch),
            "--reason",
            "site NTP",
            *hub_args(fleet),
        )
        assert result.returncode == 0, result.stderr
        await eventually(
            lambda: _changed_only_e1(client, before), timeout=20, what="e1 converged on its override"
        )
    assert applied(fleet, "r1-e1")["document"]["config"]["ntp"] == "ntp.site.local"
    assert applied(fleet, "r1-e2")["document"]["config"]["ntp"] == "pool.ntp.org"
    explained = await arun_cli("explain", "r1-e1", "--json", *hub_args(fleet))
    assert explained.returncode == 0, explained.stderr
    rows = {v["path"]: v for v in json.loads(explained.stdout)["values"]}
    assert rows["config.ntp"]["value"] == "ntp.site.local"
    assert rows["config.ntp"]["source"] == "override edge/r1-e1 (admin: site NTP)"
    assert rows["components.agent.version"]["source"] == "profile base@1"
    human = await arun_cli("explain", "r1-e1", *hub_args(fleet))
    assert "override edge/r1-e1" in human.stdout


async def _changed_only_e1(client: FleetClient, before: dict[str, str]) -> bool:
    now = await converged(client)
    return bool(now) and now["r1-e1"] != before["r1-e1"] and now["r1-e2"] == before["r1-e2"]


async def desired_hash(client: FleetClient, edge: str) -> str:
    desired, _ = await client.explain(edge)
    return desired.hash


@pytest.mark.parametrize("cut_seconds", [5, 60])
async def test_cut_edge_restarts_on_local_state_and_catches_up_after_heal(fleet, tmp_path, cut_seconds):
    await apply(fleet, tmp_path, base_profile("1.0"))
    async with await client_for(fleet) as client:
        before = await eventually(lambda: converged(client), timeout=20, what="2/2 converged")
        link = fleet.links["r1-e1"]
        link.cut()
        cut_at = time.monotonic()
        for version in ("2.0", "3.0"):  # two changes while e1 is cut off; e2 follows each
            await apply(fleet, tmp_path, base_profile(version))
            e2_wants = await desired_hash(client, "r1-e2")
            await eventually(
                lambda wants=e2_wants: converged_on(client, "r1-e2", wants), timeout=20, what="e2 converged"
            )
        latest = await desired_hash(client, "r1-e1")
        assert latest != before["r1-e1"]

        # e1's daemon restarts while cut, with its applied state gone: it can only get the
        # last state it knew from its local replica.
        daemon = fleet.daemons["r1-e1"]
        await daemon.stop()
        applied_file = fleet.plan.site("r1-e1").workdir / "daemon" / APPLIED_FILE
        applied_file.unlink()
        await daemon.start()
        record = await eventually(lambda: _read(applied_file), timeout=20, what="e1 re-applied")
        assert record["hash"] == before["r1-e1"]
        assert record["document"]["components"]["agent"]["version"] == "1.0"
        assert not await converged_on(client, "r1-e1", latest)

        await asyncio.sleep(max(0.0, cut_seconds - (time.monotonic() - cut_at)))  # the cut itself
        link.heal()
        healed_at = time.monotonic()
        await eventually(lambda: converged_on(client, "r1-e1", latest), timeout=60, what="e1 caught up")
        heal_to_converge = time.monotonic() - healed_at
        print(f"\ncut {cut_seconds}s: heal -> e1 converged at the hub in {heal_to_converge:.2f}s")
        assert _read_sync(applied_file)["document"]["components"]["agent"]["version"] == "3.0"
        assert heal_to_converge <= 3.0
    # Every event e1 stored while cut (and before) reached the hub once: no loss, no duplicate.
    local = await _event_ids(fleet.plan, "r1-e1", "r1-e1")
    await eventually(
        lambda: _hub_has_exactly(fleet, local), timeout=20, what="e1's events at the hub, once each"
    )


async def _event_ids(plan: FleetPlan, site: str, edge: str) -> list[str]:
    """ce-id of every event in the EVENTS stream of `site`'s server from `edge`."""
    nc = await connect_as(plan, site)
    try:
        js = nc.jetstream()
        info = await js.stream_info(subjects.EVENTS_STREAM)
        ids = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(subjects.EVENTS_STREAM, seq)
            if msg.subject.startswith(subjects.edge_events("r1", edge).removesuffix(">")):
                ids.append((msg.headers or {})["ce-id"])
        return ids
    finally:
        await nc.close()


async def _hub_has_exactly(fleet: DevFleet, ids: list[str]) -> bool:
    at_hub = await _event_ids(fleet.plan, "hub", "r1-e1")
    assert len(at_hub) == len(set(at_hub)), "an event reached the hub twice"
    return sorted(at_hub) == sorted(ids)


async def _read(path: Path) -> dict[str, object] | None:
    return read_applied(path)


def _read_sync(path: Path) -> dict[str, object]:
    return read_applied(path) or {}


async def test_rollback_converges_like_any_change(fleet, tmp_path):
    await apply(fleet, tmp_path, base_profile("1.0"))
    async with await client_for(fleet) as client:
        first = await eventually(lambda: converged(client), timeout=20, what="v1 converged")
        await apply(fleet, tmp_path, base_profile("2.0"))
        await eventually(lambda: _all_moved_from(client, first), timeout=20, what="v2 converged")
        result = await arun_cli("profile", "rollback", "base", "--to", "1", *hub_args(fleet))
        assert result.returncode == 0, result.stderr
        assert "revision 3" in result.stdout
        assert "-    version: '2.0'" in result.stdout
        back = await eventually(lambda: _all_moved_from_v2(client), timeout=20, what="rollback converged")
        assert back == first  # same content as revision 1, so the same hash
    for edge in EDGES:
        record = applied(fleet, edge)
        assert record["profile_revisions"] == {"base": 3}
        assert record["document"]["components"]["agent"]["version"] == "1.0"
    history = await arun_cli("profile", "history", "base", *hub_args(fleet))
    assert [line.split()[1] for line in history.stdout.splitlines() if line.startswith("│")][:3] == [
        "1",
        "2",
        "3",
    ]
    diff = await arun_cli("profile", "diff", "base", "1", "2", *hub_args(fleet))
    assert "-    version: '1.0'" in diff.stdout
    assert "+    version: '2.0'" in diff.stdout


async def _all_moved_from(client: FleetClient, old: dict[str, str]) -> dict[str, str] | None:
    now = await converged(client)
    return now if now and all(now[e] != old[e] for e in EDGES) else None


async def _all_moved_from_v2(client: FleetClient) -> dict[str, str] | None:
    now = await converged(client)
    if not now:
        return None
    reports = {r.edge: r for r in await client.reports()}
    return now if all(reports[e].apply_result.profile_revisions == {"base": 3} for e in EDGES) else None


async def test_bad_input_is_refused_and_publishes_nothing(fleet, tmp_path):
    bad = base_profile()
    bad["priority"] = "high"
    del bad["spec"]["components"][0]["version"]
    path = write(tmp_path / "bad.json", bad)
    result = await arun_cli("profile", "apply", "-f", str(path), *hub_args(fleet))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "priority" in result.stderr
    assert "spec.components.0: Value error, version required" in result.stderr
    assert "Traceback" not in result.stderr
    async with await client_for(fleet) as client:
        assert await client.profiles.all() == []

        await apply(fleet, tmp_path, base_profile("1.0"))
        stale = await arun_cli(
            "profile",
            "apply",
            "-f",
            str(write(tmp_path / "v2.json", base_profile("2.0"))),
            "--expect-revision",
            "0",
            *hub_args(fleet),
        )
        assert stale.returncode == 4  # conflict (fleetbus.errors.EXIT_CODES)
        assert "at revision 1, not 0" in stale.stderr
        assert (await client.profiles.get("base")).revision == 1
        dry = await apply(fleet, tmp_path, base_profile("2.0"), "--dry-run", "--expect-revision", "1")
        assert "would become revision 2" in dry
        assert (await client.profiles.get("base")).revision == 1
        before = await eventually(lambda: converged(client), timeout=20, what="v1 converged")
    await _inject_garbage_and_check_edges_keep_state(fleet, tmp_path, before)


async def _inject_garbage_and_check_edges_keep_state(
    fleet: DevFleet, tmp_path: Path, before: dict[str, str]
) -> None:
    # At the hub, and (as a compromised regional could) where each edge reads it.
    nc = await connect_as(fleet.plan, "hub")
    regional = await connect_as(fleet.plan, "r1")
    try:
        await nc.jetstream().publish(
            subjects.kv_subject(subjects.PROFILES_BUCKET, "base"), b"\xc1not msgpack"
        )
        for edge in EDGES:
            key = subjects.assigned_key(edge, subjects.ASSIGNED_PROFILE, "base")
            await regional.jetstream().publish(
                subjects.kv_subject(subjects.ASSIGNED_BUCKET, key), b"\xc1not msgpack"
            )
    finally:
        await nc.close()
        await regional.close()
    for edge in EDGES:
        url = f"http://127.0.0.1:{fleet.plan.site(edge).daemon_http_port}/metrics"
        await eventually(
            # Unsigned, it is refused before it is even decoded (docs/security.md).
            lambda url=url: _metric_at_least(
                url, 'fleetbus_desired_refused_total{bucket="profiles",reason="unsigned"}', 1
            ),
            timeout=20,
            what=f"{edge} refused the bad value",
        )
        assert applied(fleet, edge)["hash"] == before[edge]
        assert fleet.daemons[edge].running
    async with await client_for(fleet) as client:
        assert await converged(client) == before  # the hub also keeps the last good revision
        # and the next good revision goes through as usual
        await apply(fleet, tmp_path, base_profile("4.0"))
        assert (await client.profiles.get("base")).revision == 2
        await eventually(lambda: _all_moved_from(client, before), timeout=20, what="converged after garbage")


async def _metric_at_least(url: str, name: str, least: float) -> bool:
    text = (await http_get(url, 2.0))[1].decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1]) >= least
    return False


async def test_expired_override_stops_applying_by_itself(fleet, tmp_path):
    await apply(fleet, tmp_path, base_profile())
    async with await client_for(fleet) as client:
        before = await eventually(lambda: converged(client), timeout=20, what="2/2 converged")
        patch = write(tmp_path / "patch.json", {"config": {"maintenance": True}})
        result = await arun_cli(
            "override",
            "set",
            "r1-e2",
            "-f",
            str(patch),
            "--reason",
            "window",
            "--expires",
            "4s",
            *hub_args(fleet),
        )
        assert result.returncode == 0, result.stderr
        await eventually(
            lambda: _only_e2_is(client, before, different=True), timeout=20, what="e2 under its override"
        )
        await eventually(
            lambda: _only_e2_is(client, before, different=False), timeout=20, what="override expired at e2"
        )
    assert "maintenance" not in applied(fleet, "r1-e2")["document"]["config"]
    listing = await arun_cli("override", "ls", *hub_args(fleet))
    assert "(expired)" in listing.stdout


async def _only_e2_is(client: FleetClient, before: dict[str, str], *, different: bool) -> bool:
    now = await converged(client)
    return bool(now) and now["r1-e1"] == before["r1-e1"] and (now["r1-e2"] != before["r1-e2"]) == different
