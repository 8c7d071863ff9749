"""Attacks on a running dev fleet with the attacker's real credentials (docs/security.md).

The attacker is root on an edge (it has the edge's key and controls the edge's own server),
or holds a regional's key, or a dashboard's read-only key. Every refusal here comes from a
nats-server: a permissions violation the server reports, or a message that never crosses a
link. Each refused call is paired with the same call as the identity that may make it, so a
refusal cannot come from a wrong subject name.
"""

import asyncio
import base64
import contextlib
import secrets
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import nats
import nkeys
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from fleetbus.devfleet import identities
from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.errors import HubUnreachableError
from fleetbus.runtime import identity, pki
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.base import utcnow
from schemas.codec import decode_body
from schemas.desk import DeskReply, DeskRequest
from schemas.headers import SIGNATURE, envelope
from schemas.profile import Profile
from schemas.subjects import OVERRIDES_BUCKET, PROFILES_BUCKET, kv_stream
from tests.conftest import admin_creds, connect_as, device_login, fleet_tls, hub_args, running_fleet
from tests.helpers import arun_cli, cli_env, eventually

pytestmark = pytest.mark.slow

REGION, EDGE, OTHER = "r1", "r1-e1", "r1-e2"


class Session:
    """A connection as one identity, keeping what the server refused it."""

    def __init__(self, nc: Client, refusals: list[str], domain: str) -> None:
        self.nc = nc
        self.refusals = refusals
        self.domain = domain  # of the server it is connected to

    async def publish_refused(self, subject: str, body: bytes = b"{}") -> bool:
        """Publish, then tell whether the server refused it. The server reports violations in
        order but not before the PONG of a flush that follows, so a subject no identity may
        publish follows it, and its refusal is awaited."""
        await self.nc.publish(subject, body)
        return await self._refused_before_sentinel("publish", subject)

    async def subscribe_refused(self, subject: str) -> bool:
        await self.nc.subscribe(subject)
        return await self._refused_before_sentinel("subscription", subject)

    async def _refused_before_sentinel(self, what: str, subject: str) -> bool:
        sentinel = f"nobody.may.{secrets.token_hex(4)}"
        await self.nc.publish(sentinel, b"")
        await self.nc.flush(timeout=5)
        await eventually(lambda: _true(self._refused("publish", sentinel)), timeout=5, what="the sentinel")
        return self._refused(what, subject)

    def _refused(self, what: str, subject: str) -> bool:
        # A server takes its own domain's API prefix off before it checks a client's subject.
        own = f"{subjects.js_api_prefix(self.domain)}."
        checked = subject.replace(own, "$JS.API.", 1) if subject.startswith(own) else subject
        return any(f'permissions violation for {what} to "{checked.lower()}"' in r for r in self.refusals)


async def _true(value: bool) -> bool:
    return value


async def session(url: str, creds: Path, inbox: str, domain: str) -> Session:
    refusals: list[str] = []

    async def on_error(exc: Exception) -> None:
        refusals.append(str(exc).lower())

    nc = await nats.connect(
        url,
        nkeys_seed=str(creds),
        inbox_prefix=subjects.inbox_prefix(inbox),
        error_cb=on_error,
        allow_reconnect=False,
    )
    return Session(nc, refusals, domain)


class Attack:
    """The fleet, and sessions as its identities (closed at the end)."""

    def __init__(self, fleet: DevFleet) -> None:
        self.fleet = fleet
        self.plan = fleet.plan
        self.sessions: list[Session] = []

    async def at(self, server: str, *, creds: Path, inbox: str) -> Session:
        s = await session(self.plan.site(server).server.client_url, creds, inbox, server)
        self.sessions.append(s)
        return s

    async def as_site(self, site: str, *, at: str | None = None) -> Session:
        """`site`'s own key, at its own server or (`at`) at the server above it."""
        return await self.at(at or site, creds=self.plan.site(site).creds_path, inbox=site)

    async def close(self) -> None:
        for s in self.sessions:
            await s.nc.close()


