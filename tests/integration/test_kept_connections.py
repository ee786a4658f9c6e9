"""execute_packed's kept connections: reused across calls, never handed on with a reply half read,
and replaced after the server restarts (the health check PINGs a connection idle for over a second)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.connections import _kept, connect, execute_packed
from app.embedded import EmbeddedServer
from app.settings import Settings


@pytest.fixture
async def own_redis(own_server: EmbeddedServer) -> AsyncIterator[Redis]:
    client = connect(Settings(redis_url=own_server.url, prefix="kept"))
    yield client
    await client.aclose()


async def test_calls_in_turn_share_one_connection_of_the_pool(redis: Redis) -> None:
    ids = set()
    for n in range(5):
        [name, echoed] = await execute_packed(redis, [("CLIENT", "ID"), ("ECHO", f"call {n}")])
        assert echoed == f"call {n}".encode()
        ids.add(name)
    assert len(ids) == 1
    assert len(_kept[redis.connection_pool]) == 1


async def test_concurrent_calls_use_several_and_keep_at_most_four(redis: Redis) -> None:
    async def slow(n: int) -> list[object]:
        # Every call holds its connection until its blocking read times out, so none can share.
        return await execute_packed(redis, [("CLIENT", "ID"), ("BLPOP", f"kept:nothing:{n}", "0.05")])

    replies = await asyncio.gather(*(slow(n) for n in range(6)))
    assert len({client_id for client_id, _ in replies}) == 6
    assert all(popped is None for _, popped in replies)
    assert len(_kept[redis.connection_pool]) == 4


async def test_a_call_cancelled_mid_reply_never_leaves_its_reply_for_the_next(redis: Redis) -> None:
    await execute_packed(redis, [("PING",)])  # one kept connection
    waiting = asyncio.ensure_future(execute_packed(redis, [("BLPOP", "kept:later", "1")]))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await redis.rpush("kept:later", "stale")  # had the connection been kept, its reply would wait on it
    [echoed] = await execute_packed(redis, [("ECHO", "fresh")])
    assert echoed == b"fresh"
    assert await redis.lrange("kept:later", 0, -1) == [b"stale"]  # the cancelled BLPOP took nothing


async def test_after_a_server_restart_an_idle_kept_connection_is_replaced_before_use(
    own_server: EmbeddedServer, own_redis: Redis
) -> None:
    await execute_packed(own_redis, [("PING",)])
    own_server.stop()
    own_server.start()
    await asyncio.sleep(1.1)  # past health_check_interval: the next use PINGs first, and reconnects
    [pong] = await execute_packed(own_redis, [("PING",)])  # no ConnectionError: it reconnected
    assert pong in (True, b"PONG")
    assert len(_kept[own_redis.connection_pool]) == 1
