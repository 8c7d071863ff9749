"""The hub's profile authority on a real hub server: revisions, compare-and-set, history."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from edge.drivers import Applied, DriverError
from edge.reconciler import Reconciler
from edge.streams import events_stream
from fleetbus.cli.profiles import parse_expiry
from fleetbus.core.compliance import State, assess
from fleetbus.core.desired import DesiredState
from fleetbus.errors import ConfigError, ConflictError, MissingError
from fleetbus.nats.bus import connect
from fleetbus.nats.provisioning import ensure_bucket, ensure_stream
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.tasks import cancel_and_wait
from fleetbus.sdk.documents import load_document
from fleetbus.sdk.stores import OverrideStore, ProfileStore
from hub.daemon import BUCKETS
from schemas import subjects
from schemas.codec import decode_body
from schemas.event import ApplyStatus, Event
from schemas.override import OverrideScope
from schemas.profile import Profile
from tests.helpers import eventually

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def profile(version: str = "1.0", name: str = "base") -> Profile:
    return Profile.model_validate(
        {"name": name, "spec": {"components": [{"name": "agent", "image": "a", "version": version}]}}
    )


@pytest.fixture
async def js(hub_server):
    nc = await hub_server.connect("hub")
    js = nc.jetstream()
    for bucket in BUCKETS:
        await ensure_bucket(js, bucket)
    yield js
    await nc.close()


async def test_revisions_count_per_profile_and_unchanged_is_not_a_revision(js):
    store = ProfileStore(js)
    assert (await store.apply(profile("1.0"), actor="a")).new.revision == 1
    assert (await store.apply(profile("1.0", name="other"), actor="a")).new.revision == 1
    again = await store.apply(profile("1.0"), actor="b")
    assert not again.changed
    assert (await store.get("base")).revision == 1
    assert (await store.apply(profile("2.0"), actor="b")).new.revision == 2
    assert [p.revision for p in await store.history("base")] == [1, 2]
    assert (await store.get("base", 1)).spec.components[0].version == "1.0"
    with pytest.raises(MissingError, match="no revision 7"):
        await store.get("base", 7)


async def test_compare_and_set_lets_exactly_one_concurrent_writer_win(js):
    await ProfileStore(js).apply(profile("1.0"), actor="a")
    results = await asyncio.gather(
        *(ProfileStore(js).apply(profile(f"2.{i}"), actor=f"w{i}", expect_revision=1) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, Exception))
    assert (await ProfileStore(js).get("base")).revision == 2


async def test_delete_then_recreate_continues_the_numbering(js):
    store = ProfileStore(js)
    await store.apply(profile("1.0"), actor="a")
    await store.apply(profile("2.0"), actor="a")
    await store.delete("base")
    with pytest.raises(MissingError):
        await store.get("base")
    assert await store.all() == []
    assert (await store.apply(profile("3.0"), actor="a")).new.revision == 3


async def test_overrides_set_list_remove(js):
    overrides = OverrideStore(js)
    await overrides.set(OverrideScope.EDGE, "r1-e1", {"config": {"a": 1}}, owner="o", reason="r", now=NOW)
    await overrides.set(OverrideScope.GROUP, "canary", {"config": {"b": 2}}, owner="o", reason="r")
    assert [s.key for s in await overrides.all()] == ["edge.r1-e1", "group.canary"]
    await overrides.remove(OverrideScope.EDGE, "r1-e1")
    assert [s.key for s in await overrides.all()] == ["group.canary"]
    with pytest.raises(MissingError, match="no override for edge 'r1-e1'"):
        await overrides.remove(OverrideScope.EDGE, "r1-e1")
    with pytest.raises(ConfigError, match="not in the future"):
        await overrides.set(OverrideScope.EDGE, "x", {"a": 1}, owner="o", reason="r", expires_at=NOW, now=NOW)


async def test_an_unreadable_override_is_listed_as_skipped_and_can_be_removed(js):
    overrides = OverrideStore(js)
    await overrides.set(OverrideScope.GROUP, "canary", {"config": {"b": 2}}, owner="o", reason="r")
    await js.publish(subjects.kv_subject(subjects.OVERRIDES_BUCKET, "edge.r1-e1"), b"not an override")
    assert [s.key for s in await overrides.all()] == ["group.canary"]
    assert [p.split(":")[0] for p in overrides.undecodable] == ["edge.r1-e1"]
    await overrides.remove(OverrideScope.EDGE, "r1-e1")
    assert [s.key for s in await overrides.all()] == ["group.canary"]
    assert overrides.undecodable == []
    with pytest.raises(MissingError):
        await overrides.remove(OverrideScope.EDGE, "r1-e1")


def test_load_document_names_file_field_and_problem(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: base\nspec:\n  components:\n    - {name: a, image: b}\npriority: high\n")
    with pytest.raises(ConfigError) as caught:
        load_document(path, Profile)
    text = str(caught.value)
    assert str(path) in text
    assert "spec.components.0: Value error, version required" in text
    assert "priority: Input should be a valid integer" in text
    path.write_text("name: cold\nspec:\n  telemetry:\n    sensors/+/temp: {mode: often}\n")
    with pytest.raises(ConfigError) as caught:
        load_document(path, Profile)
    text = str(caught.value)
    assert "  spec.telemetry.sensors/+/temp: Value error, telemetry topic 'sensors/+/temp' is not" in text
    assert "  spec.telemetry.sensors/+/temp.mode: Input should be 'sample' or 'last'" in text
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_document(path, Profile)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML or JSON"):
        load_document(path, Profile)


def test_parse_expiry():
    assert parse_expiry("90s", NOW) == NOW + timedelta(seconds=90)
    assert parse_expiry("2h", NOW) == NOW + timedelta(hours=2)
    assert parse_expiry("2026-12-01T00:00:00+00:00", NOW) == datetime(2026, 12, 1, tzinfo=UTC)
    for bad in ("2 hours", "2026-12-01T00:00:00", "soon"):
        with pytest.raises(ConfigError, match="--expires"):
            parse_expiry(bad, NOW)


class FlakyDriver:
    """A driver that fails until told otherwise (a real failure mode: the target is down)."""

    name = "flaky"

    def __init__(self) -> None:
        self.failing = True
        self.hash: str | None = None

    async def applied(self) -> None:
        return None

    async def apply(self, desired: DesiredState) -> Applied:
        if self.failing:
            msg = "target unreachable"
            raise DriverError(msg)
        changed, self.hash = self.hash != desired.hash, desired.hash
        return Applied(changed=changed)


async def test_failed_apply_is_reported_retried_and_seen_as_failed_by_compliance(hub_server):
    """The reconciler on a real server (its local buckets), with a driver that fails first."""
    url = hub_server.url("hub")
    bus = await connect(url, name="test", source="/test", creds=hub_server.creds("hub"))
    js = bus.js
    for bucket in BUCKETS:
        await ensure_bucket(js, bucket)
    await ensure_stream(js, events_stream("r1", "e1"))
    await ProfileStore(js).apply(profile("1.0"), actor="t")
    driver = FlakyDriver()
    reconciler = Reconciler(
        bus=bus,
        driver=driver,
        region="r1",
        edge="e1",
        labels={},
        groups=["r1"],
        metrics=DaemonMetrics("edge", "e1"),
    )
    task = asyncio.create_task(reconciler.run())
    sub = await js.subscribe(subjects.apply_results("r1", "e1"), ordered_consumer=True)
    try:
        msg = await sub.next_msg(timeout=10)
        first = decode_body(Event, msg.data, subject=msg.subject, content_type=msg.headers["Content-Type"])
        assert first.apply_result.status is ApplyStatus.FAILED
        assert first.apply_result.error == "target unreachable"
        rows = assess([profile("1.0").model_copy(update={"revision": 1})], [], [first], now=NOW)
        assert [r.state for r in rows] == [State.FAILED]

        driver.failing = False  # the target is back: the retry (2 s back-off) applies it
        msg = await sub.next_msg(timeout=10)
        second = decode_body(Event, msg.data, subject=msg.subject, content_type=msg.headers["Content-Type"])
        assert second.apply_result.status is ApplyStatus.APPLIED
        assert second.apply_result.desired_hash == first.apply_result.desired_hash
        rows = assess([profile("1.0").model_copy(update={"revision": 1})], [], [second], now=NOW)
        assert [r.state for r in rows] == [State.CONVERGED]
        await ProfileStore(js).apply(profile("2.0"), actor="t")
        rows = assess([await ProfileStore(js).get("base")], [], [second], now=NOW)
        assert [r.state for r in rows] == [State.PENDING]
        await eventually(lambda: _reported_version(reconciler, "2.0"), what="2.0 applied")
    finally:
        assert not await cancel_and_wait([task], timeout=10)
        await bus.close()


async def _reported_version(reconciler: Reconciler, version: str) -> bool:
    last = reconciler.last
    return last is not None and last.document["components"]["agent"]["version"] == version
