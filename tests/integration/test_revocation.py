"""A revoked or rotated key stops working at once in every process, whatever the auth cache says."""

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
