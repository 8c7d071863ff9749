"""Sealed secrets (docs/security.md#sealed-secrets): the decisions, the boxes, and a real fleet.

The fleet test sets a secret that a profile selecting region r1 references, then reads every
file of every site (each server's JetStream store and the daemons' state): the plaintext is
in one place only, the driver output of the edge the profile selects. The same scan finds
a marker the profile carries in the store of every site it reaches (every site but r2-e1, which
it does not select), so the scan does read what the streams hold.
"""

import json
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path

import nats.errors
import nats.js.errors
import nkeys
import pytest
from nacl.signing import SigningKey

from edge.drivers.local import SECRETS_DIR
from fleetbus.core import secrets as core
from fleetbus.core.desired import compute
from fleetbus.devfleet import identities
from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.errors import ConfigError, ForbiddenError
from fleetbus.runtime.sealing import SealError, seal, unseal
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.base import utcnow
from schemas.codec import JSON, encode_body
from schemas.inventory import InventorySnapshot
from schemas.profile import LabelSelector, Profile, ProfileSpec
from tests.conftest import connect_as, hub_args, running_fleet
from tests.fleetprobe import applied_hash, client_of, files_holding
from tests.helpers import arun_cli, eventually
from tests.test_enrollment import revoke
from tests.test_security import _filtered_consumer

NOW = datetime(2026, 12, 1, tzinfo=UTC)
REF = {"secretRef": "db-password"}


def _seed() -> str:
    return nkeys.encode_seed(bytes(SigningKey.generate()), nkeys.PREFIX_BYTE_USER).decode()


def _public(seed: str) -> str:
    return nkeys.from_seed(seed.encode()).public_key.decode()


# The decisions (pure)


def test_references_are_found_checked_and_pinned_to_versions():
    document = {"components": {"db": {"config": {"password": REF, "users": [{"secretRef": "u"}]}}}}
    assert core.refs(document) == {"db-password", "u"}
    core.check_refs(document, where="spec")
    # Kubernetes' own secretRef (an object, in raw manifests) is not a reference of ours.
    manifest = {"envFrom": [{"secretRef": {"name": "db"}}]}
    core.check_refs(manifest, where="spec")
    assert core.refs(manifest) == set()
    assert core.pin(manifest, {"db": 1})[0] == manifest
    for bad, says in (
        ({"secretRef": "Bad Name"}, "must name a secret"),
        ({"secretRef": "x", "version": 2}, "remove version"),
    ):
        with pytest.raises(ValueError, match=says):
            core.check_refs({"config": {"a": bad}}, where="spec")
    pinned, paths = core.pin(document, {"db-password": 3})
    assert pinned["components"]["db"]["config"]["password"] == {"secretRef": "db-password", "version": 3}
    assert pinned["components"]["db"]["config"]["users"] == [{"secretRef": "u"}]  # not held: as it was
    assert core.unpinned(pinned) == {"u"}
    assert paths == {("components", "db", "config", "password", "version"): "secret db-password"}


def test_a_rotated_secret_changes_the_desired_hash_and_explain_shows_only_its_version():
    profile = Profile(name="db", revision=4, spec=ProfileSpec(config={"password": REF}))
    v1 = compute([profile], {}, edge="e1", now=NOW, secrets={"db-password": 1})
    v2 = compute([profile], {}, edge="e1", now=NOW, secrets={"db-password": 2})
    assert v1.hash != v2.hash
    rows = {path: (value, source) for path, value, source in v2.explain()}
    assert rows["config.password.version"] == (2, "secret db-password")
    assert rows["config.password.secretRef"] == ("db-password", "profile db@4")


def test_the_plan_seals_what_changed_and_deletes_what_nothing_references():
    held = {
        "e1": core.Wanted("K1", {"a": 1, "b": 1}),
        "e2": core.Wanted("K2", {"a": 1}),
        "e3": core.Wanted("K3", {"a": 1}),
        "e4": core.Wanted("K4", {"a": 1}),
    }
    wanted = {
        "e1": core.Wanted("K1", {"a": 2, "b": 1}),  # a rotated
        "e2": core.Wanted("K2b", {"a": 1}),  # the edge has a new key: everything again
        "e3": core.Wanted("K3", {}),  # no longer selected
        "e4": core.Wanted("K4", {"a": 1}),  # as it is
        "e5": core.Wanted("K5", {"b": 1}),  # new
    }
    plan = core.plan(wanted, held)
    assert plan.write == {"e1": {"a"}, "e2": {"a"}, "e5": {"b"}}
    assert plan.delete == {"e3"}


