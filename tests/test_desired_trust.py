"""Desired state you can trust, attacked on real servers (docs/security.md#signed-desired-state).

A compromised regional (these tests hold its own key) writes forged, tampered, unsigned and
replayed records, and a genuine stub of a profile that selects its edges, into the keys of
its `assigned` bucket that its edges source. Every edge keeps what it
applied, counts each refusal, reports it upstream as an alert that reaches the hub, and
takes the next genuine revision. Operators' writes go through the hub's desk: a viewer's
is refused and recorded in the audit trail; an admin cannot write the buckets directly.
"""

import asyncio
import json
import time
from datetime import timedelta

import nats.errors
import pytest

from edge.drivers.local import APPLIED_FILE, read_applied
from fleetbus.core import trust
from fleetbus.devfleet import identities
from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.errors import CredentialsRefusedError, ForbiddenError
from fleetbus.runtime import identity
from fleetbus.runtime.signing import Signer, stub_record
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.base import utcnow
from schemas.codec import JSON, decode_body, encode_body
from schemas.desk import AuditRecord
from schemas.override import OverrideScope
from schemas.profile import Profile, ProfileSpec
from tests.conftest import admin_creds, connect_as, hub_args
from tests.fleetprobe import applied_hash, client_of
from tests.helpers import arun_cli, eventually

EDGES = ("r1-e1", "r1-e2")
PROFILES = subjects.kv_stream(subjects.PROFILES_BUCKET)
KEY = subjects.kv_subject(subjects.PROFILES_BUCKET, "base")


def handed(edge: str) -> str:
    """Where the regional hands `edge` the profile `base` (its replica's source)."""
    key = subjects.assigned_key(edge, subjects.ASSIGNED_PROFILE, "base")
    return subjects.kv_subject(subjects.ASSIGNED_BUCKET, key)


def profile(version: str, revision: int | None = None) -> Profile:
    return Profile(name="base", revision=revision, spec=ProfileSpec(config={"version": version}))


async def all_applied(client: FleetClient) -> dict[str, str] | None:
    """{edge: hash} once every edge applied what the hub says it should, else None."""
    hashes = {}
    for edge in EDGES:
        desired, _ = await client.explain(edge)
        if await applied_hash(client, edge) != desired.hash:
            return None
        hashes[edge] = desired.hash
    return hashes


async def refusals(fleet: DevFleet, edge: str) -> dict[str, float]:
    """`fleetbus_desired_refused_total` of `edge`, by reason."""
    url = f"http://127.0.0.1:{fleet.plan.site(edge).daemon_http_port}/metrics"
    found = {}
    for line in (await http_get(url, 2.0))[1].decode().splitlines():
        if line.startswith('fleetbus_desired_refused_total{bucket="profiles"'):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


