"""Staged rollouts on a real fleet (docs/rollouts.md): hub <- r1 <- six edges, every tier a
real process.

Each test applies a profile to all six edges at once, then a revision that rolls out in three
waves: `canary` (the edge labelled canary=true), `early` (half of the others, chosen by the
rollout's hash), `rest`. Every ApplyResult the edges send is collected from the hub's EVENTS
while the test runs, so "no edge of a later wave ran the revision before its wave started" is
checked over every apply, not only at the end; the regional's `assigned` bucket (what an
edge's link can read) is checked too.
"""

import asyncio
import contextlib
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Self

import pytest
from selenium.webdriver.common.by import By

from fleetbus.devfleet.supervisor import DevFleet
from fleetbus.errors import ConflictError
from fleetbus.sdk.client import FleetClient
from schemas import subjects
from schemas.event import ApplyStatus, EventKind
from schemas.presence import PresenceState
from schemas.profile import LabelSelector, Profile, ProfileSpec
from schemas.rollout import RolloutSpec, RolloutState, RolloutStatus
from tests.browser import OUTPUT, chromium
from tests.conftest import connect_as, hub_args, running_fleet
from tests.fleetprobe import client_of
from tests.helpers import CliResult, arun_cli, cli_env, eventually
from tests.test_assigned import relabel, writes
from tests.test_dashboard import dashboard

pytestmark = pytest.mark.slow

EDGES = [f"r1-e{n}" for n in range(1, 7)]
CANARY = EDGES[0]
NAME = "base"


@pytest.fixture
async def six(tmp_path: Path) -> AsyncIterator[DevFleet]:
    async with running_fleet(tmp_path, regions=1, edges=6) as fleet:
        await relabel(fleet, CANARY, {"canary": "true"})
        yield fleet


def base(marker: str, **spec: object) -> Profile:
    plan = {
        "waves": [
            {"name": "canary", "selector": {"match_labels": {"canary": "true"}}},
            {"name": "early", "percent": 50},
            {"name": "rest", "percent": 100},
        ],
        "max_failures": 0,
        "soak": 2,
        "wave_timeout": 60,
        **spec,
    }
    return Profile(
        name=NAME,
        selector=LabelSelector(),
        spec=ProfileSpec(config={"marker": marker}),
        rollout=RolloutSpec.model_validate(plan),
    )


class Applies:
    """Every ApplyResult of the fleet from now on, collected while the test runs."""

    def __init__(self, client: FleetClient) -> None:
        self.client, self.events = client, []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        since = datetime.now().astimezone()

        async def collect() -> None:
            async for event in self.client.watch_events([EventKind.APPLY_RESULT], since=since):
                self.events.append(event)

        self.task = asyncio.create_task(collect())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def first_run(self, revision: int) -> dict[str, datetime]:
        """Each edge's first successful apply of `revision` of the profile."""
        found: dict[str, datetime] = {}
        for event in self.events:
            result = event.apply_result
            if (
                result
                and result.status is not ApplyStatus.FAILED
                and result.profile_revisions.get(NAME) == revision
            ):
                found.setdefault(event.edge, event.observed_at)
        return found

    def ever_ran(self, revision: int) -> set[str]:
        """The edges that ever reported `revision` in an apply, failed or not."""
        return {
            e.edge
            for e in self.events
            if e.apply_result and e.apply_result.profile_revisions.get(NAME) == revision
        }


async def runs(client: FleetClient, edge: str, revision: int) -> bool:
    report = await client.report(edge)
    result = report.apply_result if report else None
    return bool(
        result and result.status is not ApplyStatus.FAILED and result.profile_revisions.get(NAME) == revision
    )


async def all_run(client: FleetClient, edges: list[str], revision: int) -> bool:
    return all([await runs(client, e, revision) for e in edges])


async def status(client: FleetClient) -> RolloutState:
    return (await client.rollouts.status(NAME)).state


async def reaches(client: FleetClient, wanted: RolloutStatus, revision: int) -> bool:
    state = await status(client)
    return state.revision == revision and state.status is wanted


