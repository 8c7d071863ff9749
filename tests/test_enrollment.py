"""Enrollment tokens, approval and revocation on a running dev fleet (docs/security.md#enrollment).

What is refused is refused by the regional's nats-server (a revoked or pending edge's key is
not among its users; the `join` user may only knock) or by cryptography (a token's signature,
the HMAC on the regional's answer). Each test first revokes `r1-e2`, which the dev fleet
admitted when it was planned, and brings it back with a token.
"""

import asyncio
import json
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest

from fleetbus.devfleet import identities
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.nats.bus import connect
from fleetbus.runtime import enrolltoken, identity
from schemas import subjects
from schemas.base import utcnow
from schemas.enrollment import Enrollment, JoinReply, JoinRequest
from schemas.headers import envelope
from schemas.heartbeat import Tier
from tests.conftest import admin_creds, hub_args, running_fleet
from tests.helpers import arun_cli, eventually
from tests.test_profiles import applied, client_for

pytestmark = pytest.mark.slow

REGION, EDGE, NEW = "r1", "r1-e1", "r1-e2"


def linked_leafs(fleet: DevFleet) -> set[str]:
    """Server names of the leaf links the regional's server holds now (its monitoring port)."""
    url = fleet.plan.site(REGION).server.health_url.split("/healthz")[0] + "/leafz"
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - loopback
        return {leaf["name"] for leaf in json.load(reply).get("leafs") or []}


async def linked(fleet: DevFleet, edge: str) -> bool:
    return edge in linked_leafs(fleet)


async def unlinked(fleet: DevFleet, edge: str) -> bool:
    return edge not in linked_leafs(fleet)


async def cli(fleet: DevFleet, *args: str) -> Any:
    done = await arun_cli(*args, *hub_args(fleet.plan))
    assert done.returncode == 0, done.stderr
    return done


async def revoke(fleet: DevFleet, edge: str) -> float:
    """`fleetbus edge revoke` (its region found by asking the regionals); seconds until the
    edge's link is gone."""
    await eventually(lambda: linked(fleet, edge), timeout=20, what=f"{edge} linked")
    began = time.monotonic()
    done = await cli(fleet, "edge", "revoke", edge)
    assert "key is refused" in done.stdout
    await eventually(lambda: unlinked(fleet, edge), timeout=10, what=f"{edge}'s link dropped")
    return time.monotonic() - began


async def token_for(fleet: DevFleet, edge: str, *extra: str) -> str:
    done = await cli(fleet, "edge", "token", "create", edge, "--region", REGION, "--json", *extra)
    return str(json.loads(done.stdout)["token"])


async def restart_with_token(fleet: DevFleet, edge: str, token: str) -> None:
    """Start `edge`'s daemon again with `token` in its settings (top-level key, first line),
    and no `trusted_keys`: it trusts the hub keys the token carries."""
    settings = fleet.plan.site(edge).workdir / "daemon.toml"
    kept = [
        line for line in settings.read_text().splitlines(keepends=True) if not line.startswith("trusted_keys")
    ]
    settings.write_text(f"enroll_token = {json.dumps(token)}\n" + "".join(kept))
    await fleet.restart(edge, server=False, daemon=True)


async def edge_ls(fleet: DevFleet, *extra: str) -> dict[str, str]:
    done = await cli(fleet, "edge", "ls", "--json", *extra)
    return {row["edge"]: row["status"] for row in json.loads(done.stdout)}


async def apply_marker(fleet: DevFleet, tmp_path: Path, marker: str) -> None:
    profile = tmp_path / "marker.yaml"
    profile.write_text(f"name: marker\nselector: {{}}\nspec: {{config: {{marker: {marker}}}}}\n")
    await cli(fleet, "profile", "apply", "-f", str(profile))


async def has_marker(fleet: DevFleet, edge: str, marker: str) -> bool:
    return marker in json.dumps(applied(fleet, edge))


