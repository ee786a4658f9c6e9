"""kill -9 the web process under load, start it again: every event that got a 202 is in the log once,
and producers saw nothing but 202, 503 with Retry-After, or a dropped connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.fault.checks import lifecycle_sample, verdict
from tests.fault.load import Load, wait_acked
from tests.fault.stack import GROUPS, Stack

pytestmark = pytest.mark.timeout(90)

KILLS = 2


async def test_a_web_process_killed_mid_load_loses_no_acknowledged_event(
    make_stack: Callable[..., Stack], fault_table: Callable[..., None]
) -> None:
    stack = make_stack()
    redis = stack.redis()
    try:
        key = await stack.start_all(redis)
        load, stop = Load(stack.url, key, tag="web"), asyncio.Event()
        running = asyncio.create_task(load.run(stop))
        for _ in range(KILLS):
            await wait_acked(load, 400)
            stack.kill_web()  # mid-load: requests in flight lose their answer
            await asyncio.sleep(0.3)  # producers meet a closed port meanwhile
            await stack.start_web()
        await wait_acked(load, 400)
        stop.set()
        await running
        result = await verdict(stack, redis, load.acked)
        fault_table(scenario="web process killed", load=load.describe(), faults=f"{KILLS}x kill -9 web, restart",
                    answers=load.answers(),
                    acknowledged=len(load.acked), lost=result.lost, duplicated=result.duplicated(),
                    unfinished=result.unfinished)
        assert load.outcomes["bad"] == 0, load.bad
        assert load.outcomes["dropped"] > 0, f"the kills must have hit requests in flight: {load.outcomes}"
        result.assert_sound()
        states = await lifecycle_sample(stack, list(load.acked.values()))
        assert all(s == {f"{g}:succeeded" for g in GROUPS} for s in states.values()), states
    finally:
        await redis.aclose()