async def cli(fleet: DevFleet, *args: str) -> CliResult:
    return await arun_cli(*args, *hub_args(fleet.plan), env=cli_env(COLUMNS="200"), timeout=200)


def in_order(applies: Applies, state: RolloutState) -> None:
    """No edge ran the rollout's revision before its wave started."""
    for edge, at in applies.first_run(state.revision).items():
        wave = state.members[edge]
        started = state.waves[wave].started_at
        assert started is not None, f"{edge} ran {state.key} but its wave never started"
        assert at >= started, f"{edge} ran {state.key} at {at}, before its wave started at {started}"


async def assigned_revision(fleet: DevFleet, edge: str) -> int | None:
    """The revision of the profile the regional hands `edge` (all its link may read)."""
    nc = await connect_as(fleet.plan, "r1")
    try:
        msg = await nc.jetstream(timeout=3).get_last_msg(
            subjects.kv_stream(subjects.ASSIGNED_BUCKET),
            subjects.kv_subject(
                subjects.ASSIGNED_BUCKET, subjects.assigned_key(edge, subjects.ASSIGNED_PROFILE, NAME)
            ),
        )
        return int((msg.headers or {}).get("Fleetbus-Revision", "0"))
    finally:
        await nc.close()


def break_driver(fleet: DevFleet, edge: str) -> Path:
    """Make `edge`'s local driver fail every apply: its applied-state file is a directory."""
    path = fleet.plan.site(edge).workdir / "daemon" / "applied.json"
    path.unlink(missing_ok=True)
    path.mkdir()
    return path


async def test_a_failing_canary_halts_the_rollout_and_a_rollback_restores_the_previous_content(six):
    fleet = six
    async with await client_of(fleet) as client, Applies(client) as applies:
        await client.profiles.apply(base("v1").model_copy(update={"rollout": None}), reason="all at once")
        await eventually(lambda: all_run(client, EDGES, 1), timeout=60, what="every edge runs base@1")
        await client.profiles.apply(base("v2"), reason="in waves")
        await eventually(
            lambda: reaches(client, RolloutStatus.COMPLETE, 2), timeout=90, what="base#2 complete"
        )
        await eventually(lambda: all_run(client, EDGES, 2), timeout=60, what="every edge runs base@2")

        # Revision 3 rolls out; the canary's driver fails every apply: halted after wave 1.
        broken = break_driver(fleet, CANARY)
        await client.profiles.apply(base("v3"), reason="canary first")
        await eventually(lambda: reaches(client, RolloutStatus.HALTED, 3), timeout=60, what="halted")
        halted = await status(client)
        assert halted.wave == 0
        assert CANARY in halted.waves[0].failed
        done = await cli(fleet, "rollout", "status", NAME, "--wait", "--timeout", "30s")
        assert done.returncode == 1, done.stdout + done.stderr
        assert CANARY in done.stdout, done.stdout
        assert "cannot write" in done.stdout, done.stdout
        await dashboard_shows(fleet, "base#3", "halted", [CANARY, "cannot write"])
        later = [e for e in EDGES if e != CANARY]
        assert [await assigned_revision(fleet, e) for e in later] == [2] * len(later)

        # Revision 4, on_failure rollback, the canary still failing: the whole profile goes
        # back to the content every edge but the canary runs: revision 2's (a halted
        # revision is never "previous"), stored as revision 5, its rollout complete at once.
        await client.profiles.apply(base("v4", on_failure="rollback"), reason="again")
        await eventually(
            lambda: reaches(client, RolloutStatus.ROLLED_BACK, 4), timeout=60, what="rolled back"
        )
        await eventually(lambda: _restored(client, 4), timeout=30, what="the rollback revision recorded")
        rolled = await status(client)
        assert rolled.rollback == 5
        assert rolled.previous == 2
        restoring = (await client.rollouts.status(NAME, revision=5)).state
        assert (restoring.status, restoring.rollback_of) == (RolloutStatus.COMPLETE, 4)
        done = await cli(fleet, "rollout", "status", NAME, "--wait", "--timeout", "30s")
        assert done.returncode == 1, done.stdout
        assert "base#4 rolled_back" in done.stdout, done.stdout
        assert "revision 5 restores" in done.stdout, done.stdout
        shutil.rmtree(broken)  # the canary's driver works again: it runs revision 5
        await eventually(lambda: all_run(client, EDGES, 5), timeout=60, what="every edge runs base@5")
        restored = await client.profiles.get(NAME)
        assert restored.spec.config == {"marker": "v2"}
        desired, _ = await client.explain(CANARY)
        assert desired.document["config"]["marker"] == "v2"
        assert applies.ever_ran(3) <= {CANARY}
        assert applies.ever_ran(4) <= {CANARY}
        in_order(applies, await _state(client, 2))


