"""Gaps found in review of the poison-pill handling (5abd15d, consumers/loop.py), each shown against
the real server, and fixed: kept as regression tests."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
from redis.asyncio import Redis

from app.dispatch import Dispatch, now_ms
from app.events import parse_batch
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from consumers.base import Consumer, Delivery
from tests.integration.helpers import consuming, wait_for


async def ingest(services: Services, body: bytes) -> str:
    [accepted] = await services.ingest(parse_batch(body, "application/json"), "billing", {})
    return accepted.entry_id


async def settle(check: object, timeout_s: float) -> None:
    """wait_for, without failing: the assertion after it says what was expected."""
    with contextlib.suppress(AssertionError):
        await wait_for(check, timeout_s)  # type: ignore[arg-type]


async def test_a_history_replay_left_pending_by_a_stopped_worker_is_still_run(
    services: Services, redis: Redis, settings: Settings
) -> None:
    await ingest(services, b'[{"type":"job.run","data":1}]')
    seen: list[tuple[bool, int]] = []

    async def handler(delivery: Delivery) -> None:
        seen.append((delivery.replay, delivery.attempt))

    consumer = Consumer("jobs", handler, types=["job.*"], lease_s=2)
    async with consuming(redis, settings, consumer):
        await wait_for(lambda: len(seen) == 1)
        await services.dead_letters.replay_history("jobs", 0, None)  # runs, and records 'succeeded'
        await wait_for(lambda: len(seen) == 2)
    # The same range replayed again; the worker reads it and stops before running it (kill -9, a
    # deploy past the shutdown grace): read here under its name, never run.
    await services.dead_letters.replay_history("jobs", 0, None)
    replay = Keys(settings.prefix).replay(0, "jobs")
    assert await redis.xreadgroup("jobs", "w1", {replay: ">"}, count=10)
    async with consuming(redis, settings, consumer):  # restarted: it reads its own pending entries first
        await settle(lambda: len(seen) == 3, 4)
    assert len(seen) == 3, f"the replay was acked without running: {seen}"


async def test_a_hung_suspect_does_not_hold_up_the_other_consumers_of_its_process(
    services: Services, redis: Redis, settings: Settings
) -> None:
    hung_id = await ingest(services, b'[{"type":"hang.x","data":1}]')
    keys = Keys(settings.prefix)
    dispatch = Dispatch(redis, settings)
    await dispatch.ensure_groups("hang", start_at_beginning=True)
    await dispatch.ensure_groups("other", start_at_beginning=False)
    # w1 was running attempt 2 of the event when its process stopped: a suspect at the restart.
    await redis.xreadgroup("hang", "w1", {keys.stream(0): ">"}, count=10)
    await redis.rpush(keys.attempts(0, "hang", hung_id),
                      msgspec.json.encode({"attempt": 2, "outcome": "started", "at_ms": now_ms(), "consumer": "w1"}))
    hung, release, seen = asyncio.Event(), asyncio.Event(), []

    async def hang(delivery: Delivery) -> None:
        hung.set()
        await release.wait()  # an HTTP call without a timeout, say

    async def other(delivery: Delivery) -> None:
        seen.append(delivery.type)

    async with consuming(redis, settings, Consumer("hang", hang, types=["hang.*"]),
                         Consumer("other", other, start="now")):
        await asyncio.wait_for(hung.wait(), 10)
        await ingest(services, b'[{"type":"job.y","data":2}]')
        await settle(lambda: "job.y" in seen, 12)  # the isolation window is 5 s
        handled = list(seen)
        release.set()
    assert "job.y" in handled, "consumer 'other' handled nothing while a suspect of 'hang' hung"
