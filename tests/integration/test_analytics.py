"""The analytics consumer and GET /v1/stats against the real server: counts match what was posted,
buckets add up, producer keys see only their own source, dead letters are counted by group."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
from redis.asyncio import Redis

from app.dispatch import REPLAY, Pending
from app.events import parse_request
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from app.stats import MINUTE_MS, Stats, StatsWriter, now_ms
from consumers import analytics
from consumers.base import Delivery
from consumers.runner import Runner
from tests.integration.helpers import assert_problem, wait_for

OPERATOR = {"Authorization": "Bearer operator-token"}
MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


async def post(services: Services, source: str, event_type: str, count: int) -> None:
    for i in range(count):
        events, _ = parse_request(json.dumps({"type": event_type, "data": {"n": i}}).encode(),
                                  "application/json", {})
        await services.ingest(events, source, {})


@contextlib.asynccontextmanager
async def running(redis: Redis, settings: Settings) -> AsyncIterator[None]:
    consumer = analytics.build(settings, redis)
    runner = Runner([consumer], redis, settings, "w1")
    task = asyncio.create_task(runner.run())
    try:
        yield
    finally:
        runner.stop.set()
        await asyncio.wait_for(task, 10)
        assert consumer.close is not None
        await consumer.close()


async def counted(redis: Redis, settings: Settings) -> int:
    series = await Stats(redis, settings).series(None, None, 60, None)  # a fresh reader: no cache
    return sum(series.total)



def sums(series: dict[str, list[int]]) -> dict[str, int]:
    return {name: sum(values) for name, values in series.items()}


async def test_counts_match_what_was_posted_and_stats_serves_them_by_scope(
    services: Services, redis: Redis, settings: Settings, make_client: MakeClient,
    new_producer: Callable[[str], Awaitable[dict[str, str]]],
) -> None:
    billing = await new_producer("billing")
    await new_producer("shop")
    await post(services, "billing", "order.created", 7)
    await post(services, "billing", "order.paid", 2)
    await post(services, "shop", "user.signup", 3)
    async with running(redis, settings):
        await wait_for(lambda: _equals(counted(redis, settings), 12))

    async with make_client(api_token="operator-token") as client:
        everything = (await client.get("/v1/stats", headers=OPERATOR)).json()
        own = (await client.get("/v1/stats", headers=billing)).json()
        unauthenticated = await client.get("/v1/stats")
    assert everything["bucket_s"] == 60 and len(everything["times"]) == len(everything["total"]) >= 60
    assert sum(everything["total"]) == 12
    assert sums(everything["by_type"]) == {"order.created": 7, "user.signup": 3, "order.paid": 2}
    assert list(everything["by_type"]) == ["order.created", "user.signup", "order.paid"]  # largest first
    assert sums(everything["by_source"]) == {"billing": 9, "shop": 3}
    assert everything["source"] is None
    assert own["source"] == "billing" and sum(own["total"]) == 9
    assert sums(own["by_type"]) == {"order.created": 7, "order.paid": 2}
    assert sums(own["by_source"]) == {"billing": 9}
    assert_problem(unauthenticated, 401)


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_counts_go_to_the_minute_the_event_was_stored_and_buckets_add_them_up(
    redis: Redis, settings: Settings
) -> None:
    writer = StatsWriter(redis, settings, flush_s=60)
    start = (now_ms() // (30 * MINUTE_MS) - 1) * 30 * MINUTE_MS  # a half-hour boundary (3-minute aligned too)
    for minute, n in ((0, 1), (1, 2), (2, 4), (5, 8)):
        for _ in range(n):
            writer.add("order.created", "billing", start + minute * MINUTE_MS + 59_999)
    writer.add("order.created", "billing", now_ms() - settings.stats_retention_s * 1000 - MINUTE_MS)  # expired
    await writer.close()  # flushes what is left
    stats = Stats(redis, settings)
    per_minute = await stats.series(start, start + 6 * MINUTE_MS, 60, None)
    assert per_minute.total == [1, 2, 4, 0, 0, 8]
    assert per_minute.times[0] == start and per_minute.until == start + 6 * MINUTE_MS
    per_three = await stats.series(start + 30_000, start + 6 * MINUTE_MS, 180, None)
    assert per_three.times == [start, start + 3 * MINUTE_MS] and per_three.total == [7, 8]
    ttl_ms = await redis.pttl(Keys(settings.prefix).stats_minute(start // MINUTE_MS))
    assert 0 < ttl_ms <= settings.stats_retention_s * 1000


async def test_replayed_deliveries_are_not_counted_twice(redis: Redis, settings: Settings) -> None:
    consumer = analytics.build(settings, redis)
    entry_id = f"{now_ms()}-0"
    fields = {b"_v": b"1", b"type": b"order.created", b"source": b"billing", b"_replay": b"history"}
    pending = Pending(kind=REPLAY, stream_id=entry_id, entry_id=entry_id, partition=0, fields=fields)
    await consumer.handler(Delivery(pending, "analytics", 1))
    assert consumer.close is not None
    await consumer.close()
    assert await counted(redis, settings) == 0


async def test_dead_letters_are_counted_by_group_and_scoped_by_source(
    redis: Redis, settings: Settings, make_client: MakeClient,
    new_producer: Callable[[str], Awaitable[dict[str, str]]],
) -> None:
    shop = await new_producer("shop")
    dlq = Keys(settings.prefix, settings.partitions).dead_letters(0)
    for group, source in (("audit", "billing"), ("notify", "billing"), ("notify", "shop")):
        fields: dict[Any, Any] = {"type": "order.created", "source": source, "_group": group, "_reason": "permanent"}
        await redis.xadd(dlq, fields)
    async with make_client(api_token="operator-token") as client:
        everything = (await client.get("/v1/stats", headers=OPERATOR)).json()["dead_letters"]
        own = (await client.get("/v1/stats", headers=shop)).json()["dead_letters"]
    assert everything == {"total": 3, "by_group": {"audit": 1, "notify": 2}, "exact": True}
    assert own == {"total": 1, "by_group": {"notify": 1}, "exact": True}


async def test_bad_ranges_and_buckets_are_refused(make_client: MakeClient) -> None:
    async with make_client(api_token="operator-token") as client:
        bucket = await client.get("/v1/stats", params={"bucket": 90}, headers=OPERATOR)
        backwards = await client.get("/v1/stats", params={"since": 2000, "until": 1000}, headers=OPERATOR)
        too_long = await client.get("/v1/stats", params={"since": "2024-01-01T00:00:00Z",
                                                         "until": "2024-03-01T00:00:00Z"}, headers=OPERATOR)
        not_a_time = await client.get("/v1/stats", params={"since": "yesterday"}, headers=OPERATOR)
    assert_problem(bucket, 422, "/bucket")
    assert_problem(backwards, 422, "/until")
    assert_problem(too_long, 422, "/since")
    assert_problem(not_a_time, 422, "/since")