@pytest.fixture
async def attack(tmp_path: Path) -> AsyncIterator[Attack]:
    async with running_fleet(tmp_path) as fleet:
        a = Attack(fleet)
        try:
            # Desired state to steal and to destroy: a profile and each edge's own override.
            profile = tmp_path / "base.yaml"
            profile.write_text("name: base\nselector: {}\nspec: {config: {secret: s3cret}}\n")
            assert (
                await arun_cli("profile", "apply", "-f", str(profile), *hub_args(fleet.plan))
            ).returncode == 0
            for edge in (EDGE, OTHER):
                patch = tmp_path / f"{edge}.yaml"
                patch.write_text(f"config: {{pin: {edge}}}\n")
                done = await arun_cli(
                    "override", "set", edge, "-f", str(patch), "--reason", "test", *hub_args(fleet.plan)
                )
                assert done.returncode == 0, done.stderr
            yield a
        finally:
            await a.close()


async def _stream_subjects(nc: Client, stream: str, domain: str | None = None) -> int:
    return (await nc.jetstream(domain=domain, timeout=2).stream_info(stream)).state.messages


# --- nobody without a key ------------------------------------------------------------------


def _raw_connect(port: int, tls: ssl.SSLContext | None = None) -> str:
    """Speak the protocol's CONNECT with no credentials to a leaf port (in TLS if `tls`); the
    server's answer, or the TLS error."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.recv(4096)  # INFO, in plaintext: the upgrade to TLS follows it
        hello = b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n'
        if tls is None:
            sock.sendall(hello)
            return sock.recv(4096).decode()
        try:
            with tls.wrap_socket(sock, server_hostname="127.0.0.1") as secured:
                secured.sendall(hello)
                return secured.recv(4096).decode()
        except ssl.SSLError as exc:
            return f"TLS: {exc.reason}"


def _tls_context(ca: Path, cert: pki.CertFiles | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


async def test_leaf_ports_take_only_tls_with_a_certificate_of_the_fleet_ca(attack, tmp_path):
    ca = identities.ca_cert(attack.plan.state_dir)
    edge_dir = attack.plan.site(EDGE).creds_path.parent
    own = pki.CertFiles(edge_dir / "tls.pem", edge_dir / "tls-key.pem", ca)
    other_ca = pki.ensure_ca(tmp_path / "other-ca")
    mallory = pki.ensure_site_cert(other_ca, tmp_path / "mallory", EDGE, ("127.0.0.1",))
    for site in (s for s in attack.plan.sites if s.server.leaf_port is not None):
        port = site.server.leaf_port
        assert port is not None
        tries = {
            "plaintext": None,
            "no certificate": _tls_context(ca, None),
            "another CA's certificate": _tls_context(ca, mallory),
            "the fleet CA's certificate": _tls_context(ca, own),
        }
        answers = {what: await asyncio.to_thread(_raw_connect, port, tls) for what, tls in tries.items()}
        assert answers["plaintext"] == "", answers  # closed: TLS is required
        assert answers["no certificate"] == "TLS: TLSV13_ALERT_CERTIFICATE_REQUIRED", answers
        # Refused in the handshake: usually the alert itself, sometimes (TLS 1.3 checks the
        # client's certificate after the client is done) the connection closes before the
        # alert is read; never a protocol answer (which the fleet's certificate gets).
        assert answers["another CA's certificate"].startswith("TLS: "), answers
        # A certificate gets TLS, not a link: the key is still asked for.
        assert "Authorization Violation" in answers["the fleet CA's certificate"], answers


async def test_no_key_or_an_unknown_key_is_refused_on_every_port(attack):
    stranger = identity.ensure(attack.plan.state_dir / "stranger", "stranger").seed_path
    for site in attack.plan.sites:
        url = site.server.client_url
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await nats.connect(url, nkeys_seed=str(stranger), allow_reconnect=False)
    # Every key is known only to the servers it is meant for: an edge's key is a stranger
    # at the hub, a regional's at an edge.
    for site, at in ((EDGE, "hub"), (REGION, EDGE), (OTHER, EDGE)):
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await nats.connect(
                attack.plan.site(at).server.client_url,
                nkeys_seed=str(attack.plan.site(site).creds_path),
                allow_reconnect=False,
            )


async def test_an_operator_without_the_fleets_key_is_told_so(attack, tmp_path):
    stranger = identity.ensure(tmp_path / "stranger", "me").seed_path
    hub = attack.plan.site("hub").server.client_url
    result = await arun_cli("profile", "ls", "--hub", hub, "--creds", str(stranger))
    assert result.returncode != 0
    assert "refused" in result.stderr, result.stderr
    assert str(stranger) in result.stderr


# --- a stolen edge key -----------------------------------------------------------------------


async def test_a_stolen_edge_key_manages_no_stream_at_its_regional_or_the_hub(attack):
    edge = await attack.as_site(EDGE, at=REGION)
    regional = await attack.as_site(REGION)
    hub = await attack.at("hub", creds=admin_creds(attack.plan), inbox="admin")
    before = {
        stream: await _stream_subjects(regional.nc, stream)
        for stream in (kv_stream(PROFILES_BUCKET), kv_stream(OVERRIDES_BUCKET), subjects.EVENTS_STREAM)
    }
    hub_profiles = await _stream_subjects(hub.nc, kv_stream(PROFILES_BUCKET))
    for domain in (REGION, "hub"):
        api = subjects.js_api_prefix(domain)
        for call in ("DELETE", "UPDATE", "PURGE"):
            for stream in (kv_stream(PROFILES_BUCKET), subjects.EVENTS_STREAM):
                subject = f"{api}.STREAM.{call}.{stream}"
                assert await edge.publish_refused(subject), subject
        assert await edge.publish_refused(f"{api}.STREAM.CREATE.EVIL")
    # Nor the regional's own API without a domain, nor a bucket's subjects directly.
    assert await edge.publish_refused(f"$JS.API.STREAM.DELETE.{kv_stream(PROFILES_BUCKET)}")
    assert await edge.publish_refused(subjects.kv_subject(PROFILES_BUCKET, "base"))
    assert await edge.publish_refused(subjects.kv_subject(OVERRIDES_BUCKET, f"edge.{OTHER}"))
    after = {stream: await _stream_subjects(regional.nc, stream) for stream in before}
    assert after == before
    assert await _stream_subjects(hub.nc, kv_stream(PROFILES_BUCKET)) == hub_profiles
    # What its leaf link may send is what its replicas need (test_an_edges_own_server_…).
    assert not await edge.publish_refused(subjects.edge_heartbeat(REGION, EDGE))


async def test_a_stolen_edge_key_speaks_only_for_its_own_edge(attack):
    edge = await attack.as_site(EDGE, at=REGION)
    for subject in (
        subjects.edge_heartbeat(REGION, OTHER),
        subjects.edge_inventory(REGION, OTHER),
        subjects.edge_event(REGION, OTHER, "apply_result"),
        subjects.outbox_event(REGION, OTHER, "apply_result"),  # where the regional stores from
        subjects.outbox_inventory(REGION, OTHER),
        subjects.edge_heartbeat("r2", EDGE),  # its own name in another region
        subjects.regional_heartbeat(REGION),
        subjects.hub_hello(),
    ):
        assert await edge.publish_refused(subject), subject
    assert not await edge.publish_refused(subjects.edge_heartbeat(REGION, EDGE))
    assert not await edge.publish_refused(subjects.outbox_event(REGION, EDGE, "probe"))


async def test_a_stolen_edge_key_reads_no_other_edges_override_and_sees_no_other_traffic(attack):
    edge = await attack.as_site(EDGE, at=REGION)
    api = subjects.js_api_prefix(REGION)
    overrides = kv_stream(OVERRIDES_BUCKET)
    others = _override_subject(OTHER)
    profiles, assigned = kv_stream(PROFILES_BUCKET), kv_stream(subjects.ASSIGNED_BUCKET)
    for subject in (
        f"{api}.CONSUMER.CREATE.{overrides}.x.{others}",
        f"{api}.CONSUMER.CREATE.{overrides}.x.$KV.{OVERRIDES_BUCKET}.>",
        f"{api}.CONSUMER.CREATE.{overrides}.x.$KV.{OVERRIDES_BUCKET}.group.{REGION}",
        f"{api}.DIRECT.GET.{overrides}",
        f"{api}.DIRECT.GET.{overrides}.{others}",
        f"{api}.STREAM.MSG.GET.{overrides}",
        f"{api}.STREAM.INFO.{overrides}",
        # Every profile is in the regional's replica; an edge reads only those handed to it.
        f"{api}.CONSUMER.CREATE.{profiles}",
        f"{api}.CONSUMER.CREATE.{profiles}.x.$KV.{PROFILES_BUCKET}.base",
        f"{api}.CONSUMER.CREATE.{profiles}.x.$KV.{PROFILES_BUCKET}.>",
        f"{api}.DIRECT.GET.{profiles}.$KV.{PROFILES_BUCKET}.base",
        f"{api}.CONSUMER.CREATE.{assigned}",
        f"{api}.CONSUMER.CREATE.{assigned}.x.{_assigned_subject(OTHER)}",
        f"{api}.CONSUMER.CREATE.{assigned}.x.$KV.{subjects.ASSIGNED_BUCKET}.>",
        f"{api}.CONSUMER.CREATE.{assigned}.x.$KV.{subjects.ASSIGNED_BUCKET}.*.profile.*",
        f"{api}.DIRECT.GET.{assigned}.{_assigned_subject(OTHER)}",
    ):
        assert await edge.publish_refused(subject), subject
    # An unfiltered create names only the stream; its body's filter is any key, so it is
    # not allowed at all. (Its replica's own, filtered to its key, crosses its leaf link:
    # test_an_edges_own_server_relays_nothing_its_key_may_not_send.)
    assert await edge.publish_refused(f"{api}.CONSUMER.CREATE.{overrides}")
    # Traffic: everything, another edge's subjects, the enrollment it could answer.
    for subject in (">", "fleet.>", f"{subjects.edge_base(REGION, OTHER)}.>", subjects.region_join(REGION)):
        assert await edge.subscribe_refused(subject), subject
    assert not await edge.subscribe_refused(f"{subjects.edge_base(REGION, EDGE)}.>")


async def _filtered_consumer(nc: Client, domain: str | None, stream: str, subject: str) -> Any:
    """The last message on `subject` through a consumer filtered to it, created the way a
    replica's source creates one (named, its filter in the request subject)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    js = nc.jetstream(domain=domain, timeout=3)
    await js.add_consumer(
        stream,
        config=ConsumerConfig(
            name=f"probe{secrets.token_hex(4)}",
            filter_subject=subject,
            deliver_subject=inbox,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=5.0,
        ),
    )
    try:
        return await sub.next_msg(timeout=5)
    finally:
        await sub.unsubscribe()