async def _state(client: FleetClient, revision: int) -> RolloutState:
    return (await client.rollouts.status(NAME, revision=revision)).state


async def dashboard_shows(fleet: DevFleet, key: str, status: str, texts: list[str]) -> None:
    """The dashboard's page of the profile's rollouts shows rollout `key` as `status`, with `texts`."""
    async with chromium() as browser:
        await asyncio.to_thread(browser.get, fleet.login_url)
        await asyncio.to_thread(browser.get, dashboard(fleet) + f"#/rollouts/{NAME}")

        def card() -> str | None:
            found = browser.find_elements(
                By.CSS_SELECTOR, f'div.rollout[data-rollout="{key}"][data-status="{status}"]'
            )
            return found[0].text if found else None

        async def shown() -> bool:
            text = await asyncio.to_thread(card)
            return text is not None and all(t in text for t in texts)

        await eventually(shown, timeout=20, what=f"the dashboard showing {key} {status}")
        await asyncio.to_thread(browser.save_screenshot, str(OUTPUT / f"rollout-{status}.png"))


async def _restored(client: FleetClient, revision: int) -> bool:
    return (await _state(client, revision)).rollback is not None


async def test_a_passing_rollout_honours_its_soak_and_operators_steer_it(six):
    fleet = six
    async with await client_of(fleet) as client, Applies(client) as applies:
        await client.profiles.apply(base("v1").model_copy(update={"rollout": None}), reason="all at once")
        await eventually(lambda: all_run(client, EDGES, 1), timeout=60, what="every edge runs base@1")

        # Revision 2: three waves, a 2 s soak each; `profile apply --wait` follows it to the end.
        path = fleet.plan.state_dir / "base.yaml"
        path.write_text(base("v2").model_dump_json(exclude_none=True))
        done = await cli(fleet, "profile", "apply", "-f", str(path), "--wait", "--timeout", "150s")
        assert done.returncode == 0, done.stdout + done.stderr
        state = await status(client)
        assert state.status is RolloutStatus.COMPLETE
        assert "canary     passed" in done.stdout, done.stdout
        await eventually(lambda: all_run(client, EDGES, 2), timeout=30, what="every edge runs base@2")
        in_order(applies, state)
        for index, wave in enumerate(state.waves):
            members = [e for e, w in state.members.items() if w == index]
            assert wave.passed_at is not None
            if members:  # a wave of edges soaked 2 s after converging before the next started
                assert wave.converged_at is not None
                assert (wave.passed_at - wave.converged_at).total_seconds() >= 2.0
        assert set(state.members) == set(EDGES)
        assert state.members[CANARY] == 0

        # Revision 3 with a long soak: the canary converges and soaks; `promote` ends the soak.
        await client.profiles.apply(base("v3", soak="10m"), reason="promote me")
        await eventually(lambda: runs(client, CANARY, 3), timeout=60, what="the canary runs base@3")
        await eventually(lambda: _soaking(client, 0), timeout=30, what="the canary wave soaks")
        # The hub daemon dies mid-soak (SIGKILL) and starts again: the rollout goes on from
        # where it was, its steps not taken twice.
        soaking = await status(client)
        await fleet.kill("hub", server=False, daemon=True)
        await fleet.restart("hub", server=False, daemon=True)
        await eventually(lambda: _soaking(client, 0), timeout=30, what="the canary wave soaking again")
        three = await status(client)
        assert three.waves == soaking.waves
        assert three.steps == soaking.steps
        early = [e for e, w in three.members.items() if w == 1]
        rest = [e for e, w in three.members.items() if w == 2]
        assert [await assigned_revision(fleet, e) for e in early + rest] == [2] * len(early + rest)
        # `explain` says why: the early edges run revision 2 while their wave waits, and the
        # hub counts them converged to that.
        desired, _ = await client.explain(early[0])
        assert desired.document["config"]["marker"] == "v2"
        sources = {source for _path, _value, source in desired.explain()}
        assert "profile base@2 (rollout base#3 wave early: waiting)" in sources, sources
        rows = {row.edge: row.state.value for row in await client.compliance()}
        assert rows == dict.fromkeys(EDGES, "converged")
        await client.rollouts.promote(NAME, reason="looks good")
        await eventually(lambda: all_run(client, early, 3), timeout=60, what="the early wave runs base@3")

        # `pause` is refused nothing, `promote` while paused is; `resume` and on.
        await client.rollouts.pause(NAME, reason="hold")
        with pytest.raises(ConflictError, match="paused"):
            await client.rollouts.promote(NAME)
        paused = await status(client)
        assert paused.status is RolloutStatus.PAUSED
        assert paused.wave == 1
        assert [await assigned_revision(fleet, e) for e in rest] == [2] * len(rest)
        await client.rollouts.resume(NAME, reason="go on")
        await client.rollouts.promote(NAME, reason="and on")
        await eventually(lambda: _soaking(client, 2), timeout=60, what="the rest wave soaks")
        await eventually(lambda: all_run(client, EDGES, 3), timeout=60, what="every edge runs base@3")

        # `abort`: the last wave's soak is cut short by an abort; the rollout ends there,
        # exit 1, and a new revision is what moves the fleet again.
        await client.rollouts.abort(NAME, reason="enough")
        done = await cli(fleet, "rollout", "status", NAME, "--json")
        assert done.returncode == 0, done.stdout
        assert '"aborted"' in done.stdout, done.stdout
        done = await cli(fleet, "rollout", "status", NAME, "--wait")
        assert done.returncode == 1, done.stdout
        three = await status(client)
        in_order(applies, three)
        kinds = [s.kind for s in three.steps]
        for kind in ("started", "wave_started", "wave_converged", "promoted", "paused", "resumed", "aborted"):
            assert kind in kinds, kinds
        # Across the hub daemon's crash, no step was taken twice.
        taken = Counter((s.kind, s.wave) for s in three.steps if s.kind.startswith("wave_"))
        assert max(taken.values()) == 1, taken

        # A pause holds a wave whose soak ends meanwhile: revision 4 soaks 2 s per wave; the
        # canary's wave is paused while soaking, and for 4 s (twice the soak) nothing moves.
        await client.profiles.apply(base("v4", soak="2s"), reason="pause me")
        await eventually(lambda: _soaking(client, 0, revision=4), timeout=60, what="base#4 canary soaking")
        await client.rollouts.pause(NAME, reason="hold the soak")
        until = time.monotonic() + 4.0
        while time.monotonic() < until:  # an observation window: nothing may move in it
            held = await status(client)
            assert (held.status, held.wave) == (RolloutStatus.PAUSED, 0), held.steps[-1]
        assert [await assigned_revision(fleet, e) for e in early + rest] == [3] * len(early + rest)
        await client.rollouts.resume(NAME, reason="go on")
        await eventually(
            lambda: reaches(client, RolloutStatus.COMPLETE, 4), timeout=90, what="base#4 complete"
        )
        four = await status(client)
        soaked = four.waves[0].passed_at - four.waves[0].converged_at  # type: ignore[operator]
        assert soaked.total_seconds() >= 2.0 + 4.0, soaked  # the soak, and the pause on top

        # A new profile that rolls out: edges of waves not started get nothing of it.
        fresh = base("fresh").model_copy(update={"name": "fresh"})
        await client.profiles.apply(fresh, reason="new, in waves")
        await eventually(lambda: _complete(client, "fresh"), timeout=90, what="fresh complete")
        assert (await writes(fleet)).get("failed", 0) == 0


