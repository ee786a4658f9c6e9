"""Worker processes sharing consumer groups: exactly-once without failures, nothing lost on SIGKILL
or SIGTERM (at-least-once: a killed worker's entries are taken over after the lease)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.embedded import free_port
from app.events import parse_batch
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from tests.integration.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        full = {**os.environ, "REDIS_URL": self.settings.redis_url or "", "EVENTFLOW_PREFIX": self.settings.prefix,
                "EVENTFLOW_CONSUMER_ID": name, "EVENTFLOW_SHUTDOWN_GRACE_S": "10", **env}
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "consume", "--module", "tests.integration.sample_consumers"],
            cwd=ROOT, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def workers(settings: Settings) -> Iterator[Workers]:
    w = Workers(settings)
    yield w
    w.stop_all()


async def post_many(services: Services, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        body = b"[" + b",".join(b'{"type":"load.test","data":%d}' % i for i in range(start, start + count)) + b"]"
        ids += [a.entry_id for a in await services.ingest(parse_batch(body, "application/json"), "billing", {})]
    return ids


async def seen_counts(redis: Redis, settings: Settings) -> dict[str, int]:
    raw = await redis.hgetall(f"{settings.prefix}:test:seen")
    return {k.decode(): int(v) for k, v in raw.items()}


async def wait_all_seen(redis: Redis, settings: Settings, ids: list[str], timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = await seen_counts(redis, settings)
        if all(i in seen for i in ids):
            return seen
        await asyncio.sleep(0.1)
    seen = await seen_counts(redis, settings)
    raise AssertionError(f"{sum(1 for i in ids if i not in seen)} of {len(ids)} events never processed")


async def group_pending(redis: Redis, settings: Settings) -> int:
    info = await redis.xinfo_groups(Keys(settings.prefix).stream(0))
    return sum(int(g["pending"]) for g in info)


async def test_three_workers_process_10000_events_each_exactly_once(
    services: Services, redis: Redis, settings: Settings, workers: Workers
) -> None:
    for name in ("w1", "w2", "w3"):
        workers.start(name)
    # Three workers, one partition: each takes one of its three seats (consumers/assign.py).
    seats = Keys(settings.prefix).seat(0, "counter", 0)[:-1] + "*"
    await wait_for(lambda: _count(redis.keys(seats), 3), timeout_s=20)
    ids = await post_many(services, 10_000)
    seen = await wait_all_seen(redis, settings, ids, timeout_s=60)
    assert len(seen) == 10_000
    assert set(seen.values()) == {1}, "some event was processed twice although nothing failed"
    consumers = await redis.xinfo_consumers(Keys(settings.prefix).stream(0), "counter")
    assert {c["name"].decode() for c in consumers} == {"w1", "w2", "w3"}
    assert all(int(c["pending"]) == 0 for c in consumers)


async def test_a_worker_killed_mid_batch_leaves_no_event_unprocessed(
    services: Services, redis: Redis, settings: Settings, workers: Workers
) -> None:
    slow = {"SAMPLE_SLEEP_S": "0.05", "SAMPLE_LEASE_S": "2", "SAMPLE_CONCURRENCY": "4", "SAMPLE_BATCH": "20"}
    victim = workers.start("victim", **slow)
    workers.start("survivor", **slow)
    # Both must be reading before the events come, or the first one up could take them all.
    seats = Keys(settings.prefix).seat(0, "counter", 0)[:-1] + "*"
    await wait_for(lambda: _count(redis.keys(seats), 2), timeout_s=20)
    ids = await post_many(services, 400)

    async def victim_mid_batch() -> bool:  # it has entries delivered and not acknowledged
        stream = Keys(settings.prefix).stream(0)
        if not any(g["name"] == b"counter" for g in await redis.xinfo_groups(stream)):
            return False  # no worker has started yet
        consumers = await redis.xinfo_consumers(stream, "counter")
        return any(c["name"] == b"victim" and int(c["pending"]) > 0 for c in consumers)

    await wait_for(victim_mid_batch, timeout_s=30)  # a worker process takes a moment to start
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    seen = await wait_all_seen(redis, settings, ids, timeout_s=60)
    assert all(seen[i] >= 1 for i in ids)
    deadline = time.monotonic() + 10
    while await group_pending(redis, settings) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert await group_pending(redis, settings) == 0, "entries stayed pending after the takeover"


async def test_graceful_shutdown_finishes_in_flight_work_and_loses_nothing(
    services: Services, redis: Redis, settings: Settings, workers: Workers
) -> None:
    slow = {"SAMPLE_SLEEP_S": "0.02", "SAMPLE_CONCURRENCY": "4", "SAMPLE_BATCH": "20"}
    first = workers.start("g1", **slow)
    ids = await post_many(services, 300)
    deadline = time.monotonic() + 20
    while not await seen_counts(redis, settings) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # wait until the worker is running (its signal handlers too)
    first.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    partial = await seen_counts(redis, settings)
    assert 0 < len(partial) < len(ids)
    assert set(partial.values()) == {1}
    # What it had not started stays in the log for the group; its own pending list is empty.
    consumers = await redis.xinfo_consumers(Keys(settings.prefix).stream(0), "counter")
    assert [int(c["pending"]) for c in consumers] == [0]
    workers.start("g1", **slow)
    seen = await wait_all_seen(redis, settings, ids, timeout_s=60)
    assert set(seen.values()) == {1}


# The README's consumer module, word for word but for the two helpers it leaves to the reader.
README_CONSUMERS = """
from consumers import Backoff, Permanent, Retry, consumer

def mail_server_busy():
    return False

async def send(address):
    pass

@consumer("emails", types=["user.signup", "order.*"], max_attempts=8,
          backoff=Backoff(base_s=1, factor=2, cap_s=300, jitter=0.2), concurrency=16)
async def send_email(delivery):
    if delivery.data.get("email") is None:
        raise Permanent("no address")
    if mail_server_busy():
        raise Retry(delay_s=30)
    await send(delivery.data["email"])

CONSUMERS = [send_email]
"""


def test_consume_module_finds_the_readme_module_in_the_current_folder(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "my_consumers.py").write_text(README_CONSUMERS)
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix,
           "EVENTFLOW_WORKER_METRICS_PORT": "0", "EVENTFLOW_LOG_FORMAT": "text"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("eventflow")), "consume", "--module", "my_consumers"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        output = b""
        while b"consuming: emails" not in output and time.monotonic() < deadline and proc.poll() is None:
            output += proc.stdout.readline() if proc.stdout else b""
        assert b"consuming: emails" in output, output.decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_consume_module_that_does_not_exist_is_a_short_error(settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_WORKER_METRICS_PORT": "0"}
    done = subprocess.run([str(Path(sys.executable).with_name("eventflow")), "consume", "--module", "no_such_module"],
                          cwd=tmp_path, env=env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr.decode()
    assert "no_such_module" in done.stderr.decode()


def test_a_worker_stopped_while_redis_is_still_unreachable_exits_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "EVENTFLOW_WORKER_METRICS_PORT": "0",
           "EVENTFLOW_REDIS_TIMEOUT_S": "0.5", "EVENTFLOW_LOG_FORMAT": "text"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("eventflow")), "consume"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    with proc.stdout:
        output = proc.stdout.readline()  # the outage's one log line: it waits for Redis
        proc.send_signal(signal.SIGTERM)
        output += proc.stdout.read()
    assert proc.wait(30) == 0, output.decode()
    assert b"Redis unavailable" in output and b"Traceback" not in output, output.decode()


async def _count(keys: Awaitable[list[bytes]], expected: int) -> bool:
    return len(await keys) == expected
