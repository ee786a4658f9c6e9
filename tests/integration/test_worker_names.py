"""Two worker processes given one consumer name (the same EVENTFLOW_CONSUMER_ID, or the same
EVENTFLOW_WORKER_SLOT on one host) would read as one consumer: duplicates, ordered events out of order.
The second one waits, saying why, until the first is gone; a worker restarted after kill -9 waits at
most the claim's TTL for its previous incarnation's claim to lapse."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from redis.asyncio import Redis

from app.keys import Keys
from app.service import Services
from app.settings import Settings
from consumers.base import Consumer, Delivery
from consumers.runner import CLAIM_TTL_MS, Runner
from tests.integration.helpers import wait_for
from tests.integration.test_workers import ROOT, Workers, post_many, seen_counts, wait_all_seen

STARTUP_S = 10  # a worker process's own start (imports, connecting) on a busy machine


class LoggedWorkers(Workers):
    """Workers whose output is kept in a file per process, several of them under one consumer name."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        super().__init__(settings)
        self.folder = folder

    def start_as(self, label: str, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "REDIS_URL": self.settings.redis_url or "", "EVENTFLOW_PREFIX": self.settings.prefix,
               "EVENTFLOW_CONSUMER_ID": name, "EVENTFLOW_SHUTDOWN_GRACE_S": "10", "EVENTFLOW_LOG_FORMAT": "text",
               "EVENTFLOW_WORKER_METRICS_PORT": "0"}
        with (self.folder / f"{label}.log").open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "consume", "--module", "tests.integration.sample_consumers"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        self.procs[label] = proc
        return proc

    def log(self, label: str) -> str:
        return (self.folder / f"{label}.log").read_text()

    async def all_seen(self, redis: Redis, ids: list[str], timeout_s: float) -> dict[str, int]:
        """`wait_all_seen`, with every process's output when some event was never processed."""
        try:
            return await wait_all_seen(redis, self.settings, ids, timeout_s)
        except AssertionError as exc:
            logs = "\n".join(f"--- {label}:\n{self.log(label)}" for label in self.procs)
            raise AssertionError(f"{exc}\n{logs}") from None


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[LoggedWorkers]:
    w = LoggedWorkers(settings, tmp_path)
    yield w
    w.stop_all()


async def holder_pid(redis: Redis, settings: Settings, name: str) -> int | None:
    """The pid in the name's claim (its heartbeat key), None while nobody holds it."""
    body = await redis.get(Keys(settings.prefix).heartbeat(name))
    return None if body is None else msgspec.json.decode(body).get("pid")


async def test_a_second_process_with_the_same_name_waits_until_the_first_is_gone(
    services: Services, redis: Redis, settings: Settings, workers: LoggedWorkers
) -> None:
    first = workers.start_as("first", "same")

    async def first_holds() -> bool:
        return await holder_pid(redis, settings, "same") == first.pid and "consuming: counter" in workers.log("first")

    await wait_for(first_holds, timeout_s=STARTUP_S + 10)
    second = workers.start_as("second", "same")
    await wait_for(lambda: "is held by another live worker process" in workers.log("second"), timeout_s=STARTUP_S + 10)

    ids = await post_many(services, 25)
    seen = await workers.all_seen(redis, ids, timeout_s=30)
    assert set(seen.values()) == {1}, "an event was processed twice"
    waiting = workers.log("second")
    assert f"consumer name 'same' is held by another live worker process (host {socket.gethostname()}, " \
           f"pid {first.pid}, last beat" in waiting
    assert "EVENTFLOW_CONSUMER_ID" in waiting and "EVENTFLOW_WORKER_SLOT" in waiting
    assert waiting.count("is held by another") == 1, waiting  # one warning, not one per retry
    assert "consuming:" not in waiting, waiting
    assert second.poll() is None
    assert await holder_pid(redis, settings, "same") == first.pid

    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0
    stopped = workers.log("first")  # the stop is said when it begins, and when it is done
    assert "SIGTERM: stopping; finishing what was read (EVENTFLOW_SHUTDOWN_GRACE_S: up to 10 s)" in stopped
    assert stopped.index("SIGTERM: stopping") < stopped.index("stopped (0 task(s) cut off")
    await wait_for(lambda: "consuming: counter as same" in workers.log("second"), timeout_s=10)
    assert "consumer name 'same' is free now" in workers.log("second")
    assert await holder_pid(redis, settings, "same") == second.pid
    more = await post_many(services, 25)
    seen = await workers.all_seen(redis, ids + more, timeout_s=30)
    assert set(seen.values()) == {1}, "an event was processed twice"


async def test_a_worker_restarted_after_kill_9_starts_within_the_claim_ttl(
    services: Services, redis: Redis, settings: Settings, workers: LoggedWorkers
) -> None:
    killed = workers.start_as("killed", "slot-1")

    async def killed_consumes() -> bool:
        return "consuming: counter" in workers.log("killed") and bool(await seen_counts(redis, settings))

    first = await post_many(services, 10)
    await wait_for(killed_consumes, timeout_s=STARTUP_S + 10)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    at = time.monotonic()
    restarted = workers.start_as("restarted", "slot-1")
    ids = await post_many(services, 25)
    seen = await workers.all_seen(redis, first + ids, timeout_s=CLAIM_TTL_MS / 1000 + STARTUP_S + 10)
    assert time.monotonic() - at < CLAIM_TTL_MS / 1000 + STARTUP_S
    assert set(seen[i] for i in ids) == {1}
    assert await holder_pid(redis, settings, "slot-1") == restarted.pid
    log = workers.log("restarted")
    # Its previous incarnation's claim had not lapsed yet: it waited for it, saying that the holder is
    # a process of this host that no longer runs (a crash), not another live worker (a naming mistake).
    assert "is held by another" not in log
    if "is still claimed" in log:
        assert f"still claimed by pid {killed.pid} on this host, which is no longer running" in log
        assert "consumer name 'slot-1' is free now" in log


async def test_a_worker_whose_name_was_taken_leaves_the_seats_to_the_new_holder(
    redis: Redis, settings: Settings
) -> None:
    # The seats and the group's member list know a worker by its name. The stalled worker's
    # shutdown gave them back, so the process that now holds the name lost its seat (another worker
    # could take the partition) and was no longer counted among the group's workers.
    async def handler(delivery: Delivery) -> None:
        pass

    keys = Keys(settings.prefix)
    stalled = Runner([Consumer("jobs", handler)], redis, settings, "w1")
    stalled_run = asyncio.create_task(stalled.run())
    await wait_for(lambda: stalled.reading["jobs"] == {0}, 10)
    await redis.delete(keys.heartbeat("w1"))  # it stalled past the claim's TTL...
    taker = Runner([Consumer("jobs", handler)], redis, settings, "w1")  # ...and another process took the name
    taker_run = asyncio.create_task(taker.run())
    try:
        await wait_for(lambda: taker.reading["jobs"] == {0}, 10)
        await asyncio.wait_for(stalled_run, 10)  # its next beat found the name taken: it stopped
        assert stalled.stop.is_set()
        assert await redis.get(keys.seat(0, "jobs", 0)) == b"w1"
        assert await redis.zrange(keys.group_members("jobs"), 0, -1) == [b"w1"]
        assert taker.reading["jobs"] == {0} and len(taker.loops) == 1
    finally:
        taker.stop.set()
        await asyncio.wait_for(taker_run, 10)
    assert await redis.get(keys.seat(0, "jobs", 0)) is None  # the holder's own stop gives them back
