"""Pathological bytes on every subject the daemons consume, in a real fleet: every daemon keeps
its PID, counts the rejects, and still does its job afterwards.

The corpus is the decoder fuzz corpus (deep nesting, NaN, huge strings and maps, invalid UTF-8,
wrong types...), published as an attacker on the box would: heartbeats at the regional and at
the hub, enrollment requests, thin-edge outbox events and inventory (which the regional stores
and the hub's EVENTS, `applied` and `inventory` readers then decode), KV values the edges
replicate (profiles, overrides: signed with the hub's key, so that the edges' decoders, behind
their signature check, see them), device topics (over NATS and from an MQTT client on the edge's
listener) and command requests at the edge."""

import contextlib
import itertools

import aiomqtt
import pytest
from nats.errors import Error as NatsError

from fleetbus.core import trust
from fleetbus.nats.bus import connect
from fleetbus.runtime import identity
from fleetbus.runtime.signing import Signer
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.base import utcnow
from schemas.enrollment import Enrollment, EnrollmentReply
from schemas.heartbeat import Tier
from schemas.profile import Profile
from tests.conftest import admin_creds, connect_as, device_login, running_fleet
from tests.fleetprobe import applied_hash
from tests.helpers import eventually
from tests.test_decoders_fuzz import CORPUS
from tests.test_metrics import Metrics

pytestmark = pytest.mark.slow
EDGE = "r1-e1"
SITES = ("hub", "r1", EDGE)


async def test_the_corpus_on_every_consumed_subject_stops_no_daemon(tmp_path):
    async with (
        running_fleet(tmp_path, regions=1, edges=1, mqtt=True) as fleet,
        await FleetClient.connect(
            fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan), timeout=10
        ) as client,
    ):
        await eventually(lambda: applied_hash(client, EDGE), timeout=30, what="the edge reporting")
        pids = {site: fleet.daemons[site].pid for site in SITES}
        conns = {site: await connect_as(fleet.plan, site) for site in SITES}
        try:
            hub, regional, edge = (conns[s] for s in SITES)
            hub_key = Signer(identity.load(fleet.plan.site("hub").signing_key_path))

            async def signed_put(bucket: str, key: str, body: bytes, revision: int) -> None:
                headers = hub_key.headers(bucket, key, revision, trust.PUT, body)
                await hub.jetstream().publish(subjects.kv_subject(bucket, key), body, headers=headers)

            counter = itertools.count()
            # Larger bodies never get in: every server's max_payload is 1 MB (nats-py refuses them
            # before sending, the server would close the connection).
            for body in (b for b in CORPUS.values() if len(b) < 1_000_000):
                n = next(counter)
                await regional.publish(f"fleet.edge.r1.{EDGE}.hb", body)
                await regional.publish("fleet.edge.r1.r1-x9.hb", body)
                await hub.publish("fleet.region.r1.hb", body)
                await edge.publish("devices.sensor-1.telemetry", body)
                await edge.publish("devices.sensor-1.status", body)
                for subject in (
                    "fleet.edge.r1.r1-t1.outbox.events.apply_result",
                    "fleet.edge.r1.r1-t1.outbox.events.alert",
                    "fleet.edge.r1.r1-t1.outbox.inventory",
                ):
                    await regional.jetstream().publish(subject, body)
                await signed_put(subjects.PROFILES_BUCKET, f"fuzz-{n}", body, 1)
                # The regional hands on no record it cannot decode: the edge reads it where
                # a compromised regional could put it, signed by the hub.
                fuzz = subjects.assigned_key(EDGE, subjects.ASSIGNED_PROFILE, f"fuzz-{n}")
                await regional.jetstream().publish(
                    subjects.kv_subject(subjects.ASSIGNED_BUCKET, fuzz),
                    body,
                    headers=hub_key.headers(subjects.PROFILES_BUCKET, f"fuzz-{n}", 1, trust.PUT, body),
                )
                await signed_put(subjects.OVERRIDES_BUCKET, f"edge.{EDGE}", body, 1_000_000 + n)
                for nc, subject in (
                    (regional, f"fleet.edge.r1.{EDGE}.enroll"),
                    (regional, "fleet.region.r1.join.r1-x9"),
                    (regional, "fleet.region.r1.admission"),
                    (edge, f"fleet.edge.r1.{EDGE}.cmd.device"),
                ):
                    with contextlib.suppress(NatsError, TimeoutError):  # a refusal or no answer: both fine
                        await nc.request(subject, body, timeout=0.5)
            for nc in conns.values():
                await nc.flush()
        finally:
            for nc in conns.values():
                await nc.close()

        # The same from a device on the edge's MQTT listener, then one good reading: it is taken.
        mqtt_port = fleet.plan.site(EDGE).server.mqtt_port
        assert mqtt_port is not None
        login = await device_login(fleet.plan, EDGE, "sensor-2")
        async with aiomqtt.Client("127.0.0.1", mqtt_port, identifier="sensor-2", **login) as device:
            for body in (b for b in CORPUS.values() if len(b) < 1_000_000):
                for channel in ("telemetry", "status"):
                    await device.publish(f"devices/sensor-2/{channel}", body, qos=1)
            await device.publish("devices/sensor-2/telemetry", b'{"after_the_corpus": 1}', qos=1)

        async def reading_taken() -> bool:
            inventory = await client.get_inventory(EDGE)
            return any(
                d.id == "sensor-2" and d.last_telemetry.get("after_the_corpus") == 1
                for d in inventory.devices
            )

        await eventually(reading_taken, timeout=30, what="the good reading after the corpus, at the hub")

        # Each daemon counted what it could not decode...
        metrics = Metrics(fleet)
        for site, name, labels in (
            ("hub", "fleetbus_decode_errors_total", {"kind": "fleet.heartbeat"}),
            ("hub", "fleetbus_decode_errors_total", {"kind": "fleet.inventory"}),  # its view's mirror
            ("r1", "fleetbus_decode_errors_total", {"kind": "fleet.heartbeat"}),
            ("r1", "fleetbus_decode_errors_total", {"kind": "fleet.enrollment"}),
            ("r1", "fleetbus_decode_errors_total", {"kind": "fleet.profile"}),  # its assigner's mirror
            (EDGE, "fleetbus_decode_errors_total", {"kind": "fleet.profile"}),
            (EDGE, "fleetbus_decode_errors_total", {"kind": "fleet.override"}),
            (EDGE, "fleetbus_device_messages_rejected_total", {}),
        ):
            await metrics.until(
                site, f"{name}{labels} counted", lambda s, n=name, ls=labels: s.value(n, **ls) > 0, timeout=30
            )

        # ...and still does its job: a real change reaches the edge and is reported at the hub.
        await client.profiles.apply(
            Profile.model_validate(
                {
                    "name": "after-the-storm",
                    "selector": {"match_labels": {"env": "dev"}},
                    "spec": {"config": {"ok": 1}},
                }
            ),
        )

        async def converged() -> bool:
            report = await client.report(EDGE)
            result = report.apply_result if report else None
            return bool(result and "after-the-storm" in result.profile_revisions)

        await eventually(converged, timeout=30, what="a profile applied after the corpus")
        for site, pid in pids.items():
            assert fleet.daemons[site].running, f"{site}'s daemon is not running"
            assert fleet.daemons[site].pid == pid, f"{site}'s daemon restarted"
        assert fleet.crashes() == {}


