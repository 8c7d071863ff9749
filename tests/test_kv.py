"""The typed KV layer (`fleetbus.nats.kv`) on a real nats-server: reads, compare-and-set,
history, skip-and-count of bad values, and the live mirror."""

import asyncio

import pytest

from fleetbus.errors import ConfigError, ConflictError, MissingError
from fleetbus.nats.kv import Bucket, Mirror
from fleetbus.nats.provisioning import BucketSpec, ensure_bucket
from fleetbus.runtime.metrics import DaemonMetrics
from schemas.base import utcnow
from schemas.presence import PresenceChange, PresenceState
from tests.helpers import eventually


def change(region: str, edge: str, state: PresenceState = PresenceState.ONLINE) -> PresenceChange:
    return PresenceChange(region=region, edge=edge, state=state, changed_at=utcnow(), last_seen=utcnow())


@pytest.fixture
async def js(hub_server):
    nc = await hub_server.connect("hub")
    js = nc.jetstream()
    await ensure_bucket(js, BucketSpec("things", history=5))
    yield js
    await nc.close()


def decode_errors(metrics: DaemonMetrics) -> float:
    return metrics.registry.get_sample_value("fleetbus_decode_errors_total", {"kind": "fleet.presence"}) or 0


async def test_current_values_then_every_later_change_once(js):
    bucket = Bucket(js, "things", PresenceChange)
    assert await bucket.current() == []
    await bucket.put("r1.a", change("r1", "a", PresenceState.STALE))
    await bucket.put("r1.b", change("r1", "b"))
    await bucket.put("r1.a", change("r1", "a"))
    await bucket.put("r2.c", change("r2", "c"))
    entries, seen = await bucket.snapshot("r1.*")
    assert {(e.key, e.value.state if e.value else None) for e in entries} == {
        ("r1.a", PresenceState.ONLINE),
        ("r1.b", PresenceState.ONLINE),
    }
    await bucket.put("r1.b", change("r1", "b", PresenceState.OFFLINE))  # after the snapshot
    await bucket.delete("r1.a")
    changes = bucket.changes("r1.*", after=seen)
    got = [await asyncio.wait_for(anext(changes), 5) for _ in range(2)]
    await changes.aclose()
    assert [(e.key, e.deleted) for e in got] == [("r1.b", False), ("r1.a", True)]
    assert all(e.stored_at.tzinfo is not None for e in got)

    watch = bucket.watch()
    first = [await asyncio.wait_for(anext(watch), 5) for _ in range(3)]
    assert {(e.key, e.deleted) for e in first} == {("r1.a", True), ("r1.b", False), ("r2.c", False)}
    await bucket.put("r2.c", change("r2", "c", PresenceState.STALE))
    live = await asyncio.wait_for(anext(watch), 5)
    await watch.aclose()
    assert live.key == "r2.c"
    assert live.value
    assert live.value.state is PresenceState.STALE
    assert [e.key for e in await bucket.current()] == ["r1.b", "r2.c"]
    assert await bucket.live_keys() == ["r1.b", "r2.c"]
    assert await bucket.keys() == ["r1.a", "r1.b", "r2.c"]  # deleted ones included
    assert await bucket.get("r1.a") is None


async def test_compare_and_set_and_history(js):
    bucket = Bucket(js, "things", PresenceChange)
    assert await bucket.last_revision("r1.a") == 0
    first = await bucket.update("r1.a", change("r1", "a"), last=0)
    with pytest.raises(ConflictError, match=r"things/r1.a changed since revision 0"):
        await bucket.update("r1.a", change("r1", "a"), last=0)
    second = await bucket.update("r1.a", change("r1", "a", PresenceState.STALE), last=first)
    with pytest.raises(ConflictError):
        await bucket.update("r1.a", change("r1", "a"), last=first)
    await bucket.delete("r1.a")
    deleted_at = await bucket.last_revision("r1.a")
    assert deleted_at > second
    await bucket.update("r1.a", change("r1", "a", PresenceState.OFFLINE), last=deleted_at)  # re-created
    history = await bucket.history("r1.a")
    assert [e.value.state if e.value else "deleted" for e in history] == [
        PresenceState.ONLINE,
        PresenceState.STALE,
        "deleted",
        PresenceState.OFFLINE,
    ]


