"""A paused Redis (SIGSTOP, then SIGCONT) and cut connections (CLIENT KILL TYPE normal) under load:
ingest answers 503 with Retry-After within a bounded time, never hangs and never 500s, recovers by
itself, and the workers reconnect and finish every event."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest

from tests.fault.checks import verdict
from tests.fault.load import Load, wait_acked
from tests.fault.stack import Stack

pytestmark = pytest.mark.timeout(90)

PAUSE_S = 2.0
CUTS = 3
# The slowest a refusal may be. EVENTFLOW_REDIS_TIMEOUT_S (0.5 s here) bounds each step, and a stall
# can chain a few: the read that times out, redis-py's one retry (a reconnect whose handshake waits
# again), the pool's wait for a connection. Measured up to 2.0 s here; the bound allows 6 steps.
BOUND_S = 6 * 0.5


async def test_a_paused_redis_and_cut_connections_get_prompt_503s_and_recover_by_themselves(
    make_stack: Callable[..., Stack], fault_table: Callable[..., None]
) -> None:
    stack = make_stack()
    redis = stack.redis()
    pid = stack.server.process.pid if stack.server.process else 0
    try:
        key = await stack.start_all(redis)
        load, stop = Load(stack.url, key, tag="stall"), asyncio.Event()
        running = asyncio.create_task(load.run(stop))
        await wait_acked(load, 300)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(PAUSE_S)
            refused_while_paused = load.outcomes["503"]
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        await wait_acked(load, 50)
        recovered_s = time.monotonic() - resumed
        for _ in range(CUTS):
            await redis.client_kill_filter(_type="normal", skipme=True)  # every client but this one
            await wait_acked(load, 150)
        stop.set()
        await running
        result = await verdict(stack, redis, load.acked)
        fault_table(scenario="Redis paused, connections cut", load=load.describe(),
                    faults=f"SIGSTOP {PAUSE_S:.0f} s; {CUTS}x CLIENT KILL TYPE normal", answers=load.answers(),
                    acknowledged=len(load.acked), lost=result.lost, duplicated=result.duplicated(),
                    unfinished=result.unfinished)
        assert load.outcomes["bad"] == 0, load.bad
        assert refused_while_paused > 0, "a paused Redis must turn into 503s, not waiting requests"
        assert load.slowest_refusal_s < BOUND_S, f"a refusal took {load.slowest_refusal_s:.2f} s"
        assert recovered_s < 3.0, f"ingest took {recovered_s:.1f} s to recover after SIGCONT"
        result.assert_sound()
    finally:
        await redis.aclose()