async def test_a_region_enrolls_at_most_max_edges(tmp_path):
    """A client inventing edge ids cannot grow the region's state (and the hub's view) without
    bound: past `max_edges` an enrollment of a new edge is refused and counted, while an
    enrolled edge that asks again is still admitted."""
    settings = {Tier.REGIONAL: {"max_edges": 2}}
    async with running_fleet(tmp_path, regions=1, edges=1, settings=settings) as fleet:
        bus = await connect(
            fleet.plan.site("r1").server.client_url,
            name="test",
            source="/test",
            creds=fleet.plan.site("r1").creds_path,
            site="r1",
        )
        try:

            async def enroll(edge: str) -> EnrollmentReply:
                request = Enrollment(region="r1", edge=edge, requested_at=utcnow())
                return await bus.request(
                    subjects.edge_enroll("r1", edge), request, EnrollmentReply, timeout=5
                )

            await eventually(lambda: enroll(EDGE), timeout=20, what="the regional answering")
            assert (await enroll("r1-x1")).accepted
            refused = await enroll("r1-x2")
            assert not refused.accepted
            assert "at most 2 edges" in refused.reason
            assert (await enroll(EDGE)).accepted
            assert (await enroll("r1-x1")).accepted
        finally:
            await bus.close()
        scrape = await Metrics(fleet).scrape("r1")
        assert scrape.value("fleetbus_enrollments_total", outcome="refused") == 1
        assert fleet.crashes() == {}
