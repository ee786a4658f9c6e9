"""execute_packed's kept connections: reused across calls, never handed on with a reply half read,
and replaced after the server restarts (the health check PINGs a connection idle for over a second)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import fakeredis
import pytest
from redis import exceptions as rx
from redis.asyncio import Redis

from app.connections import _kept, _plain, connect, execute_packed
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


async def test_the_lean_exchange_serves_redis_pys_own_connections_only(redis: Redis) -> None:
    conn = await redis.connection_pool.get_connection()
    try:
        assert _plain(conn)  # so the tests here exercise _exchange, not redis-py's send and reads
    finally:
        await redis.connection_pool.release(conn)
    fake = fakeredis.FakeAsyncRedis()
    fake_conn = await fake.connection_pool.get_connection()
    assert not _plain(fake_conn)  # fakeredis overrides the reads: its own methods are used
    await fake.aclose()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_replies_and_error_replies_come_back_as_values_in_either_protocol(
    own_server: EmbeddedServer, protocol: int
) -> None:
    client = connect(Settings(redis_url=own_server.url, prefix="kept"), protocol=protocol)
    try:
        replies = await execute_packed(client, [
            ("HSET", "kept:h", "a", "1"), ("EVALSHA", "0" * 40, 0), ("HGETALL", "kept:h"),
            ("INCR", "kept:h"), ("ECHO", "last"),
        ])
        assert replies[0] == 1
        assert isinstance(replies[1], rx.NoScriptError)
        assert replies[2] in ({b"a": b"1"}, [b"a", b"1"])  # RESP3 maps, RESP2 flat lists
        assert isinstance(replies[3], rx.ResponseError) and "WRONGTYPE" in str(replies[3])
        assert replies[4] == b"last"
    finally:
        await client.aclose()


async def test_a_reply_larger_than_the_socket_buffers_is_read_whole(redis: Redis) -> None:
    big = "x" * (4 << 20)
    [stored, echoed, length] = await execute_packed(
        redis, [("SET", "kept:big", big), ("GET", "kept:big"), ("STRLEN", "kept:big")])
    assert stored is True or stored == b"OK"
    assert echoed == big.encode() and length == len(big)


async def test_a_stalled_reply_times_out_and_the_connection_is_not_reused(own_server: EmbeddedServer) -> None:
    client = connect(Settings(redis_url=own_server.url, prefix="kept", redis_timeout_s=0.2))
    try:
        with pytest.raises(rx.TimeoutError):
            await execute_packed(client, [("BLPOP", "kept:never", "2")])
        await client.rpush("kept:never", "later")  # a reused connection would hand this BLPOP's reply on
        [echoed] = await execute_packed(client, [("ECHO", "next")])
        assert echoed == b"next"
        assert await client.lrange("kept:never", 0, -1) == [b"later"]
    finally:
        await client.aclose()


async def test_a_connection_the_server_closes_is_a_connection_error_then_replaced(own_redis: Redis) -> None:
    [client_id] = await execute_packed(own_redis, [("CLIENT", "ID")])
    await own_redis.execute_command("CLIENT", "KILL", "ID", client_id)
    with pytest.raises(rx.ConnectionError):
        await execute_packed(own_redis, [("PING",)])
    [other_id, pong] = await execute_packed(own_redis, [("CLIENT", "ID"), ("PING",)])
    assert other_id != client_id and pong in (True, b"PONG")