async def test_a_bad_value_is_skipped_counted_and_the_last_good_one_stands(js):
    metrics = DaemonMetrics("hub", "hub")
    bucket = Bucket(js, "things", PresenceChange, metrics=metrics)
    await bucket.put("r1.a", change("r1", "a", PresenceState.STALE))
    await js.publish(bucket.subject("r1.a"), b"\xc1 not a presence record")  # someone else wrote it
    await js.publish(bucket.subject("r1.b"), b"{}")  # never good
    entry = await bucket.get("r1.a")
    assert entry
    assert entry.value
    assert entry.value.state is PresenceState.STALE
    assert "r1.a" in bucket.undecodable
    assert [e.key for e in await bucket.current()] == ["r1.a"]
    assert decode_errors(metrics) >= 2
    assert await bucket.get("r1.b") is None


async def test_a_missing_bucket_is_a_domain_error(js):
    bucket = Bucket(js, "nothing-here", PresenceChange)
    with pytest.raises(MissingError, match="no 'nothing-here' bucket"):
        await bucket.current()
    with pytest.raises(MissingError):
        await bucket.get("x")


async def test_the_mirror_loads_then_follows_in_bursts(js):
    bucket = Bucket(js, "things", PresenceChange)
    await bucket.put("r1.a", change("r1", "a"))
    mirror = Mirror(bucket)
    heard: list[set[str]] = []
    mirror.listen(lambda entries: heard.append({e.key for e in entries}))
    task = asyncio.create_task(mirror.run())
    try:
        await asyncio.wait_for(mirror.loaded.wait(), 5)
        assert set(mirror.values) == {"r1.a"}
        assert heard == [{"r1.a"}]
        await bucket.put("r1.b", change("r1", "b"))
        await bucket.delete("r1.a")

        async def followed() -> bool:
            return set(mirror.values) == {"r1.b"}

        await eventually(followed, timeout=5)
        assert set().union(*heard[1:]) == {"r1.a", "r1.b"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_mirror_tells_the_last_value_of_a_quick_run_of_writes(js):
    """One value per key (a replica's limit), each key written twice at once: nats-server
    may then say a record is pending that the limit already removed. The mirror still tells
    the last values without waiting for a later write (before the fix: 2 runs in 30 stale)."""
    await ensure_bucket(js, BucketSpec("latest", history=1))
    bucket = Bucket(js, "latest", PresenceChange)
    mirror = Mirror(bucket)
    task = asyncio.create_task(mirror.run())
    try:
        await asyncio.wait_for(mirror.loaded.wait(), 5)
        for run in range(30):
            keys = [f"r1.t{run}", f"r1.b{run}", f"r1.b{run}", f"r1.t{run}"]
            states = [PresenceState.STALE, PresenceState.STALE, PresenceState.ONLINE, PresenceState.ONLINE]
            await asyncio.gather(
                *(bucket.put(k, change("r1", k.split(".")[1], s)) for k, s in zip(keys, states, strict=True))
            )

            async def told(run: int = run) -> bool:
                values = [mirror.values.get(f"r1.{k}{run}") for k in ("t", "b")]
                return all(v is not None and v.state is PresenceState.ONLINE for v in values)

            await eventually(told, timeout=2, what=f"run {run}'s last values")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_single_key_operations_refuse_wildcards(js):
    bucket = Bucket(js, "things", PresenceChange)
    await bucket.put("r1.a", change("r1", "a"))
    for key in ("*", "r1.*", ">", "r1.", "", "r1 a"):
        with pytest.raises(ConfigError, match="not a key of bucket 'things'"):
            await bucket.get(key)
        with pytest.raises(ConfigError):
            await bucket.delete(key)
        with pytest.raises(ConfigError):
            await bucket.put(key, change("r1", "a"))
    assert [e.key for e in await bucket.current()] == ["r1.a"]  # nothing written, nothing deleted
