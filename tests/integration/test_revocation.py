"""The auth cache: a revoked or rotated key stops working at once in every process, whatever the
cache says; a burst of requests that finds it cold shares one read per key and per producer."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from app.connections import connect
from app.errors import Unauthorized
from app.producers import Producers
from app.settings import Settings


async def rejected_within(producers: Producers, key: str, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            await producers.authenticate(f"Bearer {key}")
        except Unauthorized:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"the key still worked after {timeout_s} s")


@pytest.mark.parametrize("action", ["revoke", "rotate"])
async def test_a_key_changed_in_one_process_is_refused_at_once_in_another(
    redis: Redis, settings: Settings, action: str
) -> None:
    settings = settings.replace(auth_cache_s=60.0)  # without the change feed: a minute of grace
    other_client = connect(settings)  # "another web process": its own client and cache
    here, there = Producers(redis, settings), Producers(other_client, settings)
    try:
        key = (await here.create("billing")).key
        assert await there.authenticate(f"Bearer {key}") == "billing"  # now cached there
        await asyncio.sleep(0.2)
        assert await there.authenticate(f"Bearer {key}") == "billing"  # still served from the cache
        await getattr(here, action)("billing")
        assert await rejected_within(there, key, timeout_s=2.0) < 0.5
    finally:
        await other_client.aclose()


async def test_a_burst_that_finds_the_cache_cold_reads_the_key_and_the_type_limit_once(
    redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    producers = Producers(redis, settings)
    key = (await producers.create("billing", types=["order.*"])).key
    cold = Producers(redis, settings)  # a web process that has seen neither yet
    reads: list[tuple[str, str]] = []
    hget = redis.hget

    async def counting_hget(name: str, field: str) -> object:
        reads.append((name, field))
        return await hget(name, field)

    monkeypatch.setattr(redis, "hget", counting_hget)

    async def one_request() -> None:
        source = await cold.authenticate(f"Bearer {key}")
        await cold.check_types(source, ["order.created"])

    await asyncio.gather(*(one_request() for _ in range(20)))

    assert sorted(name for name, _ in reads) == sorted([cold.keys.producer_keys, cold.keys.producers])
    await one_request()  # cached now
    assert len(reads) == 2
    await asyncio.gather(*(cold.check_types("billing", ["order.paid"]) for _ in range(5)))
    assert len(reads) == 2