async def test_an_edges_own_server_relays_nothing_its_key_may_not_send(attack):
    """Root on an edge controls its server, whose leaf link carries the edge's key: what the
    regional refuses to a client with that key, it drops from the link too."""
    local = await attack.as_site(EDGE)  # everything is allowed on the edge's own server
    regional = await attack.as_site(REGION)
    seen: list[tuple[str, bytes]] = []

    async def record(msg: Any) -> None:
        seen.append((msg.subject, msg.data))

    await regional.nc.subscribe(f"{subjects.PREFIX}.edge.{REGION}.>", cb=record)
    await regional.nc.flush()
    # The real OTHER edge publishes its own heartbeats on this subject: the forgery is told
    # apart by its body.
    forged = (subjects.edge_heartbeat(REGION, OTHER), b'{"forged":"%s"}' % secrets.token_hex(4).encode())
    marker = (subjects.edge_event(REGION, EDGE, "probe"), b'{"marker":"%s"}' % secrets.token_hex(4).encode())
    # The regional's subscription reaches the edge's server once the link carries its interest.
    await eventually(
        lambda: _published_and_seen(local.nc, marker[0], seen),
        timeout=15,
        what="the link up",
    )
    await local.nc.publish(*forged)
    await local.nc.publish(*marker)
    await local.nc.flush()
    # One link, in order: once the marker is through, the forged message would have been too.
    await eventually(lambda: _seen(marker, seen), timeout=10, what="the marker")
    assert forged not in seen
    # JetStream across the link: what its replicas need is answered, the rest finds no one.
    api = subjects.js_api_prefix(REGION)
    overrides = kv_stream(OVERRIDES_BUCKET)
    assert (await local.nc.request(f"{api}.INFO", b"", timeout=5)).data
    own = await _filtered_consumer(local.nc, REGION, overrides, _override_subject(EDGE))
    assert own.subject == _override_subject(EDGE)
    assert EDGE.encode() in own.data
    handed = await _filtered_consumer(
        local.nc, REGION, kv_stream(subjects.ASSIGNED_BUCKET), _assigned_subject(EDGE)
    )
    assert b"s3cret" in handed.data  # the profile `base`, which selects every edge
    for subject in (
        f"{api}.CONSUMER.CREATE.{kv_stream(subjects.ASSIGNED_BUCKET)}.x.{_assigned_subject(OTHER)}",
        f"{api}.CONSUMER.CREATE.{kv_stream(PROFILES_BUCKET)}.x.$KV.{PROFILES_BUCKET}.base",
        f"{api}.CONSUMER.CREATE.{kv_stream(subjects.ASSIGNED_BUCKET)}.x.$KV.{subjects.ASSIGNED_BUCKET}.*.*.*",
        f"{api}.CONSUMER.CREATE.{kv_stream(subjects.ASSIGNED_BUCKET)}.x.$KV.{subjects.ASSIGNED_BUCKET}.>",
        f"{api}.CONSUMER.CREATE.{overrides}.x.{_override_subject(OTHER)}",
        f"{api}.CONSUMER.CREATE.{overrides}",
        f"{api}.DIRECT.GET.{overrides}.{_override_subject(OTHER)}",
        f"{api}.STREAM.DELETE.{kv_stream(PROFILES_BUCKET)}",
        f"{api}.STREAM.PURGE.{subjects.EVENTS_STREAM}",
        f"{subjects.js_api_prefix('hub')}.STREAM.DELETE.{kv_stream(PROFILES_BUCKET)}",
        f"{subjects.js_api_prefix('hub')}.INFO",
    ):
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await local.nc.request(subject, b"{}", timeout=2)
    assert await _stream_subjects(regional.nc, kv_stream(PROFILES_BUCKET)) > 0
    # Stored data goes up only on the edge's own outbox subjects: JetStream publishes of another
    # edge's apply result and inventory find no stream, and the regional stores nothing of them.
    body = b'{"forged":"%s"}' % secrets.token_hex(4).encode()
    for subject in (
        subjects.outbox_event(REGION, OTHER, "apply_result"),
        subjects.outbox_inventory(REGION, OTHER),
    ):
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await local.nc.request(subject, body, timeout=2)
    ack = await local.nc.request(subjects.outbox_event(REGION, EDGE, "probe"), body, timeout=5)
    assert b'"stream":"EVENTS"' in ack.data.replace(b" ", b""), ack.data  # its own is stored
    events = regional.nc.jetstream()
    assert (
        await events.get_last_msg(subjects.EVENTS_STREAM, subjects.edge_event(REGION, EDGE, "probe"))
    ).data == body
    for stream, subject in (
        (subjects.EVENTS_STREAM, subjects.apply_results(REGION, OTHER)),
        (subjects.INVENTORY_STREAM, subjects.edge_inventory(REGION, OTHER)),
    ):
        with contextlib.suppress(NotFoundError):  # nothing of OTHER's there is fine
            assert (await events.get_last_msg(stream, subject)).data != body, subject