async def _soaking(client: FleetClient, wave: int, *, revision: int | None = None) -> bool:
    report = await client.rollouts.status(NAME)
    if revision is not None and report.state.revision != revision:
        return False
    return report.state.wave == wave and report.waves[wave].phase == "soaking"


async def _complete(client: FleetClient, name: str) -> bool:
    report = await client.rollouts.status(name)
    if report.state.status is not RolloutStatus.COMPLETE:
        return False
    found = [await client.report(e) for e in EDGES]
    return all(r and r.apply_result and r.apply_result.profile_revisions.get(name) == 1 for r in found)


async def online(client: FleetClient, edge: str, *, wanted: bool) -> bool:
    found = [p for p in await client.presence() if p.edge == edge]
    return bool(found) and (found[0].state is PresenceState.ONLINE) == wanted


async def test_an_edge_offline_when_its_wave_starts_is_skipped_waited_for_or_failed(six):
    fleet = six
    async with await client_of(fleet) as client, Applies(client) as applies:
        await client.profiles.apply(base("v1").model_copy(update={"rollout": None}), reason="all at once")
        await eventually(lambda: all_run(client, EDGES, 1), timeout=60, what="every edge runs base@1")
        link = fleet.link(CANARY)

        # skip: the canary is cut off when its wave starts; the rollout goes on without it,
        # and the canary converges to the new revision when its link returns.
        link.cut()
        await eventually(lambda: online(client, CANARY, wanted=False), timeout=30, what="the canary offline")
        await client.profiles.apply(base("v2", offline="skip"), reason="skip")
        await eventually(lambda: reaches(client, RolloutStatus.COMPLETE, 2), timeout=90, what="complete")
        two = await status(client)
        assert two.waves[0].skipped == [CANARY]
        assert await all_run(client, EDGES[1:], 2)
        assert CANARY not in applies.first_run(2)
        link.heal()
        await eventually(lambda: runs(client, CANARY, 2), timeout=60, what="the canary runs base@2 once back")

        # wait: the wave waits for the canary; nothing else gets the revision meanwhile.
        await eventually(lambda: online(client, CANARY, wanted=True), timeout=30, what="the canary online")
        link.cut()
        await eventually(lambda: online(client, CANARY, wanted=False), timeout=30, what="the canary offline")
        await client.profiles.apply(base("v3", offline="wait"), reason="wait")
        await eventually(lambda: _waiting_for(client, 3), timeout=30, what="the canary wave waiting")
        assert [await assigned_revision(fleet, e) for e in EDGES[1:]] == [2] * 5
        link.heal()
        await eventually(lambda: reaches(client, RolloutStatus.COMPLETE, 3), timeout=90, what="complete")
        await eventually(lambda: all_run(client, EDGES, 3), timeout=60, what="every edge runs base@3")
        in_order(applies, await status(client))

        # fail: an edge offline when its wave starts is a failure; max_failures 0 halts.
        await eventually(lambda: online(client, CANARY, wanted=True), timeout=30, what="the canary online")
        link.cut()
        await eventually(lambda: online(client, CANARY, wanted=False), timeout=30, what="the canary offline")
        await client.profiles.apply(base("v4", offline="fail"), reason="fail")
        await eventually(lambda: reaches(client, RolloutStatus.HALTED, 4), timeout=30, what="halted")
        four = await status(client)
        assert four.waves[0].failed == {CANARY: "offline when its wave started"}
        assert not applies.ever_ran(4)
        link.heal()


async def _waiting_for(client: FleetClient, revision: int) -> bool:
    report = await client.rollouts.status(NAME)
    wave = report.waves[0]
    return report.state.revision == revision and wave.phase == "converging" and wave.offline == 1