def test_a_box_opens_only_with_the_key_it_was_sealed_to():
    seed, other = _seed(), _seed()
    box = seal(b"hunter2", _public(seed))
    assert unseal(box, seed) == b"hunter2"
    with pytest.raises(SealError):
        unseal(box, other)
    tampered = box[:-6] + ("A" if box[-6] != "A" else "B") + box[-5:]
    with pytest.raises(SealError):
        unseal(tampered, seed)


# A real fleet: hub <- r1 <- r1-e1, hub <- r2 <- r2-e1


@pytest.fixture
async def two_regions(tmp_path):
    async with running_fleet(tmp_path, regions=2, edges=1) as running:
        yield running


async def _stores_hold(fleet: DevFleet, marker: bytes, sites: set[str]) -> bool:
    """The marker is in the JetStream store of each of `sites` (the scan reads what streams
    hold)."""
    holding = {path.split("/")[0] for path in files_holding(fleet, marker) if "/jetstream/" in path}
    return holding >= sites


def _secret_file(fleet: DevFleet, edge: str) -> Path:
    return fleet.plan.site(edge).workdir / "daemon" / SECRETS_DIR / "db-password"


async def _holds(fleet: DevFleet, edge: str, value: bytes) -> bool:
    path = _secret_file(fleet, edge)
    return path.exists() and path.read_bytes() == value


async def _converged(client: FleetClient, edge: str, version: int) -> bool:
    desired, _ = await client.explain(edge)
    pinned = desired.document["config"].get("password")
    return pinned == {"secretRef": "db-password", "version": version} and (
        await applied_hash(client, edge) == desired.hash
    )


async def _bundle_version(fleet: DevFleet, site: str, edge: str, version: int) -> bool:
    """Whether `site`'s server holds `edge`'s sealed bundle with the secret at `version`."""
    nc = await connect_as(fleet.plan, site)
    try:
        kv = await nc.jetstream(timeout=3).key_value(subjects.SEALED_BUCKET)
        bundle = json.loads((await kv.get(edge)).value or b"{}")
        return bundle["secrets"]["db-password"]["version"] == version
    finally:
        await nc.close()


async def _sealed_for(fleet: DevFleet, site: str) -> set[str]:
    """The edges `site`'s server holds a sealed bundle for."""
    nc = await connect_as(fleet.plan, site)
    try:
        kv = await nc.jetstream(timeout=3).key_value(subjects.SEALED_BUCKET)
        try:
            return set(await kv.keys())
        except nats.js.errors.NoKeysError:
            return set()
    finally:
        await nc.close()


async def _has_stream(fleet: DevFleet, site: str, stream: str) -> bool:
    nc = await connect_as(fleet.plan, site)
    try:
        return any(s.config.name == stream for s in await nc.jetstream(timeout=3).streams_info())
    finally:
        await nc.close()


async def _forge_inventory(fleet: DevFleet, regional: str, edge: str, labels: dict[str, str]) -> None:
    """`regional`'s own identity on its own server stores a snapshot of an edge it made up,
    with the regional's key as the edge's."""
    own = fleet.plan.site(regional).creds_path.read_text().strip()
    snapshot = InventorySnapshot(
        region=regional, edge=edge, seq=1, observed_at=utcnow(), labels=labels, public_key=_public(own)
    )
    nc = await connect_as(fleet.plan, regional)
    try:
        await nc.jetstream(timeout=3).publish(
            subjects.outbox_inventory(regional, edge), encode_body(snapshot, JSON)
        )
    finally:
        await nc.close()


async def _inventory_of(client: FleetClient, edge: str) -> bool:
    return (await client.get_inventory(edge)) is not None


async def _none_sealed(fleet: DevFleet, site: str) -> bool:
    return await _sealed_for(fleet, site) == set()


