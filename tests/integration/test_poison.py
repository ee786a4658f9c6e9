"""A poison pill: an event whose handler kills the worker process (out of memory, an abort in C code).
Nothing records such a failure, so without a count of its own the event was read again after every
restart, killing the worker each time, for ever. Each attempt now counts whether or not it finished:
after `max_attempts` runs the event is dead-lettered without running again, and every other event
ends processed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.deadletters import Filter
from app.dispatch import LOG, Attempt, Dispatch, Pending, now_ms
from app.events import parse_batch
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from consumers.base import Consumer, Delivery
from tests.integration.helpers import consuming, wait_for

ROOT = Path(__file__).resolve().parents[2]
MAX_ATTEMPTS = 3  # tests/integration/crash_consumers.py


def start_worker(settings: Settings, name: str, ordered: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix,
           "EVENTFLOW_CONSUMER_ID": name, "SAMPLE_LEASE_S": "2", "SAMPLE_ORDERED": "1" if ordered else "0"}
    command = [sys.executable, "-m", "app.cli", "consume", "--module", "tests.integration.crash_consumers"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize(("same_name", "ordered"), [(True, False), (False, False), (True, True)],
                         ids=["restarted-same-name", "replaced-by-new-worker", "ordered"])
async def test_a_handler_that_kills_its_worker_is_dead_lettered_after_max_attempts(
    services: Services, redis: Redis, settings: Settings, same_name: bool, ordered: bool,
) -> None:
    # Same name: the restarted worker reads its own pending entries first. New name (a replaced
    # machine): the entries are taken over from the dead consumer after the lease.
    data = [*range(12), "poison", *range(12, 24)]
    body = b"[" + b",".join(b'{"type":"job.run","data":%s}' % (b'"poison"' if d == "poison" else b"%d" % d)
                            for d in data) + b"]"
    ids = [a.entry_id for a in await services.ingest(parse_batch(body, "application/json"), "billing", {})]
    poison = ids[data.index("poison")]
    runs_key, stream = f"{settings.prefix}:test:runs", Keys(settings.prefix).stream(0)

    async def settled() -> bool:
        runs = {k.decode(): int(v) for k, v in (await redis.hgetall(runs_key)).items()}
        dead = await services.dead_letters.list(Filter(group="crasher"))
        groups = await redis.xinfo_groups(stream)
        pending = sum(int(g["pending"]) for g in groups if g["name"] == b"crasher")
        return bool(dead) and all(runs.get(i) for i in ids if i != poison) and pending == 0

    restarts, proc = 0, start_worker(settings, "w-0", ordered)
    try:
        deadline = time.monotonic() + 90
        while not await settled():
            assert time.monotonic() < deadline, f"not settled after {restarts} restarts"
            if proc.poll() is not None:  # what a process manager does: start it again
                assert proc.returncode == 3, "the worker stopped, but not through the poison pill"
                restarts += 1
                assert restarts <= MAX_ATTEMPTS, "the poison pill went on killing workers"
                proc = start_worker(settings, "w-0" if same_name else f"w-{restarts}", ordered)
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a worker that would run it again has time to
        assert proc.poll() is None, "the worker died after the poison pill was dead-lettered"
    finally:
        proc.kill()
        proc.wait()

    assert restarts == MAX_ATTEMPTS
    assert int(await redis.hget(runs_key, poison) or 0) == MAX_ATTEMPTS
    [dead] = await services.dead_letters.list(Filter(group="crasher"))
    assert (dead.entry_id, dead.reason, dead.attempts) == (poison, "max-attempts", MAX_ATTEMPTS)
    assert "stopped" in dead.error, dead.error
    detail = await services.get_event(poison, None)
    [crasher] = [d for d in detail.deliveries if d.group == "crasher"]
    assert crasher.state == "dead-lettered"
    # Attempt 1 left no record; 2 began and never finished; 3 began, and its end is the dead letter.
    assert [(a.attempt, a.outcome) for a in crasher.attempts] == [(2, "started"), (3, "dead-lettered")]


async def test_an_entry_left_pending_after_it_succeeded_is_acked_without_running_again(
    services: Services, redis: Redis, settings: Settings,
) -> None:
    # Its second attempt succeeded (recorded) and the worker stopped before the ack: the restarted
    # worker finds it in its own pending list and only acknowledges it.
    [entry_id] = [a.entry_id for a in await services.ingest(
        parse_batch(b'[{"type":"job.run","data":1}]', "application/json"), "billing", {})]
    dispatch = Dispatch(redis, settings)
    await dispatch.ensure_groups("once")
    await dispatch.read("once", "w1", 0, 10, None)  # delivered to w1, never acked
    entry = Pending(kind=LOG, stream_id=entry_id, entry_id=entry_id, partition=0, fields={})
    for outcome in ("started", "succeeded"):
        await dispatch.record("once", entry, Attempt(attempt=2, outcome=outcome, at_ms=now_ms(), consumer="w1"))
    runs: list[str] = []

    async def handle(delivery: Delivery) -> None:
        runs.append(delivery.entry_id)

    async with consuming(redis, settings, Consumer(name="once", handler=handle), name="w1"):
        async def acked() -> bool:
            return (await redis.xpending(Keys(settings.prefix).stream(0), "once"))["pending"] == 0

        await wait_for(acked)
    assert runs == []
