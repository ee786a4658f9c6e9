"""Durability modes: refused at start-up when the server cannot honour them, and in `fsync` mode
every event that got a 202 survives a kill -9 of the server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest

from app.connections import check_server, connect
from app.embedded import EmbeddedServer
from app.errors import ConfigError
from app.keys import Keys
from app.service import Services
from app.settings import Durability, Settings
from tests.integration.helpers import assert_problem

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def always_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server that fsyncs its AOF before answering a write (`appendfsync always`)."""
    server = EmbeddedServer(tmp_path / "valkey-always", appendfsync="always").start()
    yield server
    server.stop()


async def check(settings: Settings) -> None:
    redis = connect(settings)
    try:
        await check_server(redis, settings)
    finally:
        await redis.aclose()


def config_errors(exc: BaseException) -> list[ConfigError]:
    """ConfigErrors in `exc`, also inside exception groups (the lifespan's task group wraps them)."""
    if isinstance(exc, ConfigError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in config_errors(sub)]
    return []


async def test_fsync_mode_against_an_everysec_server_fails_the_check_naming_the_variable(settings: Settings) -> None:
    with pytest.raises(ConfigError) as info:
        await check(settings.replace(durability=Durability.FSYNC))
    assert "EVENTFLOW_DURABILITY" in info.value.detail
    assert "appendfsync" in info.value.detail


async def test_fsync_mode_against_an_everysec_server_stops_the_app_at_start_up(
    make_client: MakeClient,
) -> None:
    with pytest.raises(BaseException) as info:
        async with make_client(durability=Durability.FSYNC):
            pass
    [error] = config_errors(info.value)
    assert "EVENTFLOW_DURABILITY" in error.detail


async def test_fsync_mode_against_a_server_without_aof_fails_the_check(tmp_path: Path, settings: Settings) -> None:
    server = EmbeddedServer(tmp_path / "no-aof", appendfsync="always", extra={"appendonly": "no"})
    with server, pytest.raises(ConfigError) as info:
        await check(settings.replace(redis_url=server.url, durability=Durability.FSYNC))
    assert "EVENTFLOW_DURABILITY" in info.value.detail


async def test_replica_mode_without_a_replica_fails_the_check_naming_the_variable(settings: Settings) -> None:
    with pytest.raises(ConfigError) as info:
        await check(settings.replace(durability=Durability.REPLICA))
    assert "EVENTFLOW_DURABILITY" in info.value.detail


async def test_fast_mode_needs_nothing_of_the_server(settings: Settings) -> None:
    await check(settings.replace(durability=Durability.FAST))


async def test_fsync_mode_against_an_always_server_accepts_events(
    make_client: MakeClient, always_server: EmbeddedServer, settings: Settings
) -> None:
    fsync = settings.replace(redis_url=always_server.url, durability=Durability.FSYNC)
    await check(fsync)
    redis = connect(fsync)
    try:
        key = (await Services(redis, fsync).producers.create("billing")).key
        async with make_client(redis_url=always_server.url, durability=Durability.FSYNC) as c:
            resp = await c.post("/v1/events", json={"type": "t", "id": "durable"},
                                headers={"Authorization": f"Bearer {key}"})
            assert resp.status_code == 202, resp.text
        assert await redis.xlen(Keys(fsync.prefix).stream(0)) == 1
    finally:
        await redis.aclose()


async def test_every_event_that_got_a_202_survives_a_kill_9_of_the_server(
    make_client: MakeClient, always_server: EmbeddedServer, settings: Settings
) -> None:
    fsync = settings.replace(redis_url=always_server.url, durability=Durability.FSYNC)
    setup = connect(fsync)
    try:
        auth = {"Authorization": f"Bearer {(await Services(setup, fsync).producers.create('billing')).key}"}
    finally:
        await setup.aclose()

    accepted: dict[str, str] = {}  # event id -> entry id, from the 202 answers
    statuses: list[int] = []
    stop = asyncio.Event()
    deadline = time.monotonic() + 30

    async def producer(c: httpx.AsyncClient, worker: int) -> None:
        # Like a careful producer: send each event until it gets a 202, with the same id each time.
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            event_id = f"w{worker}-{n}"
            resp = await c.post("/v1/events", json={"type": "t", "id": event_id, "data": n}, headers=auth)
            statuses.append(resp.status_code)
            if resp.status_code == 202:
                accepted[event_id] = resp.json()["entry_id"]
                n += 1
            else:
                await asyncio.sleep(0.01)

    async def crash() -> None:
        while len(accepted) < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        always_server.kill()  # SIGKILL while the producers keep posting
        at_kill = len(accepted)
        await asyncio.sleep(0.3)
        always_server.start()  # same data dir, same port
        while len(accepted) < at_kill + 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        stop.set()

    async with make_client(redis_url=always_server.url, durability=Durability.FSYNC, redis_timeout_s=1.0) as c:
        await asyncio.gather(crash(), *(producer(c, w) for w in range(8)))

    assert time.monotonic() < deadline, "the run did not finish in time"
    assert set(statuses) == {202, 503}, "the kill must have hit requests, and nothing may be a 500"
    assert len(accepted) >= 400

    redis = connect(fsync)
    try:
        log = await redis.xrange(Keys(fsync.prefix).stream(0))
    finally:
        await redis.aclose()
    logged: dict[str, list[str]] = {}
    for entry_id, fields in log:
        logged.setdefault(fields[b"id"].decode(), []).append(entry_id.decode())
    missing = sorted(set(accepted) - set(logged))
    assert not missing, f"{len(missing)} events got a 202 and are gone: {missing[:10]}"
    assert {i: logged[i] for i in accepted} == {i: [e] for i, e in accepted.items()}, "each exactly once"


async def test_a_server_that_can_no_longer_confirm_the_fsync_gets_a_503_not_a_500(
    make_client: MakeClient, always_server: EmbeddedServer, settings: Settings
) -> None:
    fsync = settings.replace(redis_url=always_server.url, durability=Durability.FSYNC)
    redis = connect(fsync)
    try:
        key = (await Services(redis, fsync).producers.create("billing")).key
        async with make_client(redis_url=always_server.url, durability=Durability.FSYNC) as c:
            await redis.config_set("appendonly", "no")  # after the start-up check: WAITAOF now refuses
            resp = await c.post("/v1/events", json={"type": "t", "id": "maybe"},
                                headers={"Authorization": f"Bearer {key}"})
            assert_problem(resp, 503)
            assert "retry with the same event ids" in resp.json()["detail"]
    finally:
        await redis.config_set("appendonly", "yes")
        await redis.aclose()


async def test_a_server_that_evicts_keys_gets_a_warning_at_start_up(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    redis = connect(settings)
    try:
        await check_server(redis, settings)
        assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        await redis.config_set("maxmemory-policy", "allkeys-lru")
        try:
            await check_server(redis, settings)
        finally:
            await redis.config_set("maxmemory-policy", "noeviction")
    finally:
        await redis.aclose()
    [warning] = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert warning.levelname == "WARNING"
    assert "allkeys-lru" in warning.getMessage() and "noeviction" in warning.getMessage()
