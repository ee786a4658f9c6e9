"""Partitions among workers (consumers/assign.py) and ordered consumers, against the real server."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from app.deadletters import Filter
from app.events import parse_batch
from app.service import Services
from app.settings import Settings
from consumers.base import Backoff, Consumer, Delivery, Permanent
from consumers.runner import Runner
from tests.integration.helpers import wait_for

PARTITIONS = 8
LEASE_S = 1.5  # seats last 1 s, ticks every 0.375 s


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(partitions=PARTITIONS, shutdown_grace_s=5.0)


@pytest.fixture
async def workers(redis: Redis, settings: Settings) -> AsyncIterator[Callable[..., tuple[Runner, asyncio.Task[None]]]]:
    started: list[tuple[Runner, asyncio.Task[None]]] = []

    def start(*consumers: Consumer, name: str) -> tuple[Runner, asyncio.Task[None]]:
        runner = Runner(list(consumers), redis, settings, name)
        started.append((runner, asyncio.create_task(runner.run())))
        return started[-1]

    yield start
    for runner, task in started:
        runner.stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)


async def post(services: Services, events: list[dict[str, Any]], source: str = "shop") -> list[str]:
    parsed = parse_batch(msgspec.json.encode(events), "application/json")
    return [a.entry_id for a in await services.ingest(parsed, source, {})]


async def noop(delivery: Delivery) -> None:
    return None


def partitions_read(runners: list[Runner], group: str) -> list[set[int]]:
    return [set(r.reading[group]) for r in runners]


async def test_workers_split_the_partitions_and_take_over_a_dead_workers_share(
    workers: Callable[..., tuple[Runner, asyncio.Task[None]]], services: Services
) -> None:
    seen: set[str] = set()

    async def handler(delivery: Delivery) -> None:
        seen.add(delivery.id)

    consumer = Consumer("split", handler, lease_s=LEASE_S, ordered=True)
    a, _ = workers(consumer, name="a")
    await wait_for(lambda: partitions_read([a], "split") == [set(range(PARTITIONS))], timeout_s=5)

    b, b_task = workers(consumer, name="b")  # joins without restarting a: a gives half back
    await wait_for(lambda: sorted(map(len, partitions_read([a, b], "split"))) == [4, 4], timeout_s=10)
    assert partitions_read([a, b], "split")[0].isdisjoint(partitions_read([a, b], "split")[1])

    ids = [f"e{n}" for n in range(200)]
    await post(services, [{"type": "t", "id": i, "subject": f"s{n % 37}"} for n, i in enumerate(ids)])
    await wait_for(lambda: seen == set(ids), timeout_s=10)

    b_task.cancel()  # a crash: b's seats are not given back, they expire
    await asyncio.gather(b_task, return_exceptions=True)
    crashed = asyncio.get_running_loop().time()
    await wait_for(lambda: partitions_read([a], "split") == [set(range(PARTITIONS))], timeout_s=5)
    assert asyncio.get_running_loop().time() - crashed < LEASE_S + 0.5
    more = [f"m{n}" for n in range(100)]
    await post(services, [{"type": "t", "id": i, "subject": f"s{n % 37}"} for n, i in enumerate(more)])
    await wait_for(lambda: seen == set(ids) | set(more), timeout_s=10)


async def test_unordered_consumers_share_a_partition_when_workers_outnumber_partitions(
    workers: Callable[..., tuple[Runner, asyncio.Task[None]]], settings: Settings
) -> None:
    consumer = Consumer("shared", noop, lease_s=LEASE_S)
    runners = [workers(consumer, name=f"w{n}")[0] for n in range(3)]
    # 3 workers, 8 partitions: 3 seats each at most, each partition read by one of them.
    await wait_for(lambda: sorted(map(len, partitions_read(runners, "shared"))) == [2, 3, 3], timeout_s=10)
    read = partitions_read(runners, "shared")
    assert set().union(*read) == set(range(PARTITIONS)) and sum(map(len, read)) == PARTITIONS

    one = settings.replace(partitions=1)  # 3 workers, 1 partition: all three read it (3 seats)
    solo = [Runner([Consumer("solo", noop, lease_s=LEASE_S)], runners[0].dispatch.redis, one, f"s{n}")
            for n in range(3)]
    tasks = [asyncio.create_task(r.run()) for r in solo]
    try:
        await wait_for(lambda: partitions_read(solo, "solo") == [{0}, {0}, {0}], timeout_s=10)
    finally:
        for runner in solo:
            runner.stop.set()
        await asyncio.gather(*tasks)


async def test_an_ordered_consumer_runs_each_key_in_order_one_at_a_time(
    workers: Callable[..., tuple[Runner, asyncio.Task[None]]], services: Services
) -> None:
    rng = random.Random(7)
    running: dict[str, int] = defaultdict(int)
    done: dict[str, list[int]] = defaultdict(list)
    overlaps: list[str] = []
    failed_once: set[str] = set()

    most_at_once = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal most_at_once
        key, seq = delivery.event["partitionkey"], int(delivery.event["seq"])
        running[key] += 1
        most_at_once = max(most_at_once, sum(running.values()))
        if running[key] > 1:
            overlaps.append(f"{key}#{seq}")
        try:
            await asyncio.sleep(rng.random() * 0.004)
            if seq % 7 == 3 and delivery.id not in failed_once:  # fails once, retried in place
                failed_once.add(delivery.id)
                raise ConnectionError("receiver hiccup")
            if seq % 11 == 5:
                raise Permanent("never deliverable")  # dead-lettered; the key goes on after it
            done[key].append(seq)
        finally:
            running[key] -= 1

    backoff = Backoff(base_s=0.05, factor=2.0, cap_s=0.2, jitter=0.0)
    consumer = Consumer("ordered", handler, ordered=True, concurrency=4, lease_s=LEASE_S, backoff=backoff)
    workers(consumer, name="a")
    workers(consumer, name="b")
    keys = [f"customer-{n}" for n in range(12)]
    sent: dict[str, list[int]] = defaultdict(list)
    events = []
    for seq in range(30):
        for key in rng.sample(keys, len(keys)):
            sent[key].append(seq)
            # A subject of its own: the key, not the source and subject, must choose the lane.
            events.append({"type": "order.step", "partitionkey": key, "subject": f"step-{seq}", "seq": seq})
    for start in range(0, len(events), 90):
        await post(services, events[start:start + 90])
    expected = {k: [s for s in seqs if s % 11 != 5] for k, seqs in sent.items()}
    await wait_for(lambda: dict(done) == expected, timeout_s=30)
    assert not overlaps, overlaps
    assert most_at_once > 1  # different keys did run side by side
    letters = await services.dead_letters.list(Filter(group="ordered"), limit=1000)
    assert len(letters) == sum(1 for seqs in sent.values() for s in seqs if s % 11 == 5)


async def test_an_ordered_key_waits_for_its_stuck_event_and_a_new_reader_resumes_from_it(
    workers: Callable[..., tuple[Runner, asyncio.Task[None]]], services: Services, settings: Settings
) -> None:
    order: list[int] = []
    stuck = asyncio.Event()

    async def hangs_on_first(delivery: Delivery) -> None:
        seq = int(delivery.event["seq"])
        if seq == 0:
            stuck.set()
            await asyncio.Event().wait()  # hangs until its worker dies
        order.append(seq)

    async def records(delivery: Delivery) -> None:
        order.append(int(delivery.event["seq"]))

    first, first_task = workers(Consumer("resume", hangs_on_first, ordered=True, lease_s=LEASE_S), name="a")
    await wait_for(lambda: len(first.reading["resume"]) == PARTITIONS, timeout_s=5)
    await post(services, [{"type": "t", "partitionkey": "k", "seq": n} for n in range(10)])
    await asyncio.wait_for(stuck.wait(), 5)
    await asyncio.sleep(0.3)
    assert order == []  # nothing of key k passes its stuck first event

    first_task.cancel()  # the worker dies holding event 0 and with 1..9 read but not run
    await asyncio.gather(first_task, return_exceptions=True)
    workers(Consumer("resume", records, ordered=True, lease_s=LEASE_S), name="b")
    await wait_for(lambda: order == list(range(10)), timeout_s=10)