def _override_subject(edge: str) -> str:
    return subjects.kv_subject(OVERRIDES_BUCKET, subjects.override_key("edge", edge))


def _assigned_subject(edge: str) -> str:
    """Where the regional hands `edge` the profile `base`."""
    return subjects.kv_subject(
        subjects.ASSIGNED_BUCKET, subjects.assigned_key(edge, subjects.ASSIGNED_PROFILE, "base")
    )


async def _published_and_seen(nc: Client, subject: str, seen: list[tuple[str, bytes]]) -> bool:
    await nc.publish(subject, b"{}")
    await nc.flush()
    await asyncio.sleep(0.05)  # poll interval
    return any(got == subject for got, _ in seen)


async def _seen(message: tuple[str, bytes], seen: list[tuple[str, bytes]]) -> bool:
    return message in seen


# --- a stolen regional key -------------------------------------------------------------------


async def test_a_stolen_regional_key_writes_no_desired_state_and_speaks_only_for_its_region(attack):
    regional = await attack.as_site(REGION, at="hub")
    hub = await attack.at("hub", creds=admin_creds(attack.plan), inbox="admin")
    profiles = kv_stream(PROFILES_BUCKET)
    before = await _stream_subjects(hub.nc, profiles)
    api = subjects.js_api_prefix("hub")
    for subject in (
        f"{api}.STREAM.DELETE.{profiles}",
        f"{api}.STREAM.PURGE.{profiles}",
        f"{api}.STREAM.UPDATE.{profiles}",
        f"$JS.API.STREAM.DELETE.{profiles}",
        subjects.kv_subject(PROFILES_BUCKET, "base"),
        subjects.kv_subject(OVERRIDES_BUCKET, f"edge.{EDGE}"),
        subjects.regional_heartbeat("r2"),
        subjects.hub_hello(),
    ):
        assert await regional.publish_refused(subject), subject
    assert await _stream_subjects(hub.nc, profiles) == before
    assert not await regional.publish_refused(subjects.regional_heartbeat(REGION))


