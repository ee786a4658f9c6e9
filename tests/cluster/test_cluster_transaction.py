"""The transaction helper's WATCH on a cluster: reads at once on the watched node, EXEC on the same
connection, WatchError when the key changed meanwhile, one slot only, and the caller's loop never blocked."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions as rx
from redis.asyncio import Redis

from app.connections import ClusterTransaction, transaction
from app.keys import Keys
from app.settings import Settings


async def test_a_watched_transaction_reads_then_writes_and_aborts_when_the_key_changed(
    redis: Redis, settings: Settings
) -> None:
    key = Keys(settings.prefix).audit_leader
    await redis.set(key, "a")
    async with transaction(redis) as pipe:
        assert isinstance(pipe, ClusterTransaction)
        await pipe.watch(key)
        assert await pipe.get(key) == b"a"
        pipe.multi()
        pipe.set(key, "b")
        pipe.pexpire(key, 5000)
        assert await pipe.execute() == [True, True]
    assert await redis.get(key) == b"b"

    async with transaction(redis) as pipe:
        await pipe.watch(key)
        assert await pipe.get(key) == b"b"
        await redis.set(key, "other")  # another client, between the read and EXEC
        pipe.multi()
        pipe.set(key, "c")
        with pytest.raises(rx.WatchError):
            await pipe.execute()
        # The same object watches again after an abort, as redis-py's pipeline does.
        await pipe.watch(key)
        pipe.multi()
        pipe.set(key, "d")
        assert await pipe.execute() == [True]
    assert await redis.get(key) == b"d"


async def test_a_watched_transaction_stays_in_one_slot_and_gives_its_connection_back(
    redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.prefix, settings.partitions)
    first, other = keys.stream(0), next(keys.stream(p) for p in range(1, keys.partitions)
                                         if redis.keyslot(keys.stream(p)) != redis.keyslot(keys.stream(0)))  # type: ignore[attr-defined]
    async with transaction(redis) as pipe:
        await pipe.watch(first)
        with pytest.raises(rx.CrossSlotTransactionError):
            await pipe.get(other)
    async with transaction(redis) as pipe:
        await pipe.watch(first)
        pipe.multi()
        pipe.set(other, "x")
        with pytest.raises(rx.CrossSlotTransactionError):
            await pipe.execute()
    # Abandoned watches (reset without EXEC) leave no watched connection behind: many in a row
    # still work, and other tasks run meanwhile (nothing blocks the loop).
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    for _ in range(50):
        async with transaction(redis) as pipe:
            await pipe.watch(first)
            await pipe.exists(first)
    task.cancel()
    assert ticks > 10
    assert not await redis.exists(other)