async def test_a_compromised_regional_cannot_make_its_edges_apply_anything(fleet, tmp_path):
    async with await client_of(fleet) as client:
        await client.profiles.apply(profile("1"), reason="first")
        await client.profiles.apply(profile("2"), reason="second")
        before = await eventually(lambda: all_applied(client), timeout=30, what="v2 applied everywhere")
        hub = await connect_as(fleet.plan, "hub")
        try:
            v1, v2 = [await hub.jetstream().get_msg(PROFILES, seq=seq) for seq in (1, 2)]
        finally:
            await hub.close()
        assert decode_body(Profile, v2.data, subject=KEY).revision == 2

        # The attacker: the regional's own identity at its own server, where it may do anything.
        regional = await connect_as(fleet.plan, "r1")
        js = regional.jetstream()
        stub = stub_record(v2.headers)
        assert stub is not None, "the hub signs a stub beside each profile revision"
        evil = encode_body(profile("evil", revision=99), JSON)
        forger = Signer(identity.ensure(tmp_path / "forger", "key"))
        attacks = {
            "unknown_key": (evil, forger.headers(subjects.PROFILES_BUCKET, "base", 99, trust.PUT, evil)),
            "bad_signature": (evil, _signature(v2.headers)),  # the genuine v2's signature on other content
            "unsigned": (evil, {}),
            "replayed": (v1.data, _signature(v1.headers)),  # the genuine, signed, older revision 1
            # The genuine stub of revision 2, which says "not for you": `base` selects every edge.
            "withheld": stub,
        }
        try:
            for reason, (body, headers) in attacks.items():
                for edge in EDGES:
                    await js.publish(handed(edge), body, headers=headers or None)
                for edge in EDGES:
                    await eventually(
                        lambda edge=edge, reason=reason: _counted(fleet, edge, reason),
                        timeout=20,
                        what=f"{edge} refused the {reason} record",
                    )
            # An unsigned delete, too: the profile stays.
            for edge in EDGES:
                await js.publish(handed(edge), b"", headers={"KV-Operation": "DEL"})
            for edge in EDGES:
                await eventually(
                    lambda edge=edge: _counted(fleet, edge, "unsigned", 2), timeout=20, what="unsigned delete"
                )
        finally:
            await regional.close()

        assert await all_applied(client) == before, "an edge applied something the hub did not sign"
        for edge in EDGES:
            counts = await refusals(fleet, edge)
            assert counts == {
                "unknown_key": 1,
                "bad_signature": 1,
                "unsigned": 2,
                "replayed": 1,
                "withheld": 1,
            }, (
                edge,
                counts,
            )
        # An edge's replica keeps one record per key: the forged delete pushed the genuine one
        # out. Restarted, each edge reconciles from what it took (kept with its revisions).
        for edge in EDGES:
            await fleet.restart(edge, server=False, daemon=True)
            await eventually(
                lambda edge=edge: _reconciled(fleet, edge), timeout=20, what=f"{edge} reconciled"
            )
            record = read_applied(fleet.plan.site(edge).workdir / "daemon" / APPLIED_FILE) or {}
            assert record.get("hash") == before[edge], edge
        assert await all_applied(client) == before, "a restarted edge lost what it had taken"

        # Each edge told the hub, as alerts.
        seen: set[tuple[str, str]] = set()
        wanted = {(edge, reason) for edge in EDGES for reason in attacks}

        async def alerts() -> None:
            async for event in client.watch_events(kinds=["alert"], since=utcnow() - timedelta(minutes=5)):
                if event.data.get("alert") == "desired_state_refused":
                    seen.add((event.edge, str(event.data.get("reason"))))
                if wanted <= seen:
                    return

        await asyncio.wait_for(alerts(), 30)

        # The next genuine revision goes through everywhere.
        began = time.monotonic()
        plan = await client.profiles.apply(profile("3"), reason="after the attack")
        assert plan.new.revision == 3
        after = await eventually(lambda: all_applied(client), timeout=30, what="v3 applied everywhere")
        assert after != before
        print(f"\ngenuine revision after the attacks applied everywhere in {time.monotonic() - began:.2f} s")


def _signature(headers) -> dict[str, str]:
    """A stored record's signature headers (not the compare-and-set one its write carried)."""
    return {k: v for k, v in (headers or {}).items() if k.startswith("Fleetbus-")}


async def _said(violations: list[str], what: str) -> bool:
    return any("permissions violation" in v.lower() and what in v.lower() for v in violations)


async def _reconciled(fleet: DevFleet, edge: str) -> bool:
    """Whether `edge`'s daemon (since its last start) finished a reconcile."""
    url = f"http://127.0.0.1:{fleet.plan.site(edge).daemon_http_port}/metrics"
    text = (await http_get(url, 2.0))[1].decode()
    return any(
        line.startswith("fleetbus_reconciles_total{") and not line.endswith(" 0.0")
        for line in text.splitlines()
    )


async def _counted(fleet: DevFleet, edge: str, reason: str, least: float = 1) -> bool:
    return (await refusals(fleet, edge)).get(reason, 0) >= least