# --- the read-only identity ------------------------------------------------------------------


async def test_the_viewer_reads_every_bucket_and_changes_nothing(attack):
    creds = identities.operator_creds(attack.plan.state_dir, identities.VIEWER)
    viewer = await attack.at("hub", creds=creds, inbox="viewer")
    kv = await viewer.nc.jetstream(timeout=3).key_value(PROFILES_BUCKET)
    entry = await kv.get("base")
    assert b"s3cret" in (entry.value or b"")
    watched = await _filtered_consumer(
        viewer.nc, None, kv_stream(OVERRIDES_BUCKET), subjects.kv_subject(OVERRIDES_BUCKET, ">")
    )
    assert watched is not None
    profiles = kv_stream(PROFILES_BUCKET)
    before = await _stream_subjects(viewer.nc, profiles)
    for subject in (
        subjects.edge_command(REGION, EDGE, "restart"),
        subjects.kv_subject(PROFILES_BUCKET, "base"),
        f"$JS.API.STREAM.DELETE.{profiles}",
        f"$JS.API.STREAM.PURGE.{profiles}",
        f"$JS.API.STREAM.MSG.DELETE.{profiles}",
        f"$JS.API.CONSUMER.DELETE.{profiles}.x",
    ):
        assert await viewer.publish_refused(subject), subject
    assert await _stream_subjects(viewer.nc, profiles) == before