class Knock:
    """A client of the regional's client port as the knock-only `join` user."""

    def __init__(self, fleet: DevFleet) -> None:
        self.url = fleet.plan.site(REGION).server.client_url

    async def redeem(self, edge: str, token: str, public_key: str, machine: str = "m-1") -> JoinReply:
        bus = await connect(
            self.url,
            name="test-join",
            source="test",
            user="join",
            password="",
            inbox_prefix=subjects.JOIN_INBOX,
        )
        try:
            request = JoinRequest(
                region=REGION,
                edge=edge,
                token=token,
                public_key=public_key,
                machine_id=machine,
                requested_at=utcnow(),
            )
            return await bus.request(subjects.region_join(REGION, edge), request, JoinReply, timeout=5)
        finally:
            await bus.close()


async def audited(fleet: DevFleet, since: datetime, edge: str, actions: set[str]) -> None:
    """Wait for the audit events of `edge` naming `actions`, at the hub."""
    client = await client_for(fleet)
    seen: set[str] = set()

    async def collect() -> None:
        async for event in client.watch_events(["audit"], since=since):
            if event.edge == edge:
                seen.add(str(event.data.get("action")))
            if actions <= seen:
                return

    try:
        await asyncio.wait_for(collect(), timeout=30)
    except TimeoutError:
        pytest.fail(f"audit events of {edge}: saw {sorted(seen)}, wanted {sorted(actions)}")
    finally:
        await client.close()


async def test_a_revoked_edge_is_dropped_and_only_a_new_token_brings_it_back(tmp_path):
    began = utcnow()
    async with running_fleet(tmp_path) as fleet:
        plan = fleet.plan
        key = identity.load(plan.site(NEW).creds_path).public_key
        took = await revoke(fleet, NEW)
        print(f"revoke -> link dropped: {took:.2f} s")
        assert took <= 5.0
        # Its server keeps dialling with the revoked key, and the regional's server refuses it.
        log = plan.site(REGION).workdir / "nats-server.log"
        await eventually(
            lambda: _true(f'Nkey "{key}"' in log.read_text()), timeout=10, what="a refused reconnect"
        )
        assert await unlinked(fleet, NEW)
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await nats.connect(
                plan.site(REGION).server.client_url,
                nkeys_seed=str(plan.site(NEW).creds_path),
                allow_reconnect=False,
            )
        assert (await edge_ls(fleet))[NEW] == "revoked"

        # Tokens that must not work, each asked by a real client of the `join` user.
        knock = Knock(fleet)
        admin_seed = admin_creds(plan).read_text()
        stranger = identity.generate_seed()
        soon = utcnow() + timedelta(hours=1)
        other_edges, _ = enrolltoken.create(edge="r1-e9", region=REGION, expires=soon, seed=admin_seed)
        expired, _ = enrolltoken.create(
            edge=NEW, region=REGION, expires=utcnow() - timedelta(seconds=1), seed=admin_seed
        )
        untrusted, _ = enrolltoken.create(edge=NEW, region=REGION, expires=soon, seed=stranger)
        for token, why in (
            ("", "not an enrollment token"),
            (other_edges, "for edge 'r1-e9'"),
            (expired, "expired"),
            (untrusted, "not issued by an operator"),
        ):
            reply = await knock.redeem(NEW, token, key)
            assert reply.status == "refused", (why, reply)
            assert why in reply.reason
        assert await unlinked(fleet, NEW)

        # A real token, redeemed by the edge's daemon: its link is admitted and profiles flow.
        token = await token_for(fleet, NEW, "--expires", "1h")
        await restart_with_token(fleet, NEW, token)
        await eventually(lambda: linked(fleet, NEW), timeout=30, what=f"{NEW} linked again")
        marker = f"m{time.monotonic_ns()}"
        await apply_marker(fleet, tmp_path, marker)
        await eventually(lambda: has_marker(fleet, NEW, marker), timeout=30, what="the profile at the edge")
        # It verified that signed profile with the hub key the token carried, pinned now.
        pinned = fleet.plan.site(NEW).workdir / "daemon" / "trust" / "hub-keys.json"
        assert json.loads(pinned.read_text()) == [identities.signing_key(fleet.plan).public_key]
        assert (await edge_ls(fleet))[NEW] == "admitted"
        # Used: the same token with another key (someone who copied it) is refused.
        reply = await knock.redeem(NEW, token, identity.public_key(stranger))
        assert reply.status == "refused"
        assert "used already" in reply.reason
        # Each decision is an audit event of the edge, at the hub.
        await audited(fleet, began, NEW, {"revoked", "token issued", "redeemed a token: admitted"})
        await no_answer_to_a_chosen_reply_subject(fleet, token)


