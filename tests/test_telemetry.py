"""Selected device telemetry upstream (`edge.telemetry`): the rules, their modes and limits,
then in a real fleet through a cut and healed link."""

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest

from edge.telemetry import TelemetryForwarder, TokenBucket, rules_of, topic_matches
from fleetbus.core.desired import compute
from fleetbus.runtime.metrics import DaemonMetrics
from schemas import subjects
from schemas.base import utcnow
from schemas.event import Event
from schemas.profile import Profile, ProfileSpec
from tests.conftest import connect_as, device_login
from tests.helpers import eventually
from tests.test_dashboard import get as dashboard_get
from tests.test_devices import EDGE, device_fleet
from tests.test_metrics import CHECKED_ELSEWHERE, Metrics

T0 = datetime(2026, 11, 21, tzinfo=UTC)


class Link:
    def __init__(self) -> None:
        self.up: bool | None = True
        self.changed_at: datetime | None = None


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def forwarder(rules: dict[str, Any], *, max_rate: float = 100, max_backlog: int = 100) -> Any:
    sent: list[Event] = []

    async def publish(event: Event) -> None:
        sent.append(event)

    clock, link = Monotonic(), Link()
    fw = TelemetryForwarder(
        publish, region="r1", edge="r1-e1", link=link, max_rate=max_rate, max_backlog=max_backlog,
        monotonic=clock,
    )  # fmt: skip
    fw.configure({"telemetry": rules})
    return fw, sent, clock, link


def test_topic_filters_match_as_mqtt_does():
    assert topic_matches("devices/+/telemetry", "devices/s1/telemetry")
    assert not topic_matches("devices/+/telemetry", "devices/s1/status")
    assert topic_matches("devices/#", "devices/s1/status")
    assert topic_matches("devices/s1/#", "devices/s1/telemetry")
    assert not topic_matches("devices/s1/#", "devices/s2/telemetry")
    assert topic_matches("devices/s1/+", "devices/s1/status")
    assert not topic_matches("devices/s1/telemetry", "devices/s1/telemetry/extra")


def test_a_profile_names_topics_and_the_rules_layer_by_priority():
    base = Profile(
        name="sensors",
        spec=ProfileSpec.model_validate(
            {"telemetry": {"devices/+/telemetry": {"mode": "sample", "interval": 60, "fields": ["temp"]}}}
        ),
    )
    faster = Profile(
        name="fast", priority=10,
        spec=ProfileSpec.model_validate({"telemetry": {"devices/+/telemetry": {"interval": 5}}}),
    )  # fmt: skip
    desired = compute([base, faster], {}, edge="r1-e1", now=T0)
    [rule] = rules_of(desired.document)
    assert (rule.topic, rule.mode.value, rule.interval, rule.fields) == (
        "devices/+/telemetry", "sample", 5, ("temp",),
    )  # fmt: skip
    # A profile without telemetry does not change the hash it had before the field existed.
    plain = Profile(name="plain", spec=ProfileSpec.model_validate({"config": {"a": 1}}))
    assert "telemetry" not in compute([plain], {}, edge="r1-e1", now=T0).document


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("sensors/+/telemetry", "not a device topic filter"),
        ("devices/+/firmware", "not a device topic filter"),
        ("devices/Bad.Id/telemetry", "not a device topic filter"),
        ("devices/+", "not a device topic filter"),
    ],
)
def test_a_topic_outside_the_device_contract_is_refused(topic, why):
    with pytest.raises(ValueError, match=why):
        ProfileSpec.model_validate({"telemetry": {topic: {}}})


def test_interval_below_a_second_is_refused():
    with pytest.raises(ValueError, match="interval"):
        ProfileSpec.model_validate({"telemetry": {"devices/#": {"interval": 0.1}}})


async def test_sample_mode_forwards_one_reading_per_device_per_interval_with_only_its_fields():
    fw, sent, clock, _ = forwarder({"devices/+/telemetry": {"interval": 10, "fields": ["temp"]}})
    fw.offer("s1", "telemetry", {"temp": 4.0, "hum": 50}, T0)
    fw.offer("s1", "telemetry", {"temp": 4.5}, T0)  # within the interval: not sampled
    fw.offer("s2", "telemetry", {"temp": 7.0}, T0)
    fw.offer("s2", "status", {"state": "ok"}, T0)  # no rule for status
    fw.offer("s3", "telemetry", {"hum": 40}, T0)  # none of the rule's fields
    await fw.flush()
    assert [(e.data["device"], e.data["values"]) for e in sent] == [
        ("s1", {"temp": 4.0}),
        ("s2", {"temp": 7.0}),
    ]
    assert sent[0].kind == "telemetry"
    assert sent[0].data["mode"] == "sample"
    assert sent[0].message == "s1 telemetry: temp=4.0"
    clock.now += 10
    fw.offer("s1", "telemetry", {"temp": 5.0}, T0)
    await fw.flush()
    assert sent[-1].data["values"] == {"temp": 5.0}
    assert len(sent) == 3


