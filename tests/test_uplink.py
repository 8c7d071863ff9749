"""An edge's forwarder resumes where the regional's copy ends, without duplicates, even when its
own position is gone and the regional's duplicate window would not catch a re-send."""

import asyncio
import contextlib

import pytest
from nats.js.errors import NotFoundError

from fleetbus.nats.uplink import DURABLE, ORIGIN
from schemas import subjects
from tests.conftest import connect_as, running_fleet
from tests.fleetprobe import emit_event, stream_ids
from tests.helpers import eventually

pytestmark = pytest.mark.slow

REGION, EDGE = "r1", "r1-e1"


async def test_a_forwarder_that_lost_its_position_sends_nothing_twice(tmp_path):
    async with running_fleet(tmp_path, regions=1, edges=1) as fleet:
        site = fleet.plan.site(EDGE)
        regional = await connect_as(fleet.plan, REGION)
        edge = await connect_as(fleet.plan, EDGE)
        try:
            rjs, ejs = regional.jetstream(), edge.jetstream()
            first = [
                await emit_event(site.server.client_url, REGION, EDGE, creds=site.creds_path, data={"n": n})
                for n in range(5)
            ]

            async def arrived(ids: list[str | None]) -> bool:
                at_regional, _ = await stream_ids(rjs, subjects.EVENTS_STREAM)
                return all(i is not None and at_regional[i] == 1 for i in ids)

            await eventually(lambda: arrived(first), timeout=30, what="the first events at the regional")
            # The regional would now store a re-send: its duplicate window is 1 s.
            config = (await rjs.stream_info(subjects.EVENTS_STREAM)).config
            config.duplicate_window = 1.0
            await rjs.update_stream(config)
            # The daemon stops and its position (the durable consumer) is lost.
            await fleet.kill(EDGE, server=False)
            with contextlib.suppress(NotFoundError):
                await ejs.delete_consumer(subjects.EVENTS_STREAM, DURABLE)
            await asyncio.sleep(1.5)  # past the regional's duplicate window: a length of time, not a state
            await fleet.restart(EDGE, server=False)
            url = site.server.client_url
            later = await emit_event(url, REGION, EDGE, creds=site.creds_path, data={"n": 5})
            await eventually(lambda: arrived([later]), timeout=30, what="a new event at the regional")
            at_regional, _ = await stream_ids(rjs, subjects.EVENTS_STREAM)
            stored, _ = await stream_ids(ejs, subjects.EVENTS_STREAM)
            assert {i: at_regional[i] for i in stored} == dict.fromkeys(stored, 1)
            last = await rjs.get_last_msg(subjects.EVENTS_STREAM, subjects.edge_events(REGION, EDGE))
            assert (last.headers or {}).get(ORIGIN, "").endswith(f" {sum(stored.values())}"), last.headers
        finally:
            await regional.close()
            await edge.close()