async def test_a_captured_desk_request_is_refused_when_replayed_even_by_a_restarted_hub(attack):
    """Someone who captured an operator's signed request (say, on a client port without TLS)
    sends it again: the desk refuses it as a replay, and still does after the hub daemon
    restarts (the nonces are in the hub's `nonces` bucket; a failover of a clustered hub is
    the same case: another daemon reads the same bucket). Kept in the daemon's memory, the
    restarted daemon took it."""
    creds = identities.operator_creds(attack.plan.state_dir, identities.VIEWER)
    viewer = await attack.at("hub", creds=creds, inbox="viewer")
    signer = nkeys.from_seed(identity.load(creds).seed().encode())
    request = DeskRequest(
        op="whoami",
        operator=signer.public_key.decode(),
        issued_at=utcnow(),
        nonce=secrets.token_hex(16),
    )
    body, headers = envelope(request, source="/test")
    headers[SIGNATURE] = base64.b64encode(signer.sign(body)).decode()

    async def send() -> DeskReply:
        msg = await viewer.nc.request(subjects.HUB_DESK, body, headers=headers, timeout=5)
        return decode_body(DeskReply, msg.data, subject=subjects.HUB_DESK)

    assert (await send()).ok
    again = await send()
    assert not again.ok
    assert "replayed" in (again.error or "")
    await attack.fleet.kill("hub", server=False, daemon=True)
    await attack.fleet.restart("hub", server=False, daemon=True)
    after = await eventually(send, timeout=20, what="the restarted hub's desk answering")
    assert not after.ok
    assert "replayed" in (after.error or "")


