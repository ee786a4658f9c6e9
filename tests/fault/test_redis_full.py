"""Redis full (`maxmemory` reached under `noeviction`) under load: ingest refuses with a clear 503
and Retry-After, the rejection is counted in the metrics, nothing already stored changes, and ingest
resumes by itself once there is room again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from redis import exceptions as rx

from app.connections import is_unavailable, unavailable
from app.settings import Settings
from tests.fault.checks import metric, verdict
from tests.fault.load import Load, wait_acked
from tests.fault.stack import Stack

REJECTED = ("eventflow_events_rejected_total", 'reason="service-unavailable"')


@pytest.mark.timeout(90)
async def test_a_full_redis_refuses_ingest_clearly_and_harms_nothing_stored(
    make_stack: Callable[..., Stack], fault_table: Callable[..., None]
) -> None:
    stack = make_stack()
    redis = stack.redis()
    try:
        key = await stack.start_all(redis)
        load, stop = Load(stack.url, key, tag="full"), asyncio.Event()
        running = asyncio.create_task(load.run(stop))
        await wait_acked(load, 300)
        rejected_before = await metric(stack, *REJECTED)
        used = int((await redis.info("memory"))["used_memory"])
        await redis.config_set("maxmemory", str(used // 2))  # full: every write that needs memory is refused
        refused_at_start = load.outcomes["503"]
        deadline = time.monotonic() + 10
        while load.outcomes["503"] < refused_at_start + 6:  # every producer has met the full store
            assert time.monotonic() < deadline, f"no refusals while full: {load.outcomes} {load.bad}"
            await asyncio.sleep(0.02)
        stream = stack.keys.stream(0)
        stored = await redis.xrange(stream)
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            refused = await client.post("/v1/events", json={"type": "fault.test", "id": "while-full"},
                                        headers={"Authorization": f"Bearer {key}"})
        await asyncio.sleep(1.5)  # the producers keep trying
        unchanged = await redis.xrange(stream) == stored
        refused_while_full = load.outcomes["503"] - refused_at_start
        gauges = (await metric(stack, "eventflow_redis_used_memory_bytes"),
                  await metric(stack, "eventflow_redis_maxmemory_bytes"))
        rejected_delta = await metric(stack, *REJECTED) - rejected_before
        await redis.config_set("maxmemory", "0")
        await wait_acked(load, 300)  # resumes by itself
        stop.set()
        await running
        result = await verdict(stack, redis, load.acked)
        fault_table(scenario="Redis full (noeviction)", load=load.describe(),
                    faults=f"maxmemory below use for ~2 s ({refused_while_full} refusals)", answers=load.answers(),
                    acknowledged=len(load.acked), lost=result.lost, duplicated=result.duplicated(),
                    unfinished=result.unfinished)
        assert load.outcomes["bad"] == 0, load.bad
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
        assert "full" in refused.json()["detail"], refused.json()
        assert unchanged, "entries stored before the server filled up changed"
        assert rejected_delta >= refused_while_full + 1, (rejected_delta, refused_while_full)
        assert gauges[0] > gauges[1] > 0, gauges
        result.assert_sound()
    finally:
        await redis.aclose()


def test_redis_pys_out_of_memory_error_is_a_503_naming_the_full_store() -> None:
    # redis-py cuts the `OOM` code off the message of the OutOfMemoryError it raises (also for a
    # script's write): the check must go by the class, or a full store answers 500.
    exc = rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'. script: on @user_script:148.")
    assert is_unavailable(exc)
    assert "full" in unavailable(exc, Settings()).detail
    assert is_unavailable(rx.ResponseError("OOM command not allowed when used memory > 'maxmemory'."))
