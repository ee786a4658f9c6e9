"""The audit consumer against the real server: each event once, across redeliveries, restarts,
rotation and a standby worker; the chain verifies and tampering is found."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis

from app.audit import log_files, verify
from app.dispatch import LOG, Pending
from app.events import parse_request
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from consumers import audit
from consumers.base import Consumer, Delivery
from consumers.runner import Runner
from tests.integration.helpers import consuming, wait_for


@pytest.fixture
def audit_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(audit_path=str(tmp_path / "audit"))


async def post(services: Services, count: int, source: str = "billing", *, spread: bool = False) -> list[str]:
    """Post `count` events; their entry ids in order. Spread: each its own subject, so that with
    several partitions they go to several (else all share one partition key)."""
    ids = []
    for i in range(count):
        body = {"type": "order.created", "data": {"n": i}} | ({"subject": f"s{i}"} if spread else {})
        events, _ = parse_request(json.dumps(body).encode(), "application/json", {})
        ids.append((await services.ingest(events, source, {}))[0].entry_id)
    return ids


def billing_partition(settings: Settings) -> int:
    """The partition of the events `post` sends (one partition key: the source, no subject)."""
    return Keys(settings.prefix, settings.partitions).partition_of("billing\n")


async def deliveries(redis: Redis, settings: Settings) -> list[Delivery]:
    """Every log entry as a first delivery to the audit group (what the runner would hand over)."""
    partition = billing_partition(settings)
    stream = Keys(settings.prefix, settings.partitions).stream(partition)
    out = []
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await redis.xrange(stream))
    for raw_id, fields in entries:
        entry_id = raw_id.decode()
        pending = Pending(kind=LOG, stream_id=entry_id, entry_id=entry_id, partition=partition, fields=fields)
        out.append(Delivery(pending, "audit", 1))
    return out


def logged_entries(folder: str | Path) -> list[str]:
    return [json.loads(line)["entry"] for path in log_files(Path(folder)) for line in path.read_bytes().splitlines()]



@contextlib.asynccontextmanager
async def running(consumer: Consumer, redis: Redis, settings: Settings) -> AsyncIterator[Runner]:
    try:
        async with consuming(redis, settings, consumer) as runner:
            yield runner
    finally:
        assert consumer.close is not None
        await consumer.close()


async def group_done(redis: Redis, settings: Settings) -> bool:
    """The audit group has read everything and has nothing pending, in every partition that has events."""
    keys = Keys(settings.prefix, settings.partitions)
    for partition in range(keys.partitions):
        if not await redis.exists(keys.stream(partition)):
            continue
        groups = await redis.xinfo_groups(keys.stream(partition))
        found = [g for g in groups if g["name"] in (b"audit", "audit")]
        if not (found and found[0]["pending"] == 0 and found[0]["lag"] == 0):
            return False
    return True


async def test_the_runner_writes_each_posted_event_once_and_the_chain_verifies(
    services: Services, redis: Redis, audit_settings: Settings
) -> None:
    posted = await post(services, 30)
    async with running(audit.build(audit_settings, redis), redis, audit_settings):
        await wait_for(lambda: len(logged_entries(audit_settings.audit_path)) >= 30)
        await wait_for(lambda: group_done(redis, audit_settings))
    assert logged_entries(audit_settings.audit_path) == posted  # once each, here in log order
    report = verify(audit_settings.audit_path)
    assert report.ok and report.lines == 30


async def test_the_same_delivery_handed_over_twice_is_written_once(
    services: Services, redis: Redis, audit_settings: Settings
) -> None:
    posted = await post(services, 3)
    consumer = audit.build(audit_settings, redis)
    try:
        first, second, third = await deliveries(redis, audit_settings)
        await consumer.handler(first)
        await consumer.handler(first)  # redelivered after it was written
        await asyncio.gather(consumer.handler(second), consumer.handler(second), consumer.handler(third))
    finally:
        assert consumer.close is not None
        await consumer.close()
    assert logged_entries(audit_settings.audit_path) == posted


async def test_a_restarted_worker_skips_what_was_written_but_never_acknowledged(
    services: Services, redis: Redis, audit_settings: Settings
) -> None:
    posted = await post(services, 10)
    crashed = audit.build(audit_settings, redis)
    for delivery in (await deliveries(redis, audit_settings))[:6]:
        await crashed.handler(delivery)  # written and fsynced, but the worker "dies" before any ack
    assert crashed.close is not None
    await crashed.close()
    # The group never saw an ack, so the restarted worker gets all ten from the start.
    async with running(audit.build(audit_settings, redis), redis, audit_settings):
        await wait_for(lambda: group_done(redis, audit_settings))
    assert logged_entries(audit_settings.audit_path) == posted
    assert verify(audit_settings.audit_path).ok


async def test_rotation_continues_the_chain_and_tampering_is_named(
    services: Services, redis: Redis, audit_settings: Settings
) -> None:
    settings = audit_settings.replace(audit_rotate_bytes=1500)
    posted = await post(services, 25)
    async with running(audit.build(settings, redis), redis, settings):
        await wait_for(lambda: group_done(redis, settings))
    files = log_files(Path(settings.audit_path))
    assert len(files) >= 3
    assert sorted(logged_entries(settings.audit_path)) == sorted(posted)
    report = verify(settings.audit_path)
    assert report.ok and (report.files, report.lines) == (len(files), 25)

    lines = files[1].read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"n":', b'"n":1')
    files[1].write_bytes(b"".join(lines))
    broken = verify(settings.audit_path).broken
    assert broken is not None and (broken.file, broken.line) == (str(files[1]), 1)


async def test_a_standby_parks_its_events_for_the_leader_and_takes_over_when_it_leaves(
    services: Services, redis: Redis, audit_settings: Settings, tmp_path: Path
) -> None:
    await post(services, 3)
    leader = audit.AuditConsumer(audit_settings, redis, holder="leader")
    standby = audit.AuditConsumer(audit_settings.replace(audit_path=str(tmp_path / "standby")), redis,
                                  holder="standby")
    first, second, third = await deliveries(redis, audit_settings)
    try:
        await leader.handle(first)
        await asyncio.wait_for(standby.handle(second), 5)  # returns once the leader wrote it
        assert logged_entries(audit_settings.audit_path) == [first.entry_id, second.entry_id]
        assert not await redis.exists(Keys(audit_settings.prefix).audit_parked)
        assert not (tmp_path / "standby").exists()
        await leader.close()  # gives the lease up
        await standby.handle(third)
        assert logged_entries(tmp_path / "standby") == [third.entry_id]
    finally:
        await leader.close()
        await standby.close()


async def test_two_workers_sharing_the_group_write_one_log_with_each_event_once(
    services: Services, redis: Redis, audit_settings: Settings, tmp_path: Path
) -> None:
    posted = await post(services, 1)
    leader = audit.AuditConsumer(audit_settings, redis, holder="leader")
    await leader.handle((await deliveries(redis, audit_settings))[0])  # takes the lease first
    standby_settings = audit_settings.replace(audit_path=str(tmp_path / "standby"))
    standby = audit.AuditConsumer(standby_settings, redis, holder="standby")
    parked: list[str] = []
    park = standby._park

    async def counting_park(delivery: Delivery) -> None:
        parked.append(delivery.entry_id)
        await park(delivery)

    standby._park = counting_park  # type: ignore[method-assign]
    # Small batches, so that both workers get some of the 40 events.
    runners = [Runner([dataclasses.replace(audit.build_consumer(c), batch_size=4)], redis, audit_settings, name)
               for c, name in ((leader, "w1"), (standby, "w2"))]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        # Every partition is read and both workers read (consumers/assign.py seats both on the one
        # partition, or shares out several) before the events come, spread over the partitions.
        everything = set(range(audit_settings.partitions))
        await wait_for(lambda: all(r.reading["audit"] for r in runners)
                       and set().union(*(r.reading["audit"] for r in runners)) == everything)
        posted += await post(services, 39, spread=True)
        await wait_for(lambda: group_done(redis, audit_settings))
    finally:
        for runner in runners:
            runner.stop.set()
        await asyncio.gather(*tasks)
        await leader.close()
        await standby.close()
    assert sorted(logged_entries(audit_settings.audit_path)) == sorted(posted)
    assert not (tmp_path / "standby").exists()
    assert parked and set(parked) <= set(posted)
    assert verify(audit_settings.audit_path).ok


async def test_the_lease_has_one_holder_is_renewed_only_by_it_and_released(redis: Redis, settings: Settings) -> None:
    key = Keys(settings.prefix).audit_leader
    first, second = (audit.Lease(redis, key, 2000, name) for name in ("first", "second"))
    assert await first.acquire() and first.held()
    assert not await second.acquire() and not second.held()
    await redis.pexpire(key, 500)
    assert await first.acquire()  # renewal: compare-and-PEXPIRE
    assert await redis.pttl(key) > 1000
    await second.release()  # not its lease: nothing happens
    assert await redis.get(key) == b"first"
    await first.release()
    assert not first.held() and await second.acquire()
    assert not await first.acquire()