async def test_writes_go_through_the_desk_with_the_callers_verified_identity(fleet):
    viewer_creds = identities.operator_creds(fleet.plan.state_dir, identities.VIEWER)
    async with await client_of(fleet, viewer_creds) as viewer:
        with pytest.raises(ForbiddenError, match=r"role viewer may not profile\.apply"):
            await viewer.profiles.apply(profile("1"), reason="a viewer tries")
        assert await viewer.profiles.all() == []
    async with await client_of(fleet) as admin:
        plan = await admin.profiles.apply(profile("1"), reason="the admin does")
        assert plan.new.updated_by == "admin"  # whom the hub verified
        # Not even the admin writes the bucket directly, makes a stream that could republish
        # into it, or listens on the desk to answer for the hub: its server refuses.
        violations: list[str] = []

        async def on_error(exc: Exception) -> None:
            violations.append(str(exc))

        nc = await connect_as(
            fleet.plan,
            "hub",
            nkeys_seed=str(admin_creds(fleet.plan)),
            inbox_prefix="_INBOX",
            error_cb=on_error,
        )
        try:
            js = nc.jetstream(timeout=2)
            with pytest.raises((nats.errors.Error, TimeoutError)):
                await js.publish(KEY, encode_body(profile("direct", 5), JSON))
            with pytest.raises((nats.errors.Error, TimeoutError)):
                await js.purge_stream(PROFILES)
            with pytest.raises((nats.errors.Error, TimeoutError)):
                await js.add_stream(name="ECHO", subjects=["echo.>"])
            await nc.subscribe(subjects.HUB_DESK)
            await eventually(
                lambda: _said(violations, "subscription"), timeout=5, what="the desk subscription refused"
            )
        finally:
            await nc.close()
        assert [p.spec.config for p in await admin.profiles.all()] == [{"version": "1"}]

    # The audit trail has both, with the verified identities and the reasons.
    hub = await connect_as(fleet.plan, "hub")
    try:
        sub = await hub.jetstream().subscribe(subjects.hub_audit(), ordered_consumer=True)
        records = []
        while len(records) < 2:
            msg = await sub.next_msg(timeout=10)
            if (record := decode_body(AuditRecord, msg.data, subject=msg.subject)).op == "profile.apply":
                records.append(record)
    finally:
        await hub.close()
    assert [(r.actor, r.op, r.outcome, r.reason) for r in records] == [
        ("viewer", "profile.apply", "refused", "a viewer tries"),
        ("admin", "profile.apply", "ok", "the admin does"),
    ]
    assert records[1].revision == 1
    assert records[1].target == "profile base"
    assert json.dumps(records[0].model_dump(mode="json"))  # plain JSON any tool reads


async def test_operators_with_roles_and_regions_and_the_audit_trail(fleet, tmp_path):
    # The admin makes two operators: their keys are generated here, the hub admits them.
    for name, role, regions in (("ops-r1", "operator", ["r1"]), ("ops-r2", "operator", ["r2"])):
        region_args = [arg for r in regions for arg in ("--region", r)]
        args = ("operator", "add", name, "--role", role, *region_args, "--out", str(tmp_path))
        done = await arun_cli(*args, "--reason", "on call", *hub_args(fleet.plan))
        assert done.returncode == 0, done.stderr
    listed = json.loads((await arun_cli("operator", "ls", "--json", *hub_args(fleet.plan))).stdout)
    assert {(r["name"], r["role"], tuple(r["regions"])) for r in listed} >= {
        ("admin", "admin", ()),
        ("viewer", "viewer", ()),
        ("ops-r1", "operator", ("r1",)),
        ("ops-r2", "operator", ("r2",)),
    }
    async with await client_of(fleet) as admin:
        await eventually(
            lambda: _presence_of(admin, "r1-e1"), timeout=20, what="the hub knows r1-e1's region"
        )
    patch = {"config": {"ntp": "ntp.store.local"}}
    async with await client_of(fleet, tmp_path / "ops-r1.nk") as ops_r1:
        stored = await ops_r1.overrides.set(OverrideScope.EDGE, "r1-e1", patch, reason="store NTP")
        assert stored.override.owner == "ops-r1"
        with pytest.raises(ForbiddenError, match="profiles reach every region"):
            await ops_r1.profiles.apply(profile("1"), reason="not mine to do")
        with pytest.raises(ForbiddenError, match="not of groups"):
            await ops_r1.overrides.set(OverrideScope.GROUP, "r1", patch, reason="a group")
    async with await client_of(fleet, tmp_path / "ops-r2.nk") as ops_r2:
        with pytest.raises(ForbiddenError, match="the edge is in region r1"):
            await ops_r2.overrides.set(OverrideScope.EDGE, "r1-e1", patch, reason="another region's edge")

        # Revoked: its open connection is closed and its key refused from then on.
        done = await arun_cli("operator", "revoke", "ops-r2", "--reason", "left", *hub_args(fleet.plan))
        assert done.returncode == 0, done.stderr
        await eventually(lambda: _dropped(ops_r2), timeout=10, what="ops-r2's connection closed")
    with pytest.raises(CredentialsRefusedError):
        await client_of(fleet, tmp_path / "ops-r2.nk")

    # `fleetbus audit` has every write of this test, with the verified identities and reasons.
    done = await arun_cli("audit", "--since", "1h", "--json", *hub_args(fleet.plan))
    assert done.returncode == 0, done.stderr
    rows = [(r["actor"], r["op"], r["outcome"], r["reason"]) for r in json.loads(done.stdout)]
    assert rows[0] == ("admin", "token.create", "ok", "dev up: the local admin's login")  # the fleet's start
    rows = rows[1:]
    assert rows == [
        ("admin", "operator.add", "ok", "on call"),
        ("admin", "operator.add", "ok", "on call"),
        ("ops-r1", "override.set", "ok", "store NTP"),
        ("ops-r1", "profile.apply", "refused", "not mine to do"),
        ("ops-r1", "override.set", "refused", "a group"),
        ("ops-r2", "override.set", "refused", "another region's edge"),
        ("admin", "operator.revoke", "ok", "left"),
    ]
    only = json.loads((await arun_cli("audit", "--actor", "ops-r1", "--json", *hub_args(fleet.plan))).stdout)
    assert {r["actor"] for r in only} == {"ops-r1"}


