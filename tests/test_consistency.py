"""The consistency suite on fixed seeds (a short schedule each; `make soak` runs long ones).

See tests/consistency.py for what a schedule does and what is checked after the final heal.
"""

import pytest

from fleetbus.devfleet.plan import plan_fleet
from tests.consistency import fleet_shape, make_schedule, run_seed

pytestmark = pytest.mark.slow

CI_SEEDS = (11, 23, 42)
CI_STEPS = 30
# A clustered hub (docs/clustering.md): its nodes' servers and daemons are killed one by one.
CI_CLUSTER_SEEDS = (10, 23)  # each kills a hub node's server and a hub daemon


@pytest.mark.parametrize("seed", CI_SEEDS)
async def test_fleet_converges_and_loses_nothing_after_a_random_fault_schedule(seed, tmp_path):
    outcome = await run_seed(seed, CI_STEPS, tmp_path, converge_timeout=120)
    print(f"seed {seed}: {outcome.faults} faults, converged {outcome.converge_s}s after the final heal")
    assert outcome.faults > 0
    assert outcome.ok, outcome.replay_text()


@pytest.mark.parametrize("seed", CI_CLUSTER_SEEDS)
async def test_a_clustered_hub_converges_and_loses_nothing_after_a_random_fault_schedule(seed, tmp_path):
    outcome = await run_seed(seed, CI_STEPS, tmp_path, converge_timeout=120, hub_nodes=3)
    print(f"seed {seed} (3 hub nodes): {outcome.faults} faults, converged {outcome.converge_s}s")
    assert outcome.faults > 0
    assert any(s.action == "kill" and s.site.startswith("hub-n") for s in outcome.schedule), (
        outcome.replay_text()
    )
    assert outcome.ok, outcome.replay_text()


def test_a_schedule_is_a_pure_function_of_its_seed(tmp_path):
    plan = plan_fleet(tmp_path, 2, 2, iter(range(30000, 31000)), links=True)
    shape = fleet_shape(plan)
    first = make_schedule(7, 200, shape)
    assert first == make_schedule(7, 200, shape)
    assert first != make_schedule(8, 200, shape)
    actions = {step.action for step in first}
    assert actions == {
        "profile",
        "override",
        "unoverride",
        "facts",
        "event",
        "cut",
        "blackhole",
        "heal",
        "kill",
        "restart",
    }
    # Which link failures are silent comes from a second generator: without blackholes the
    # schedule is the same, step for step, with every blackhole a cut.
    plain = make_schedule(7, 200, shape, blackholes=False)
    assert [s.action if s.action != "blackhole" else "cut" for s in first] == [s.action for s in plain]
    killed = {step.site for step in first if step.action == "kill"}
    assert "hub" in killed  # the hub's processes are fair game too
