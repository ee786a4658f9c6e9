"""kill -9 Redis under load and restart it on the same data.

`fsync` mode (the server runs `appendfsync always`, EventFlow checks it): a 202 is sent only after
the entry is on disk, so no acknowledged event may be lost. `fast` mode (`appendfsync everysec`):
the server writes each command to the AOF file before it answers, and a killed *process* leaves
that write in the kernel's page cache, so a process crash loses nothing either; what `fast` risks
is a power loss or kernel crash, which can cost the writes of the last second or so. That cannot be
caused from a test, so the suite measures the process kill and counts the events acknowledged in
the second before it: the exposure of a machine crash at this load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.fault.checks import verdict
from tests.fault.load import Load, wait_acked
from tests.fault.stack import Stack

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(("mode", "appendfsync"), [("fsync", "always"), ("fast", "everysec")])
async def test_redis_killed_and_restarted_on_its_data_keeps_every_acknowledged_event(
    make_stack: Callable[..., Stack], fault_table: Callable[..., None], mode: str, appendfsync: str
) -> None:
    stack = make_stack(appendfsync=appendfsync, EVENTFLOW_DURABILITY=mode)
    redis = stack.redis()
    try:
        key = await stack.start_all(redis)
        load, stop = Load(stack.url, key, tag=f"redis-{mode}"), asyncio.Event()
        running = asyncio.create_task(load.run(stop))
        await wait_acked(load, 600)
        killed_at = time.monotonic()
        stack.server.kill()  # SIGKILL with appends and deliveries in flight
        exposure = load.acked_within(killed_at - 1.0, killed_at)
        await asyncio.sleep(0.5)
        stack.server.start()  # same folder, same port: it replays its AOF
        await wait_acked(load, 600)
        stop.set()
        await running
        await redis.aclose()
        redis = stack.redis()  # the old client's connections died with the server
        result = await verdict(stack, redis, load.acked, settle_s=40)
        lost: int | str = result.lost
        if mode == "fast":
            lost = f"{result.lost} (a machine crash could cost the last ~1 s: {exposure} events here)"
        fault_table(scenario=f"Redis killed, `{mode}` mode", load=load.describe(),
                    faults=f"kill -9 Redis (appendfsync {appendfsync}), restart on its data",
                    answers=load.answers(), acknowledged=len(load.acked), lost=lost,
                    duplicated=result.duplicated(), unfinished=result.unfinished)
        assert load.outcomes["bad"] == 0, load.bad
        assert load.outcomes["503"] + load.outcomes["dropped"] > 0, "the kill must have hit requests"
        result.assert_sound()
    finally:
        await redis.aclose()