async def _dropped(client: FleetClient) -> bool:
    return client.bus.closed or not client.bus.connected


async def _presence_of(client: FleetClient, edge: str) -> bool:
    return any(row.edge == edge for row in await client.presence())


def _set_setting(fleet: DevFleet, site: str, name: str, value: object) -> None:
    """Replace one top-level setting in `site`'s daemon.toml (a restart reads it)."""
    path = fleet.plan.site(site).workdir / "daemon.toml"
    lines = [line for line in path.read_text().splitlines(keepends=True) if not line.startswith(f"{name} =")]
    path.write_text(f"{name} = {json.dumps(value)}\n" + "".join(lines))


async def test_a_key_rotation_keeps_every_edge_applying(fleet):
    old = identities.signing_key(fleet.plan).public_key
    new = identity.ensure(fleet.plan.site("hub").workdir / "identity", "desired-state-2")
    async with await client_of(fleet) as client:
        await client.profiles.apply(profile("1"), reason="before the rotation")
        await eventually(lambda: all_applied(client), timeout=30, what="v1 applied")
        # 1. Edges trust both keys; 2. the hub signs with the new one; 3. it signs everything again.
        for edge in EDGES:
            _set_setting(fleet, edge, "trusted_keys", [old, new.public_key])
            await fleet.restart(edge, server=False, daemon=True)
        _set_setting(fleet, "hub", "signing_key", str(new.seed_path))
        _set_setting(fleet, "hub", "trusted_keys", [old])  # it still reads what it signed before
        await fleet.restart("hub", server=False, daemon=True)
    async with await client_of(fleet) as client:
        assert await client.hub_keys() == (new.public_key,)
        done = await arun_cli("keys", "resign", "--reason", "rotation", *hub_args(fleet.plan))
        assert done.returncode == 0, done.stderr
        said = " ".join(done.stdout.split())  # rich wraps the key onto a line of its own
        assert f"1 profile(s) and 0 override(s) now signed by {new.public_key}" in said
        await eventually(lambda: all_applied(client), timeout=30, what="the re-signed revision applied")
        # 4. Edges drop the old key: what they hold is signed with the new one, so nothing is refused.
        for edge in EDGES:
            _set_setting(fleet, edge, "trusted_keys", [new.public_key])
            await fleet.restart(edge, server=False, daemon=True)
        plan = await client.profiles.apply(profile("3"), reason="after the rotation")
        assert plan.new.revision == 3
        await eventually(lambda: all_applied(client), timeout=30, what="v3 applied with the new key only")
        for edge in EDGES:
            assert await refusals(fleet, edge) == {}, edge
