"""Inventory and presence views: the pure parts (bucket reads: tests/test_kv.py)."""

import json
from datetime import UTC, datetime

import pytest

from edge.inventory import FactsError, host_facts, material, read_facts
from fleetbus.core.views import edge_presence
from regional.daemon import heartbeat_problem
from schemas import subjects
from schemas.heartbeat import Heartbeat, Tier
from schemas.inventory import InventorySnapshot, KubernetesInventory, StreamBacklog
from schemas.presence import PresenceChange, PresenceState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def snapshot(**changes: object) -> InventorySnapshot:
    base = InventorySnapshot(
        region="r1",
        edge="r1-e1",
        seq=1,
        observed_at=T0,
        backlog=[StreamBacklog(stream="EVENTS", pending=0), StreamBacklog(stream="INVENTORY", pending=0)],
    )
    return base.model_copy(update=changes)


def test_material_ignores_what_moves_all_the_time_but_not_what_matters():
    before = material(snapshot())
    host = snapshot().host.model_copy(update={"disk_free_bytes": 123})
    assert material(snapshot(seq=9, observed_at=datetime.now(UTC), host=host)) == before
    # INVENTORY's own backlog is the previous snapshot: counting it would loop forever.
    inv_pending = [StreamBacklog(stream="EVENTS", pending=0), StreamBacklog(stream="INVENTORY", pending=1)]
    assert material(snapshot(backlog=inv_pending)) == before
    waiting = [StreamBacklog(stream="EVENTS", pending=5), StreamBacklog(stream="INVENTORY", pending=0)]
    more_waiting = [StreamBacklog(stream="EVENTS", pending=9), StreamBacklog(stream="INVENTORY", pending=0)]
    assert material(snapshot(backlog=waiting)) != before  # a backlog appeared
    assert material(snapshot(backlog=waiting)) == material(snapshot(backlog=more_waiting))
    lost = [StreamBacklog(stream="EVENTS", pending=5, evicted=2, evicted_unforwarded=2)]
    assert material(snapshot(backlog=lost)) != material(snapshot(backlog=waiting[:1]))
    assert material(snapshot(facts={"rack": "b7"})) != before
    assert material(snapshot(labels={"env": "prod"})) != before
    cluster = KubernetesInventory(server="https://k", pods={"kube-system": {"Running": 3}}, read_at=T0)
    assert material(snapshot(kubernetes=cluster)) != before
    reread = cluster.model_copy(update={"read_at": datetime.now(UTC)})
    assert material(snapshot(kubernetes=reread)) == material(snapshot(kubernetes=cluster))
    more_pods = cluster.model_copy(update={"pods": {"kube-system": {"Running": 4}}})
    assert material(snapshot(kubernetes=more_pods)) != material(snapshot(kubernetes=cluster))


def test_facts_file(tmp_path):
    path = tmp_path / "facts.json"
    assert read_facts(path) == {}
    path.write_text(json.dumps({"rack": "b7", "power": {"ups": True}}))
    assert read_facts(path) == {"rack": "b7", "power": {"ups": True}}
    path.write_text("[1, 2]")
    with pytest.raises(FactsError, match="must hold a JSON object, not list"):
        read_facts(path)
    path.write_text("{oops")
    with pytest.raises(FactsError, match="not valid JSON"):
        read_facts(path)


def test_host_facts_are_read_from_this_machine(tmp_path):
    facts = host_facts(tmp_path)
    assert facts.hostname
    assert facts.cpu_count >= 1
    assert facts.memory_bytes > 2**20
    assert facts.disk_total_bytes >= facts.disk_free_bytes > 0
    assert facts.kernel
    assert facts.boot_time is not None
    assert facts.boot_time < datetime.now(UTC)


def record(state: PresenceState, edge: str | None = "r1-e1") -> PresenceChange:
    return PresenceChange(region="r1", edge=edge, state=state, changed_at=T0, reason="why")


@pytest.mark.parametrize(
    ("region_state", "shown"),
    [
        (PresenceState.ONLINE, PresenceState.OFFLINE),
        (PresenceState.STALE, PresenceState.UNREACHABLE),
        (PresenceState.OFFLINE, PresenceState.UNREACHABLE),
        (None, PresenceState.UNREACHABLE),
    ],
)
def test_an_edge_behind_a_region_the_hub_cannot_hear_is_unreachable(region_state, shown):
    region = record(region_state, edge=None) if region_state else None
    row = edge_presence(record(PresenceState.OFFLINE), region)
    assert row.state is shown
    assert row.reported is PresenceState.OFFLINE  # what the regional last said is kept
    assert row.region_state is region_state


def beat(site: str, region: str = "r1", tier: Tier = Tier.EDGE) -> Heartbeat:
    return Heartbeat(
        tier=tier, site=site, region=region, seq=0, sent_at=T0, interval_seconds=1, uptime_seconds=1
    )


def test_heartbeats_the_regional_must_ignore():
    enrolled = {"r1-e1"}
    ok = subjects.edge_heartbeat("r1", "r1-e1")
    assert heartbeat_problem(beat("r1-e1"), ok, "r1", enrolled) is None
    assert (
        heartbeat_problem(beat("r1-e9"), subjects.edge_heartbeat("r1", "r1-e9"), "r1", enrolled)
        == "unknown_edge"
    )
    assert heartbeat_problem(beat("r1-e2"), ok, "r1", enrolled) == "mismatch"  # body names another
    assert heartbeat_problem(beat("r1-e1", region="r2"), ok, "r1", enrolled) == "mismatch"
    assert heartbeat_problem(beat("r1-e1", tier=Tier.REGIONAL), ok, "r1", enrolled) == "mismatch"