async def test_last_mode_forwards_only_the_latest_and_holds_it_while_the_link_is_down():
    fw, sent, clock, link = forwarder({"devices/door-1/status": {"mode": "last", "interval": 5}})
    fw.offer("door-1", "status", {"state": "open"}, T0)
    assert await fw.flush() is None
    assert [e.data["values"] for e in sent] == [{"state": "open"}]
    fw.offer("door-1", "status", {"state": "closed"}, T0)
    fw.offer("door-1", "status", {"state": "open"}, T0)
    assert await fw.flush() == pytest.approx(5)  # due when the interval has passed
    assert len(sent) == 1
    link.up = False
    clock.now += 60
    fw.offer("door-1", "status", {"state": "closed"}, T0)
    fw.offer("door-1", "status", {"state": "jammed"}, T0)
    await fw.flush()
    assert len(sent) == 1  # the link is down: it waits, superseded by each newer one
    link.up = True
    await fw.flush()
    assert [e.data["values"] for e in sent] == [{"state": "open"}, {"state": "jammed"}]


async def test_limits_drop_samples_over_the_rate_and_over_the_outage_backlog():
    fw, sent, clock, link = forwarder({"devices/#": {"interval": 1}}, max_rate=3, max_backlog=2)
    fw.metrics = metrics = DaemonMetrics("edge", "r1-e1")

    def count(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    for i in range(5):
        fw.offer(f"s{i}", "telemetry", {"v": i}, T0)
        await fw.flush()
    assert [e.data["device"] for e in sent] == ["s0", "s1", "s2"]  # 3 tokens
    assert count("fleetbus_telemetry_dropped_total", reason="rate") == 2
    clock.now += 10  # the bucket refills
    link.up = False
    for i in range(5):
        fw.offer(f"s{i}", "telemetry", {"v": i}, T0)
        await fw.flush()
    assert [e.data["device"] for e in sent[3:]] == ["s0", "s1"]  # stored while down: 2 at most
    assert count("fleetbus_telemetry_dropped_total", reason="backlog") == 3
    assert count("fleetbus_telemetry_forwarded_total", mode="sample") == 5
    clock.now += 10
    link.up = True  # back: the count of stored samples starts again at the next outage
    fw.offer("s4", "telemetry", {"v": 9}, T0)
    await fw.flush()
    assert sent[-1].data["values"] == {"v": 9}


def test_a_rate_below_one_a_second_still_lets_readings_through():
    clock = Monotonic()
    bucket = TokenBucket(0.5, clock=clock)
    assert bucket.take()
    assert not bucket.take()
    assert bucket.wait() == pytest.approx(2.0)
    clock.now += 2.0
    assert bucket.take()


async def test_an_invalid_rule_from_an_override_is_skipped_and_the_others_apply():
    fw, sent, _, _ = forwarder(
        {"devices/+/telemetry": {"interval": "often"}, "devices/+/status": {"interval": 1}}
    )
    assert [r.topic for r in fw.rules] == ["devices/+/status"]
    fw.offer("s1", "status", {"state": "ok"}, T0)
    await fw.flush()
    assert len(sent) == 1


async def telemetry_count(fleet: Any) -> int:
    """Telemetry events stored in the edge's own EVENTS stream."""
    nc = await connect_as(fleet.plan, EDGE)
    try:
        info = await nc.jetstream().stream_info(
            subjects.EVENTS_STREAM, subjects_filter=subjects.events("r1", EDGE, "telemetry")
        )
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


@pytest.mark.slow
async def test_selected_telemetry_reaches_the_hub_through_a_cut_link_within_its_limits(tmp_path):
    async with device_fleet(tmp_path, telemetry_max_backlog=3, telemetry_max_rate=100) as (fleet, client):
        start = utcnow()
        spec = {
            "telemetry": {
                "devices/+/telemetry": {"mode": "sample", "interval": 1, "fields": ["temp"]},
                "devices/door-1/status": {"mode": "last", "interval": 1},
            }
        }
        await client.profiles.apply(Profile(name="sensors", spec=ProfileSpec.model_validate(spec)))

        async def rules_applied() -> Any:
            report = await client.report(EDGE)
            result = report.apply_result if report else None
            return result and "sensors" in result.profile_revisions

        await eventually(rules_applied, timeout=30, what="the edge applying the profile")
        heard: list[Event] = []

        async def listen() -> None:
            async for event in client.watch_events(["telemetry"], since=start):
                heard.append(event)  # noqa: PERF401 - live: each as it comes, the stream never ends

        def values(device: str) -> list[dict[str, Any]]:
            return [e.data["values"] for e in heard if e.data["device"] == device]  # type: ignore[misc]

        listener = asyncio.create_task(listen())
        mqtt_port = fleet.plan.site(EDGE).server.mqtt_port
        assert mqtt_port is not None
        try:
            # One site gateway speaks for both devices.
            login = await device_login(fleet.plan, EDGE, "site-gw", gateway=True)
            async with aiomqtt.Client("127.0.0.1", mqtt_port, identifier="site-devices", **login) as mqtt:
                await mqtt.publish("devices/fridge-1/telemetry", json.dumps({"temp": 4.0, "hum": 50}), qos=1)
                await mqtt.publish("devices/door-1/status", json.dumps({"state": "closed"}), qos=1)
                await mqtt.publish("devices/door-1/telemetry", json.dumps({"battery": 90}), qos=1)

                async def first_readings() -> bool:
                    return values("fridge-1") == [{"temp": 4.0}] and values("door-1") == [{"state": "closed"}]

                await eventually(first_readings, timeout=20, what="the first readings at the hub")
                [fridge] = [e for e in heard if e.data["device"] == "fridge-1"]
                assert (fridge.kind, fridge.region, fridge.edge) == ("telemetry", "r1", EDGE)
                assert fridge.data["mode"] == "sample"
                stored_before = await telemetry_count(fleet)
                assert stored_before == 2  # door-1's battery: no field the rule selects

                # The uplink goes down: samples are stored up to the backlog limit, the last
                # value waits at the edge, superseded ones never leave.
                fleet.link(EDGE).cut()
                metrics = Metrics(fleet)

                async def link_down() -> bool:
                    return (await metrics.scrape(EDGE)).value("fleetbus_upstream_up") == 0

                await eventually(link_down, timeout=20, what="the edge noticing its uplink is down")
                for n in range(2, 7):  # new devices: each one's first reading is a sample
                    await mqtt.publish(f"devices/fridge-{n}/telemetry", json.dumps({"temp": 10.0 + n}), qos=1)
                for state in ("open", "closed", "jammed"):
                    await mqtt.publish("devices/door-1/status", json.dumps({"state": state}), qos=1)

                async def all_heard() -> bool:  # every one reached the edge's registry
                    scrape = await metrics.scrape(EDGE)
                    heard_telemetry = scrape.value("fleetbus_device_messages_total", channel="telemetry")
                    heard_status = scrape.value("fleetbus_device_messages_total", channel="status")
                    return (heard_telemetry, heard_status) == (7, 4)

                await eventually(all_heard, timeout=20, what="the readings at the edge")
                scrape = await metrics.scrape(EDGE)
                assert scrape.value("fleetbus_telemetry_dropped_total", reason="backlog") == 2
                assert await telemetry_count(fleet) == stored_before + 3  # the door's waits in memory

                fleet.link(EDGE).heal()

                async def caught_up() -> bool:
                    return bool(values("fridge-4")) and values("door-1")[1:] == [{"state": "jammed"}]

                await eventually(caught_up, timeout=60, what="stored samples and the last value at the hub")
                assert [values(f"fridge-{n}") for n in range(1, 7)] == [
                    [{"temp": 4.0}], [{"temp": 12.0}], [{"temp": 13.0}], [{"temp": 14.0}],
                    [], [],  # over the limit: dropped, counted
                ]  # fmt: skip
                assert await telemetry_count(fleet) == stored_before + 4  # 3 samples + 1 last value
                scrape = await metrics.scrape(EDGE)
                assert scrape.value("fleetbus_telemetry_forwarded_total", mode="sample") == 4
                assert scrape.value("fleetbus_telemetry_forwarded_total", mode="last") == 2
                assert {"fleetbus_telemetry_forwarded_total", "fleetbus_telemetry_dropped_total"} <= (
                    CHECKED_ELSEWHERE
                )

            # The dashboard's event feed leaves telemetry out: once it has an apply result
            # stored after every telemetry event above, it holds none of them.
            spec["config"] = {"revision": 2}
            await client.profiles.apply(Profile(name="sensors", spec=ProfileSpec.model_validate(spec)))

            async def second_apply_in_feed() -> bool:
                _, events = await dashboard_get(fleet, f"/api/events?kind=apply_result&edge={EDGE}")
                return any(e["apply_result"]["profile_revisions"].get("sensors") == 2 for e in events)

            await eventually(second_apply_in_feed, timeout=30, what="the new apply result in the dashboard")
            status, shown = await dashboard_get(fleet, "/api/events?kind=telemetry")
            assert (status, shown) == (200, [])
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
