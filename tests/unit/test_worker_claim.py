"""A worker process's claim on its consumer name (consumers/runner.py NameClaim, app/lua/claim.lua): taken
only when free, renewed and given back only by the process whose token it carries, so two processes
given one name never read as one consumer."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import fakeredis
import msgspec
import pytest

from app.keys import Keys
from app.settings import Settings
from consumers import runner as runner_module
from consumers.base import Consumer, Delivery
from consumers.runner import NameClaim, Runner

KEYS = Keys("claim-test")


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis()


def claim(redis: fakeredis.FakeAsyncRedis, name: str = "w1") -> NameClaim:
    return NameClaim(redis, KEYS, name, ["audit", "notify"])


async def test_a_free_name_is_claimed_with_a_body_the_metrics_still_read(redis: fakeredis.FakeAsyncRedis) -> None:
    mine = claim(redis)
    assert await mine.beat() is None
    body = msgspec.json.decode(await redis.get(KEYS.heartbeat("w1")))
    assert body["consumers"] == ["audit", "notify"]  # app/metrics.py counts live workers per group from it
    assert (body["token"], body["host"], body["pid"]) == (mine.token, socket.gethostname(), os.getpid())
    assert 0 < await redis.pttl(KEYS.heartbeat("w1")) <= runner_module.CLAIM_TTL_MS


async def test_a_name_held_by_another_process_is_not_taken_and_says_who_holds_it(
    redis: fakeredis.FakeAsyncRedis
) -> None:
    first, second = claim(redis), claim(redis)
    assert await first.beat() is None
    holder = await second.beat()
    assert holder is not None and holder.token == first.token
    assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
    assert holder.beat_age_s is not None and 0 <= holder.beat_age_s < 5
    assert 0 < holder.ttl_s <= runner_module.CLAIM_TTL_MS / 1000
    assert f"pid {os.getpid()}" in holder.describe()
    assert await first.beat() is None  # still the first's to renew
    assert msgspec.json.decode(await redis.get(KEYS.heartbeat("w1")))["token"] == first.token


async def test_only_the_holder_gives_the_name_back(redis: fakeredis.FakeAsyncRedis) -> None:
    first, second = claim(redis), claim(redis)
    await first.beat()
    await second.release()
    assert await redis.exists(KEYS.heartbeat("w1"))
    await first.release()
    assert not await redis.exists(KEYS.heartbeat("w1"))
    assert await second.beat() is None  # a restart need not wait for the claim to lapse


async def test_a_claim_taken_by_another_process_after_it_lapsed_is_lost(redis: fakeredis.FakeAsyncRedis) -> None:
    stalled, other = claim(redis), claim(redis)
    await stalled.beat()
    await redis.delete(KEYS.heartbeat("w1"))  # lapsed while `stalled` did not beat
    assert await other.beat() is None
    lost = await stalled.beat()
    assert lost is not None and lost.token == other.token


async def test_a_lapsed_claim_nobody_took_is_renewed(redis: fakeredis.FakeAsyncRedis) -> None:
    mine = claim(redis)
    await mine.beat()
    await redis.delete(KEYS.heartbeat("w1"))  # a Redis outage longer than the TTL, say
    assert await mine.beat() is None


async def test_a_heartbeat_without_a_token_counts_as_held(redis: fakeredis.FakeAsyncRedis) -> None:
    # An older version's worker (its heartbeat has no token) may still be running under this name.
    await redis.set(KEYS.heartbeat("w1"), msgspec.json.encode({"consumers": ["audit"], "pid": 42}), ex=30)
    holder = await claim(redis).beat()
    assert holder is not None and (holder.pid, holder.beat_age_s) == (42, None)
    assert "pid 42" in holder.describe()


async def test_waiting_for_a_held_name_warns_once_and_starts_when_it_is_free(
    redis: fakeredis.FakeAsyncRedis, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = claim(redis), claim(redis)
    await first.beat()
    caplog.set_level(logging.INFO, "eventflow.consumers")
    waiting = asyncio.create_task(second.wait_free(asyncio.Event()))
    await asyncio.sleep(1.5)  # two tries at least
    assert not waiting.done()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "'w1'" in warnings[0] and f"pid {os.getpid()}" in warnings[0] and "last beat" in warnings[0]
    assert "EVENTFLOW_CONSUMER_ID" in warnings[0] and "EVENTFLOW_WORKER_SLOT" in warnings[0]
    await first.release()
    assert await asyncio.wait_for(waiting, 3) is True
    assert "free now" in caplog.records[-1].getMessage()


async def test_waiting_for_a_claim_that_lapses_ends_with_its_ttl(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "CLAIM_TTL_MS", 300)
    killed = claim(redis)
    await killed.beat()  # and never again: kill -9
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(claim(redis).wait_free(asyncio.Event()), 3) is True
    assert asyncio.get_running_loop().time() - started < 0.8  # not a whole poll interval past the lapse


async def test_a_stop_while_waiting_for_the_name_ends_the_wait(redis: fakeredis.FakeAsyncRedis) -> None:
    await claim(redis).beat()
    stop = asyncio.Event()
    waiting = asyncio.create_task(claim(redis).wait_free(stop))
    await asyncio.sleep(0.1)
    stop.set()
    assert await asyncio.wait_for(waiting, 2) is False


async def noop(delivery: Delivery) -> None:
    pass


async def test_a_runner_whose_name_was_taken_stops_and_says_why(
    redis: fakeredis.FakeAsyncRedis, caplog: pytest.LogCaptureFixture
) -> None:
    runner = Runner([Consumer("audit", noop)], redis, Settings(prefix=KEYS.prefix), "w1")
    await runner.claim.beat()
    await redis.delete(KEYS.heartbeat("w1"))  # it stalled past the TTL...
    await claim(redis).beat()  # ...and another process took the name
    await asyncio.wait_for(runner._heartbeat(), 2)
    assert runner.stop.is_set()
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "'w1' was taken by another worker process" in error and "EVENTFLOW_CONSUMER_ID" in error


async def test_a_runner_that_fails_at_start_up_gives_its_name_back(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Setup failing for good (an ACL without the stream commands, say) ended the worker with its name
    # still claimed: the restart a process manager makes at once waited out the claim's TTL first.
    from redis.exceptions import NoPermissionError

    runner = Runner([Consumer("audit", noop)], redis, Settings(prefix=KEYS.prefix), "w1")

    async def refused(*args: object, **kwargs: object) -> None:
        raise NoPermissionError("NOPERM this user has no permissions to run the 'xgroup|create' command")

    monkeypatch.setattr(runner.dispatch, "ensure_groups", refused)
    with pytest.raises(NoPermissionError):
        await asyncio.wait_for(runner.run(), 5)
    assert not await redis.exists(KEYS.heartbeat("w1"))
    assert await claim(redis).beat() is None  # the restart takes the name at once
