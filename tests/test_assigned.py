"""Edges receive only what concerns them (docs/security.md#edges-receive-only-what-concerns-them).

On a real fleet: each edge's replicas hold only the profiles that select it (by the labels it
enrolled with) and its groups' overrides; a profile that stops selecting an edge, by a change
of its selector or of the edge's labels, reaches that edge only as a signed stub, which ends
it there; a new label brings the profile; a delete reaches the edges that held it. (The
server refusing an edge's key everything else: tests/test_security.py; a compromised regional
handing out stubs or leaving records out: tests/test_desired_trust.py.)
"""

import secrets
import tomllib

import pytest
from nats.aio.client import Client

from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.supervisor import DevFleet, toml_text
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.codec import decode_body
from schemas.headers import STUB
from schemas.override import OverrideScope
from schemas.profile import LabelSelector, Profile, ProfileSpec
from tests.conftest import connect_as
from tests.fleetprobe import applied_hash, client_of, files_holding
from tests.helpers import eventually

pytestmark = pytest.mark.slow

E1, E2 = "r1-e1", "r1-e2"


def profile(name: str, selector: dict[str, str], marker: str) -> Profile:
    return Profile(
        name=name, selector=LabelSelector(match_labels=selector), spec=ProfileSpec(config={name: marker})
    )


async def relabel(fleet: DevFleet, edge: str, labels: dict[str, str]) -> None:
    """Give `edge` more labels and restart its daemon (it enrolls again with them)."""
    path = fleet.plan.site(edge).workdir / "daemon.toml"
    values = tomllib.loads(path.read_text())
    values["labels"] = {**values["labels"], **labels}
    path.write_text(toml_text(values))
    await fleet.restart(edge, server=False, daemon=True)


async def applies(client: FleetClient, edge: str, names: set[str]) -> bool:
    """Whether `edge` applied exactly the profiles `names`, and what the hub says it should."""
    report = await client.report(edge)
    if report is None or report.apply_result is None or report.apply_result.error:
        return False
    desired, _ = await client.explain(edge)
    return set(report.apply_result.profile_revisions) == names and (
        await applied_hash(client, edge) == desired.hash
    )


async def replica(nc: Client, bucket: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Every record of the edge's replica of `bucket`, by subject (the last of each)."""
    js = nc.jetstream(timeout=3)
    info = await js.stream_info(subjects.kv_stream(bucket), subjects_filter=">")
    found = {}
    for subject in info.state.subjects or {}:
        msg = await js.get_last_msg(subjects.kv_stream(bucket), subject)
        found[subject.removeprefix(subjects.kv_subject(bucket, ""))] = (
            msg.data or b"",
            dict(msg.headers or {}),
        )
    return found


def sites_holding(fleet: DevFleet, marker: str) -> set[str]:
    """The sites with a file (server store, daemon state, logs) holding `marker`."""
    return {path.split("/")[0] for path in files_holding(fleet, marker.encode())}


async def _deleted(nc: Client, name: str) -> bool:
    record = (await replica(nc, subjects.PROFILES_BUCKET)).get(name)
    return record is not None and record[1].get("KV-Operation") == "DEL"


async def writes(fleet: DevFleet) -> dict[str, float]:
    """`fleetbus_assigned_writes_total` of the regional, by operation."""
    url = f"http://127.0.0.1:{fleet.plan.site('r1').daemon_http_port}/metrics"
    found = {}
    for line in (await http_get(url, 2.0))[1].decode().splitlines():
        if line.startswith("fleetbus_assigned_writes_total{"):
            found[line.split('operation="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return found


async def test_each_edge_holds_only_the_profiles_and_group_overrides_that_concern_it(fleet):
    await relabel(fleet, E1, {"role": "pos", "group": "tills"})
    markers = {name: f"{name}-{secrets.token_hex(6)}" for name in ("all", "pos", "pos2", "tills", "r1")}
    async with await client_of(fleet) as client:
        await client.profiles.apply(profile("all", {}, markers["all"]), reason="every edge")
        await client.profiles.apply(profile("pos", {"role": "pos"}, markers["pos"]), reason="tills only")
        for group in ("tills", "r1"):
            patch = {"config": {f"group-{group}": markers[group]}}
            await client.overrides.set(OverrideScope.GROUP, group, patch, reason="a group")
        await eventually(lambda: applies(client, E1, {"all", "pos"}), timeout=30, what="e1 applies all, pos")
        await eventually(lambda: applies(client, E2, {"all"}), timeout=30, what="e2 applies all")

        e1, e2 = await connect_as(fleet.plan, E1), await connect_as(fleet.plan, E2)
        try:
            assert set(await replica(e1, subjects.PROFILES_BUCKET)) == {"all", "pos"}
            assert set(await replica(e2, subjects.PROFILES_BUCKET)) == {"all"}
            assert set(await replica(e1, subjects.OVERRIDES_BUCKET)) == {"group.tills", "group.r1"}
            assert set(await replica(e2, subjects.OVERRIDES_BUCKET)) == {"group.r1"}
            # No file of e2 (its server's store, its daemon's state) holds what is not for it.
            edges = {E1, E2}
            assert sites_holding(fleet, markers["all"]) >= edges  # the scan finds what was sent
            assert sites_holding(fleet, markers["r1"]) >= edges
            assert E2 not in sites_holding(fleet, markers["pos"])
            assert E2 not in sites_holding(fleet, markers["tills"])
            assert E1 in sites_holding(fleet, markers["pos"])

            # The selector changes: `pos` selects nobody now. e1 gets the new revision's stub,
            # signed, without its content, and stops applying it.
            await client.profiles.apply(profile("pos", {"role": "kiosk"}, markers["pos2"]), reason="moved")
            await eventually(lambda: applies(client, E1, {"all"}), timeout=30, what="e1 drops pos")
            body, headers = (await replica(e1, subjects.PROFILES_BUCKET))["pos"]
            assert headers.get(STUB) == "1"
            stub = decode_body(Profile, body, subject="pos")
            assert (stub.revision, stub.selector.match_labels, stub.spec) == (
                2,
                {"role": "kiosk"},
                ProfileSpec(),
            )
            assert not sites_holding(fleet, markers["pos2"]) & edges

            # A label brings it: e2 becomes a kiosk, enrolls again, and gets the profile.
            await relabel(fleet, E2, {"role": "kiosk"})
            await eventually(lambda: applies(client, E2, {"all", "pos"}), timeout=30, what="e2 applies pos")
            assert sites_holding(fleet, markers["pos2"]) & edges == {E2}

            # A delete reaches the edges that hold a record of the profile, its stub too.
            await client.profiles.delete("pos", reason="gone")
            await eventually(lambda: applies(client, E2, {"all"}), timeout=30, what="e2 drops pos")
            for nc in (e1, e2):
                await eventually(
                    lambda nc=nc: _deleted(nc, "pos"), timeout=10, what="the signed delete in the replica"
                )
            # e1 now carries the label the deleted revision selected: it does not come back.
            await relabel(fleet, E1, {"role": "kiosk"})
            await e1.close()
            e1 = await connect_as(fleet.plan, E1)
            await eventually(
                lambda: applies(client, E1, {"all"}), timeout=30, what="e1 applying after relabel"
            )
            assert await _deleted(e1, "pos")
        finally:
            await e1.close()
            await e2.close()
    counted = await writes(fleet)
    assert counted.get("PUT", 0) >= 6, counted
    assert counted.get("STUB", 0) >= 1, counted
    assert counted.get("DEL", 0) >= 1, counted
