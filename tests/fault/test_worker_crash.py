"""kill -9 a worker mid-batch, again and again, under load: every event ends succeeded in every group,
nothing stays pending, only what a killed worker held is delivered again (at-least-once), and the
audit log still holds each event once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.fault.checks import lifecycle_sample, pending_of, verdict
from tests.fault.load import Load, wait_acked
from tests.fault.stack import GROUPS, Stack

pytestmark = pytest.mark.timeout(90)

KILLS = 3
WORKERS = ("w1", "w2")


async def test_workers_killed_mid_batch_finish_every_event_in_every_group(
    make_stack: Callable[..., Stack], fault_table: Callable[..., None]
) -> None:
    # Slow deliveries keep batches in flight, so each kill lands mid-batch.
    stack = make_stack(FAULT_TALLY_SLEEP_S="0.02")
    redis = stack.redis()
    try:
        key = await stack.start_all(redis, WORKERS)
        load, stop = Load(stack.url, key, tag="worker"), asyncio.Event()
        running = asyncio.create_task(load.run(stop))
        held: set[str] = set()  # what the killed workers had taken and not acknowledged (tally's pending list)
        for n in range(KILLS):
            await wait_acked(load, 300)
            victim = WORKERS[n % len(WORKERS)]
            stack.kill_worker(victim)
            held |= await pending_of(redis, stack.keys, "tally", victim)
            stack.start_worker(victim)  # a supervisor restarts the slot: same consumer name, own pending first
        await wait_acked(load, 300)
        stop.set()
        await running
        result = await verdict(stack, redis, load.acked, settle_s=40)
        fault_table(scenario="worker killed mid-batch", load=load.describe(),
                    faults=f"{KILLS}x kill -9 worker (of {len(WORKERS)}), restart", answers=load.answers(),
                    acknowledged=len(load.acked), lost=result.lost, duplicated=result.duplicated(),
                    unfinished=result.unfinished)
        assert load.outcomes["bad"] == 0, load.bad
        result.assert_sound()
        assert held, "no kill caught a worker mid-batch"
        assert set(result.redelivered) <= held, "an entry no killed worker held was delivered twice"
        states = await lifecycle_sample(stack, list(load.acked.values()))
        assert all(s == {f"{g}:succeeded" for g in GROUPS} for s in states.values()), states
    finally:
        await redis.aclose()