# --- a device on the store LAN ---------------------------------------------------------------


async def test_a_device_logs_in_with_its_own_credentials_and_speaks_only_for_itself(tmp_path):
    """MQTT devices authenticate (docs/security.md#devices): no credentials, a wrong password,
    another device's topic, a fleet subject and a removed device are all refused by the edge's
    server; only the device's own topics pass."""
    async with running_fleet(tmp_path, regions=1, edges=1, mqtt=True) as fleet:
        edge = fleet.plan.site(EDGE).server
        port = edge.mqtt_port
        assert port is not None
        tls = fleet_tls(fleet.plan)  # every refusal below is the login's, not TLS's
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, identifier="anonymous", tls_context=tls):
                pass
        login = await device_login(fleet.plan, EDGE, "sensor-9")
        # In plaintext, even with the right password: the handshake fails.
        plain = {"username": login["username"], "password": login["password"]}
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, identifier="plain", **plain):
                pass
        wrong = {"username": "sensor-9", "password": secrets.token_urlsafe(18), "tls_context": tls}
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, identifier="guess", **wrong):
                pass
        # Its name and password on the NATS client port: refused (MQTT listener only).
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await nats.connect(
                edge.client_url, user="sensor-9", password=login["password"], allow_reconnect=False
            )
        local = await connect_as(fleet.plan, EDGE)
        seen: list[str] = []
        marked: list[str] = []  # subjects that carried the forgeries' body
        marker = secrets.token_hex(8).encode()  # the edge's own heartbeats use the same subject

        async def record(msg: Any) -> None:
            seen.append(msg.subject)
            if msg.data == marker:
                marked.append(msg.subject)

        try:
            await local.subscribe(">", cb=record)
            await local.flush()
            forged = (subjects.edge_heartbeat(REGION, EDGE), "devices.sensor-8.telemetry")
            async with aiomqtt.Client("127.0.0.1", port, identifier="sensor-9", **login) as device:
                for subject in forged:
                    with contextlib.suppress(aiomqtt.MqttError):  # refused: dropped or disconnected
                        await device.publish(subject.replace(".", "/"), marker, qos=0)
            async with aiomqtt.Client("127.0.0.1", port, identifier="sensor-9", **login) as device:
                await device.publish("devices/sensor-9/telemetry", b"{}", qos=1)
                # In order from one device: once its reading is through, a forged one would be.
                await eventually(
                    lambda: _true("devices.sensor-9.telemetry" in seen),
                    timeout=10,
                    what="the device's reading",
                )
            assert not marked, marked
            # Removed: refused from then on.
            done = await arun_cli(
                "device", "remove", EDGE, "sensor-9", "--region", REGION, *hub_args(fleet.plan)
            )
            assert done.returncode == 0, done.stderr
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", port, identifier="sensor-9", **login):
                    pass
        finally:
            await local.close()