async def _applied_marker(client: FleetClient, edge: str, marker: str) -> bool:
    desired, _ = await client.explain(edge)
    return (
        desired.document["config"].get("marker") == marker
        and await applied_hash(client, edge) == desired.hash
    )


async def test_a_secret_reaches_only_the_selected_edges_sealed_and_rotates(two_regions: DevFleet, tmp_path):
    fleet = two_regions
    first, second = (f"s3cret-{secrets.token_hex(12)}".encode() for _ in range(2))
    marker = f"marker-{secrets.token_hex(8)}"
    value_file = tmp_path / "value"
    value_file.write_bytes(first)
    done = await arun_cli(
        "secret",
        "set",
        "db-password",
        "--from-file",
        str(value_file),
        "--reason",
        "db",
        *hub_args(fleet.plan),
    )
    assert done.returncode == 0, done.stderr
    assert "version 1" in done.stdout
    profile = Profile(
        name="db",
        description=marker,
        selector=LabelSelector(match_labels={"region": "r1"}),
        spec=ProfileSpec(config={"password": REF, "pool": 5}),
    )
    async with await client_of(fleet) as admin:
        await admin.profiles.apply(profile, reason="the database password for r1")
        await eventually(lambda: _converged(admin, "r1-e1", 1), timeout=40, what="r1-e1 applied secret v1")
        assert await _holds(fleet, "r1-e1", first)
        mode = stat.S_IMODE(_secret_file(fleet, "r1-e1").stat().st_mode)
        assert mode == 0o600, oct(mode)
        # The plaintext is in no stream or bucket at any tier, nor anywhere on r2-e1 (which
        # the profile does not select), nor in any log or config: only in r1-e1's driver output.
        reached = {site.name for site in fleet.plan.sites} - {"r2-e1"}
        await eventually(
            lambda: _stores_hold(fleet, marker.encode(), reached), timeout=20, what="the marker stored"
        )
        assert not {p for p in files_holding(fleet, marker.encode()) if p.startswith("r2-e1/")}
        assert files_holding(fleet, first) == {"r1-e1/daemon/secrets/db-password"}
        assert not _secret_file(fleet, "r2-e1").exists()
        assert await _sealed_for(fleet, "hub") == {"r1-e1"}  # nothing was sealed to r2-e1 at all
        # explain, the dashboard's API and the audit trail show the reference and its version.
        desired, _ = await admin.explain("r1-e1")
        assert ("config.password.version", 1, "secret db-password") in desired.explain()
        status, body = await http_get(
            fleet.plan.site("hub").dashboard_url + "api/edges/r1-e1", timeout=5, token=fleet.dashboard_token
        )
        assert status == 200
        assert first not in body
        shown = json.loads(body)["explain"]
        assert {"path": "config.password.version", "value": 1, "source": "secret db-password"} in shown
        audit = [r for r in await admin.audit(since=NOW) if r.op == "secret.set"]
        assert [(r.actor, r.target, r.revision, r.outcome, r.reason) for r in audit] == [
            ("admin", "secret db-password", 1, "ok", "db")
        ]
        listed = json.loads((await arun_cli("secret", "ls", "--json", *hub_args(fleet.plan))).stdout)
        assert [(r["name"], r["version"], r["updated_by"]) for r in listed] == [("db-password", 1, "admin")]
        assert "sealed" not in listed[0]

        # An edge whose desired state references no secret has no replica of them (it costs
        # nothing); r1-e1 made one, and follows it again after its daemon restarts.
        assert not await _has_stream(fleet, "r2-e1", "KV_sealed")
        assert await _has_stream(fleet, "r1-e1", "KV_sealed")
        await fleet.restart("r1-e1", server=False, daemon=True)

        # A compromised regional r2 reports an edge of its own with its own key, claiming
        # r1's labels: the hub sets `region` from where it hears it, so the profile for r1
        # seals nothing to it (what reaches the hub is checked first).
        await _forge_inventory(fleet, "r2", "r2-fake", {"region": "r1", "env": "dev"})
        await eventually(
            lambda: _inventory_of(admin, "r2-fake"), timeout=20, what="the forged snapshot at the hub"
        )

        # Rotation: the next version reaches the selected edge, nothing else changes.
        version = await admin.secrets.set("db-password", second, reason="rotate")
        assert version == 2
        await eventually(lambda: _converged(admin, "r1-e1", 2), timeout=40, what="r1-e1 applied secret v2")
        assert await _holds(fleet, "r1-e1", second)
        assert files_holding(fleet, second) == {"r1-e1/daemon/secrets/db-password"}
        assert await _sealed_for(fleet, "hub") == {"r1-e1"}  # sealed after the forgery: not to it
        assert files_holding(fleet, first) == set()

        # A revoked edge receives no new version: the hub hears the revocation (its regional's
        # audit event) and drops its bundle, and its link is refused anyway.
        await revoke(fleet, "r1-e1")
        await eventually(lambda: _none_sealed(fleet, "hub"), timeout=20, what="r1-e1's bundle dropped")
        third = f"s3cret-{secrets.token_hex(12)}".encode()
        assert await admin.secrets.set("db-password", third, reason="after the revocation") == 3
        # r2-e1, still linked, takes a change through the same path meanwhile.
        marker_profile = Profile(name="marker", spec=ProfileSpec(config={"marker": marker}))
        await admin.profiles.apply(marker_profile, reason="a change every linked edge takes")
        await eventually(lambda: _applied_marker(admin, "r2-e1", marker), timeout=20, what="r2-e1 took it")
        assert await _bundle_version(fleet, "r1-e1", "r1-e1", 2)
        assert await _holds(fleet, "r1-e1", second)
        assert files_holding(fleet, third) == set()

        # A viewer may not set one; a value sealed to another key is refused by the hub.
        viewer = identities.operator_creds(fleet.plan.state_dir, identities.VIEWER)
        async with await client_of(fleet, viewer) as as_viewer:
            with pytest.raises(ForbiddenError, match=r"role viewer may not secret\.set"):
                await as_viewer.secrets.set("db-password", b"nope")
        with pytest.raises(ConfigError, match="sealed to"):
            await admin.desk.call(
                "secret.set",
                name="db-password",
                sealed=seal(b"x", _public(_seed())),
                sealed_to="U" + "A" * 55,
            )