async def no_answer_to_a_chosen_reply_subject(fleet: DevFleet, token: str) -> None:
    """A server checks no reply subject against permissions, and the regional daemon may
    publish anything on its own server: a request whose reply names the API that purges the
    region's EVENTS (from the join user, and from an edge's key) must get no answer there."""
    plan = fleet.plan
    url = plan.site(REGION).server.client_url
    regional = await nats.connect(url, nkeys_seed=str(plan.site(REGION).creds_path))
    joiner = await nats.connect(url, user="join", password="", inbox_prefix=subjects.JOIN_INBOX)
    edge = await nats.connect(url, nkeys_seed=str(plan.site(EDGE).creds_path), inbox_prefix=f"_INBOX.{EDGE}")
    purge = "$JS.API.STREAM.PURGE.EVENTS"
    try:
        js = regional.jetstream()
        before = (await js.stream_info("EVENTS")).state.messages
        assert before > 0
        key = identity.public_key(identity.generate_seed())
        join = JoinRequest(region=REGION, edge=NEW, token=token, public_key=key, requested_at=utcnow())
        enrollment = Enrollment(region=REGION, edge=EDGE, requested_at=utcnow())
        for nc, subject, request in (
            (joiner, subjects.region_join(REGION, NEW), join),
            (edge, subjects.edge_enroll(REGION, EDGE), enrollment),
        ):
            body, headers = envelope(request, source="attacker")
            await nc.publish(subject, body, reply=purge, headers=headers)
            # The same again with an inbox: once it is answered, the daemon has handled the
            # first (one subscription's messages are handled in order).
            assert (await nc.request(subject, body, headers=headers, timeout=5)).data
        assert (await js.stream_info("EVENTS")).state.messages >= before
    finally:
        for nc in (regional, joiner, edge):
            await nc.close()


async def test_a_pending_edge_gets_nothing_until_approved_and_a_forged_answer_does_not_stop_it(tmp_path):
    settings: dict[Tier, dict[str, object]] = {Tier.REGIONAL: {"enroll_policy": "approve"}}
    async with running_fleet(tmp_path, settings=settings) as fleet:
        plan = fleet.plan
        await revoke(fleet, NEW)
        # A third party answering for the regional: refusals with no valid proof. Only the
        # regional's own identity may even subscribe to the subject (the join user may not).
        forged: list[str] = []
        forger = await nats.connect(
            plan.site(REGION).server.client_url, nkeys_seed=str(plan.site(REGION).creds_path)
        )

        async def refuse(msg: Any) -> None:
            forged.append(msg.subject)
            fake = JoinReply(region=REGION, edge=NEW, status="refused", reason="go away", proof="0" * 64)
            body, headers = envelope(fake, source="forger")  # well-formed: only its proof is wrong
            await forger.publish(msg.reply, body, headers=headers)

        await forger.subscribe(subjects.region_join(REGION), cb=refuse)
        await forger.flush()
        try:
            token = await token_for(fleet, NEW)
            await restart_with_token(fleet, NEW, token)
            await eventually(lambda: _true(bool(forged)), timeout=20, what="a forged answer")
            await eventually(lambda: _pending(fleet, NEW), timeout=20, what=f"{NEW} pending")
            marker = f"m{time.monotonic_ns()}"
            await apply_marker(fleet, tmp_path, marker)
            await eventually(lambda: has_marker(fleet, EDGE, marker), timeout=30, what="the profile at r1-e1")
            # Pending: its key is not admitted, so nothing reaches it.
            assert await unlinked(fleet, NEW)
            assert not await has_marker(fleet, NEW, marker)
            done = await cli(fleet, "edge", "approve", NEW)
            assert "approved" in done.stdout
            await eventually(
                lambda: has_marker(fleet, NEW, marker), timeout=30, what="the profile once approved"
            )
        finally:
            await forger.close()


async def _pending(fleet: DevFleet, edge: str) -> bool:
    return (await edge_ls(fleet, "--pending")).get(edge) == "pending"


async def _true(value: bool) -> bool:
    return value