# --- client ports that other machines reach ---------------------------------------------------


async def test_client_ports_with_tls_take_only_clients_that_verify_the_fleet_ca(tmp_path):
    """`dev up --client-tls` (what a site whose client port others reach runs): every daemon
    and client speaks TLS to it, verifying the fleet CA; plaintext and a certificate of another
    CA get no connection, and the fleet still converges."""
    async with running_fleet(tmp_path, regions=1, edges=1, client_tls=True) as fleet:
        plan = fleet.plan
        ca = identities.ca_cert(plan.state_dir)
        other_ca = pki.ensure_ca(tmp_path / "other-pki", "another fleet")
        for site in plan.sites:
            port = site.server.client_port
            # Plaintext CONNECT with the site's own key material nowhere near: closed.
            assert "INFO" not in _raw_connect(port), site.name
            assert "CERTIFICATE_VERIFY_FAILED" in _raw_connect(port, _tls_context(other_ca, None)), site.name
            # The right CA: the handshake passes and the login (none here) is what is refused;
            # in strict X.509 mode too (Python 3.13's default).
            strict = _tls_context(ca, None)
            strict.verify_flags |= ssl.VERIFY_X509_STRICT
            assert "Authorization Violation" in _raw_connect(port, strict), site.name
        hub_url = plan.site("hub").server.client_url
        with pytest.raises(HubUnreachableError, match="TLS failed"):
            await FleetClient.connect(hub_url, creds=admin_creds(plan), ca=other_ca, timeout=3)
        async with await FleetClient.connect(hub_url, creds=admin_creds(plan), ca=ca) as client:
            await client.profiles.apply(_tls_profile())

            async def applied() -> bool:
                desired, report = await client.explain(EDGE)
                return bool(
                    report and report.apply_result and report.apply_result.desired_hash == desired.hash
                )

            await eventually(
                applied, timeout=60, what="the profile applied and reported over TLS client ports"
            )
        # The CLI: with the fleet CA it answers; with another, it says what to pass.
        done = await arun_cli("status", *hub_args(plan), env=cli_env(FLEETBUS_CA=str(ca)))
        assert done.returncode == 0, done.stderr
        refused = await arun_cli("status", *hub_args(plan), env=cli_env(FLEETBUS_CA=str(other_ca)))
        assert refused.returncode == 3, refused.stderr
        assert "the CA that issued this server's certificate" in refused.stderr, refused.stderr
        unknown = await arun_cli("status", *hub_args(plan))  # no CA: the system's do not know ours
        assert unknown.returncode == 3, unknown.stderr
        assert "give the fleet CA (--ca, nats_ca)" in unknown.stderr, unknown.stderr
        # A daemon given another CA stops at once and says why (exit 2), not retrying forever.
        hub = plan.site("hub")
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub",
            *("--nats-url", hub.server.client_url, "--nats-creds", str(hub.creds_path)),
            *("--nats-ca", str(other_ca), "--http-port", "0", "--dashboard", "false"),
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(),
        )
        _, stderr = await asyncio.wait_for(daemon.communicate(), 30)
        assert daemon.returncode == 2, stderr
        assert b"the CA that issued this server's certificate" in stderr, stderr
        assert fleet.crashes() == {}


def _tls_profile() -> Profile:
    return Profile.model_validate(
        {"name": "tls-check", "spec": {"components": [{"name": "app", "image": "reg/app", "version": "1"}]}}
    )