async def test_an_edge_cannot_read_another_edges_sealed_secrets(two_regions: DevFleet):
    """r2-e1's own key, at its regional, asking for r1-e1's bundle (which r2's replica holds,
    sealed to r1-e1): the server refuses the consumer."""
    fleet = two_regions
    async with await client_of(fleet) as admin:
        await admin.secrets.set("db-password", b"v", reason="test")
        await admin.profiles.apply(Profile(name="db", spec=ProfileSpec(config={"password": REF})))
        await eventually(lambda: _converged(admin, "r1-e1", 1), timeout=40, what="r1-e1 applied")
    nc = await connect_as(fleet.plan, "r2-e1")
    try:
        stream = subjects.kv_stream(subjects.SEALED_BUCKET)
        api = subjects.js_api_prefix("r2")
        for other in (
            f"{api}.CONSUMER.CREATE.{stream}.x.{subjects.kv_subject(subjects.SEALED_BUCKET, 'r1-e1')}",
            f"{api}.CONSUMER.CREATE.{stream}.x.$KV.{subjects.SEALED_BUCKET}.>",
            f"{api}.CONSUMER.CREATE.{stream}",
            f"{api}.DIRECT.GET.{stream}.{subjects.kv_subject(subjects.SEALED_BUCKET, 'r1-e1')}",
        ):
            with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                await nc.request(other, b"{}", timeout=2)
        # Its own bundle it may read (as its replica does), and only its key opens it.
        own = subjects.kv_subject(subjects.SEALED_BUCKET, "r2-e1")
        msg = await _filtered_consumer(nc, "r2", stream, own)
        bundle = json.loads(msg.data)
        assert bundle["edge"] == "r2-e1"
        assert bundle["secrets"]["db-password"]["version"] == 1
        seed = fleet.plan.site("r2-e1").creds_path.read_text().strip()
        assert unseal(bundle["secrets"]["db-password"]["box"], seed) == b"v"
        with pytest.raises(SealError):
            unseal(
                bundle["secrets"]["db-password"]["box"],
                fleet.plan.site("r1-e1").creds_path.read_text().strip(),
            )
    finally:
        await nc.close()
