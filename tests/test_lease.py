"""The hub's lease (docs/clustering.md#leases): the timing rules, pure; and two holders
contending on a real nats-server's KV bucket with an age limit."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetbus.core.lease import Held, LeasePolicy
from fleetbus.nats.bus import connect
from fleetbus.nats.lease import Lease, transient
from fleetbus.nats.provisioning import BucketSpec, ensure_bucket
from tests.conftest import Chain

FAST = LeasePolicy(ttl=1.2, every=0.2, margin=0.3)


def test_policy_refuses_renewals_slower_than_the_deadline() -> None:
    with pytest.raises(ValueError, match="every"):
        LeasePolicy(ttl=2, every=2, margin=0.5)
    with pytest.raises(ValueError, match="every"):
        LeasePolicy(ttl=2, every=0.5, margin=-1)


@given(
    sent=st.floats(0, 1e6),
    ttl=st.floats(1, 30),
    share=st.floats(0.05, 0.9),
    margin=st.floats(0, 0.5),
)
def test_a_holder_stops_before_the_server_could_give_the_lease_away(
    sent: float, ttl: float, share: float, margin: float
) -> None:
    every = (ttl - margin) * share
    policy = LeasePolicy(ttl=ttl, every=every, margin=margin)
    held = policy.held(7, sent)
    # The server stores the renewal at or after `sent` and keeps it `ttl` from then: a
    # contender can hold it from sent + ttl at the earliest.
    assert not held.valid(sent + ttl)
    assert held.valid(sent) or ttl - margin <= 0
    assert held.revision == 7
    # Never asked to sleep past its own deadline.
    for now in (sent, sent + every / 2, held.until - 1e-3):
        assert now + policy.next_try(now, held) <= held.until + 1e-9
    assert policy.next_try(sent, None) == every


def test_next_try_is_zero_once_past_the_deadline() -> None:
    policy = LeasePolicy()
    assert policy.next_try(100.0, Held(revision=1, until=99.0)) == 0.0


@contextlib.asynccontextmanager
async def two_holders(hub_server: Chain) -> AsyncIterator[tuple[Lease, Lease]]:
    url = hub_server.plan.site("hub").server.client_url
    bus = await connect(url, name="lease-test", source="/test", creds=hub_server.creds("hub"), site="hub")
    try:
        await ensure_bucket(bus.js, BucketSpec("leases", ttl=FAST.ttl))
        yield (
            Lease(bus.js, "leases", "hub", "hub-n1", policy=FAST),
            Lease(bus.js, "leases", "hub", "hub-n2", policy=FAST),
        )
    finally:
        await bus.close()


async def test_one_holder_at_a_time_and_takeover_after_the_ttl(hub_server: Chain) -> None:
    async with two_holders(hub_server) as (first, second):
        running: list[str] = []
        log: list[tuple[str, str, float]] = []
        loop = asyncio.get_running_loop()

        def duties(name: str) -> Callable[[Held], Coroutine[object, object, None]]:
            async def work(held: Held) -> None:
                running.append(name)
                log.append(("start", name, loop.time()))
                try:
                    while True:
                        assert running == [name], f"two holders act at once: {running}"
                        await asyncio.sleep(0.05)  # a duty's work
                finally:
                    running.remove(name)
                    log.append(("stop", name, loop.time()))

            return work

        a = asyncio.create_task(first.hold(duties("hub-n1")))
        await _until(lambda: running == ["hub-n1"])
        b = asyncio.create_task(second.hold(duties("hub-n2")))
        await asyncio.sleep(FAST.ttl * 2)  # the contender tries, and must not get it
        assert running == ["hub-n1"]
        assert second.held is None
        # The holder dies without a word (no release): its duties stop, its record ages out.
        a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await a
        gone = loop.time()
        await _until(lambda: running == ["hub-n2"], timeout=FAST.ttl + 3)
        took = next(t for what, who, t in log if what == "start" and who == "hub-n2") - gone
        assert took <= FAST.ttl + FAST.every + 1.0, took
        assert second.held is not None
        assert second.held.revision > 1  # a new fencing token
        b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await b


async def test_a_holder_whose_server_is_gone_stops_by_its_deadline(hub_server: Chain) -> None:
    async with two_holders(hub_server) as (first, _):
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def work(held: Held) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                stopped.set()

        task = asyncio.create_task(first.hold(work))
        await _until(lambda: first.held is not None)
        server = hub_server.servers["hub"]
        await server.kill(restart=False)
        killed = loop.time()
        held = first.held
        assert held is not None
        await asyncio.wait_for(stopped.wait(), timeout=FAST.ttl + 2)
        # It stopped acting no later than its deadline (+ scheduling), before the server's
        # record of it could have expired.
        assert loop.time() <= held.until + 0.25, (loop.time() - killed, held.until - killed)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(probe: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)  # a poll interval


def test_duties_failing_transiently_are_taken_up_again_others_stop_the_daemon() -> None:
    assert transient(TimeoutError())
    # A task group's failures (the hub's duties run in one) count when every one is transient.
    assert transient(ExceptionGroup("duties", [TimeoutError(), ExceptionGroup("inner", [TimeoutError()])]))
    assert not transient(ExceptionGroup("duties", [TimeoutError(), ValueError("a bug")]))
    assert not transient(ValueError("a bug"))
