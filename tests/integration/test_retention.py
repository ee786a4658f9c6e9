"""Retention and the archive against the real server: nothing unconsumed is trimmed, trimmed events are
archived exactly, queries and lookups span the live log and the archive, replays from the archive."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from app.archive import HOUR_MS, entry_key
from app.dispatch import Dispatch
from app.events import Record, parse_batch, parse_request
from app.keys import Keys
from app.retention import run_forever
from app.service import Services
from app.settings import Settings
from app.store import Query
from consumers.base import Consumer, Delivery, Retry
from consumers.runner import Runner
from tests.integration.helpers import wait_for

TYPES = ["a", "b", "c"]
SOURCES = ["s1", "s2"]


@pytest.fixture
def archive_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(archive_path=str(tmp_path / "archive"))


@pytest.fixture
async def run_consumers(redis: Redis) -> AsyncIterator[Callable[..., Runner]]:
    runners: list[tuple[Runner, asyncio.Task[None]]] = []

    def start(settings: Settings, *consumers: Consumer) -> Runner:
        runner = Runner(list(consumers), redis, settings, f"w{len(runners)}")
        runners.append((runner, asyncio.create_task(runner.run())))
        return runner

    yield start
    for runner, task in runners:
        runner.stop.set()
        await asyncio.wait_for(task, 10)



# The events `ingest` posts share this partition key, so with several partitions (the cluster suite)
# they still sit in one partition, `home(settings)`: retention limits count entries per partition.
KEY = "retention"


def home(settings: Settings) -> int:
    return Keys(settings.prefix, settings.partitions).partition_of(KEY)


async def ingest(services: Services, n: int, kind: str = "order.created") -> list[str]:
    body = json.dumps([{"type": kind, "data": {"n": i}, "subject": f"k{i}", "partitionkey": KEY}
                       for i in range(n)]).encode()
    appended = await services.ingest(parse_batch(body, "application/json"), "billing", {})
    return [a.entry_id for a in appended]


async def test_a_group_that_is_down_keeps_its_events_until_it_comes_back(
    redis: Redis, archive_settings: Settings, run_consumers: Callable[..., Runner]
) -> None:
    settings = archive_settings.replace(retention_max_entries=5)
    services = Services(redis, settings)
    await Dispatch(redis, settings).ensure_groups("slow")  # deployed, but its worker is down
    entries = await ingest(services, 20)

    report = await services.retention.run_pass()
    assert (report.archived, report.trimmed, report.partitions[home(settings)].held_by) == (0, 0, "slow")
    assert await redis.xlen(services.log.keys.stream(home(settings))) == 20
    [held] = (await services.retention.status()).held_back
    assert (held.group, held.excess_entries, held.lag, held.pending) == ("slow", 15, 20, 0)

    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.entry_id)

    run_consumers(settings, Consumer("slow", handler))

    async def caught_up() -> bool:
        return len(seen) == 20 and (await services.retention.group_points(home(settings)))[0].pending == 0

    await wait_for(caught_up)
    report = await services.retention.run_pass()
    assert (report.archived, report.trimmed, report.partitions[home(settings)].held_by) == (15, 15, None)
    assert sorted(seen, key=entry_key) == entries  # every event was delivered before it left the log
    assert await redis.xlen(services.log.keys.stream(home(settings))) == 5
    assert (await services.retention.status()).held_back == []


async def test_trimming_stops_at_the_oldest_entry_still_pending(
    redis: Redis, archive_settings: Settings, run_consumers: Callable[..., Runner]
) -> None:
    settings = archive_settings.replace(retention_max_entries=1)
    services = Services(redis, settings)
    handled: set[int] = set()

    async def handler(delivery: Delivery) -> None:
        if delivery.data["n"] == 3:
            raise Retry(delay_s=60)  # stays pending, waiting for its retry
        handled.add(delivery.data["n"])

    run_consumers(settings, Consumer("orders", handler))
    entries = await ingest(services, 10)

    async def others_done() -> bool:  # handled and acknowledged (acks follow the handlers closely)
        if len(handled) < 9:  # (the group may not exist yet on a partition no worker has read)
            return False
        return (await redis.xpending(services.log.keys.stream(home(settings)), "orders"))["pending"] == 1

    await wait_for(others_done)
    report = await services.retention.run_pass()
    assert report.trimmed == 3
    first = await redis.xrange(services.log.keys.stream(home(settings)), count=1)
    assert first[0][0].decode() == entries[3]
    assert (await services.retention.status()).held_back[0].pending == 1


async def test_trimmed_events_are_in_the_archive_with_identical_content(
    redis: Redis, archive_settings: Settings, make_client: Any, auth: dict[str, str]
) -> None:
    settings = archive_settings.replace(retention_max_entries=1)
    services = Services(redis, settings)
    stream = services.log.keys.stream(home(settings))
    bodies = [
        {"type": "order.created", "data": {"amount": 9.5, "tags": ["a", "é"]}, "subject": "o/1"},
        {"type": "order.paid", "id": "my-own-id", "data": "text", "traceid": "x1", "flag": True},
        {"type": "blob", "data_base64": "AAEC/w=="},
    ]
    for body in bodies:
        body["partitionkey"] = KEY
    ids = []
    for body in bodies:
        event = parse_request(json.dumps(body).encode(), "application/json", {})[0]
        ids += [a.id for a in await services.ingest(event, "billing", {})]
    await redis.xadd(stream, {"type": "direct", "source": "pos", "data": b"\xff not json"})
    await redis.xadd(stream, {"type": "keep", "source": "pos"})
    before = {e.decode(): f for e, f in await redis.xrange(stream)}

    report = await services.retention.run_pass()
    assert report.trimmed == 4
    [path] = report.partitions[home(settings)].files
    with gzip.open(path) as f:
        assert len(f.read().splitlines()) == 4
    archived = dict(services.retention.archive.entries(Path(path)))
    assert archived == {e: f for e, f in before.items() if e in archived}
    assert len(archived) == 4
    async with make_client(archive_path=settings.archive_path, api_token="op") as c:
        for entry_id in archived:  # by entry id, as the API read them before they were trimmed
            resp = await c.get(f"/v1/events/{entry_id}", headers={"Authorization": "Bearer op"})
            assert resp.status_code == 200, resp.text
            original = Record.from_entry(entry_id, home(settings), before[entry_id])
            assert resp.json()["event"] == json.loads(msgspec.json.encode(original.event))
        made = await c.get(f"/v1/events/{ids[0]}", headers=auth)  # an event id EventFlow made encodes its entry
        assert made.status_code == 200 and made.json()["event"]["data"] == bodies[0]["data"]
        own = await c.get("/v1/events/my-own-id", headers=auth)  # through its lookup key, within the window
        assert own.status_code == 200 and own.json()["event"]["type"] == "order.paid"
        page = (await c.get("/v1/events?order=asc", headers=auth)).json()  # a producer reads its own, archived too
        assert [e["event"]["id"] for e in page["events"]] == ids


async def fill_hours(services: Services, redis: Redis, rng: random.Random, hours: int) -> None:
    """Entries spread over the last `hours` hours in every partition (written with explicit ids, as a
    producer writing straight into the stream would, in EventFlow's own format), then some fresh ones."""
    now = int(time.time() * 1000)
    for p in range(services.log.keys.partitions):
        stamps = sorted(rng.sample(range(now - hours * HOUR_MS, now - 60_000), 60))
        for n, ms in enumerate(stamps):
            fields = {"_v": "1", "id": f"p{p}-{n}", "type": rng.choice(TYPES), "source": rng.choice(SOURCES),
                      "time": "2026-01-01T00:00:00Z", "data": json.dumps({"n": n})}
            await redis.xadd(services.log.keys.stream(p), fields, id=f"{ms}-{n % 3}")
    for _ in range(10):
        body = json.dumps([{"type": rng.choice(TYPES), "subject": f"k{rng.randrange(9)}"}
                           for _ in range(rng.choice([1, 4]))]).encode()
        await services.ingest(parse_batch(body, "application/json"), rng.choice(SOURCES), {})


def brute_force(snapshot: list[tuple[str, int, dict[bytes, bytes]]], q: Query) -> list[tuple[str, int]]:
    rows = []
    for entry_id, partition, fields in snapshot:
        ms = entry_key(entry_id)[0]
        if q.type is not None and fields.get(b"type", b"").decode() != q.type:
            continue
        if q.source is not None and fields.get(b"source", b"").decode() != q.source:
            continue
        if (q.since_ms is not None and ms < q.since_ms) or (q.until_ms is not None and ms >= q.until_ms):
            continue
        rows.append((entry_id, partition))
    return sorted(rows, key=lambda r: entry_key(*r), reverse=q.newest_first)


async def paged(services: Services, q: Query) -> list[tuple[str, int]]:
    rows: list[tuple[str, int]] = []
    for _ in range(2000):
        page = await services.query(q, None)
        rows += [(r.entry_id, r.partition) for r in page.events]
        if page.next_cursor is None:
            return rows
        q = msgspec.structs.replace(q, cursor=page.next_cursor)
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("partitions", [1, 3])
async def test_queries_spanning_the_live_log_and_the_archive_return_the_right_events_in_order(
    redis: Redis, archive_settings: Settings, partitions: int
) -> None:
    settings = archive_settings.replace(partitions=partitions, retention_s=2 * 3600)
    services = Services(redis, settings)
    rng = random.Random(partitions)
    await fill_hours(services, redis, rng, hours=5)
    await services.log.catch_up()
    snapshot = [(e.decode(), p, f) for p in range(partitions)
                for e, f in await redis.xrange(services.log.keys.stream(p))]

    report = await services.retention.run_pass()
    assert report.trimmed > 0 and report.archived == report.trimmed
    assert len({Path(f).name for r in report.partitions for f in r.files}) >= 3  # one file per hour
    await assert_indexes_point_only_at_live_entries(services, redis)

    full = [(e, p) for e, p, _ in sorted(snapshot, key=lambda r: entry_key(r[0], r[1]), reverse=True)]
    assert await paged(services, Query(limit=7)) == full
    first = entry_key(snapshot[0][0])[0]
    for _ in range(40):
        since = rng.choice([None, rng.randint(first - 1000, first + 5 * HOUR_MS)])
        q = Query(type=rng.choice([None, *TYPES]), source=rng.choice([None, *SOURCES]), since_ms=since,
                  until_ms=rng.choice([None, rng.randint(since or first, first + 6 * HOUR_MS)]),
                  limit=rng.choice([1, 5, 50]), newest_first=rng.random() < 0.5)
        assert await paged(services, q) == brute_force(snapshot, q), q


async def assert_indexes_point_only_at_live_entries(services: Services, redis: Redis) -> None:
    keys = services.log.keys
    checked = 0
    for p in range(keys.partitions):
        head = await redis.xrange(keys.stream(p), count=1)
        assert head, "the fresh events stay"
        async for index in redis.scan_iter(match=keys.base(p).replace("{", "[{]").replace("}", "[}]") + "idx:*"):
            for _run_id, fields in await redis.xrange(index):
                assert entry_key(fields[b"l"].decode()) >= entry_key(head[0][0].decode()), index
                checked += 1
    assert checked >= 2 * keys.partitions  # runs of the live entries remain, in type and source indexes


async def test_an_archive_replay_delivers_archived_events_again_to_one_group(
    redis: Redis, archive_settings: Settings, run_consumers: Callable[..., Runner]
) -> None:
    settings = archive_settings.replace(retention_max_entries=2)
    services = Services(redis, settings)
    seen: list[tuple[str, bool]] = []
    others: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append((delivery.entry_id, delivery.replay))

    async def other(delivery: Delivery) -> None:
        others.append(delivery.entry_id)

    run_consumers(settings, Consumer("again", handler), Consumer("other", other))
    entries = await ingest(services, 6)

    async def delivered(n: int) -> bool:
        if len(seen) != n or len(others) != 6:
            return False
        # Acknowledged on the log, and on the group's replay stream too (acks follow the handlers):
        # a pass trims only what the replay stream's group has acknowledged.
        points = await services.retention.group_points(home(settings))
        replays = await redis.xpending(services.log.keys.replay(home(settings), "again"), "again")
        return all(p.pending == 0 for p in points) and replays["pending"] == 0

    await wait_for(lambda: delivered(6))
    assert (await services.retention.run_pass()).trimmed == 4
    queued = await services.retention.replay("again", 0, None)
    assert queued == 4  # the 2 live entries are not in the archive: `eventflow replay` covers those
    await wait_for(lambda: delivered(10))
    assert sorted(seen[6:]) == [(e, True) for e in entries[:4]]
    assert sorted(others, key=entry_key) == entries  # only the named group gets them again
    report = await services.retention.run_pass()
    assert report.partitions[home(settings)].replay_trimmed == 4  # acknowledged replay entries are trimmed too


async def test_an_archive_replay_over_http_and_the_cli_goes_to_one_group(
    redis: Redis, archive_settings: Settings, run_consumers: Callable[..., Runner], make_client: Any
) -> None:
    # `POST /v1/archive/replay` and `eventflow archive replay --group G --since T [--until T]`.
    settings = archive_settings.replace(retention_max_entries=2, api_token="operator-token")
    services = Services(redis, settings)
    seen: list[str] = []
    others: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.entry_id)

    async def other(delivery: Delivery) -> None:
        others.append(delivery.entry_id)

    run_consumers(settings, Consumer("again", handler), Consumer("other", other))
    entries = await ingest(services, 6)
    trimmed = 0

    async def archived() -> bool:  # a pass trims only what both groups have acknowledged
        nonlocal trimmed
        trimmed += (await services.retention.run_pass()).trimmed
        return trimmed == 4

    await wait_for(archived)
    async with make_client(archive_path=settings.archive_path, retention_max_entries=2,
                           api_token="operator-token") as api:
        resp = await api.post("/v1/archive/replay", headers={"Authorization": "Bearer operator-token"},
                              json={"group": "again", "since": 0})  # a number: milliseconds
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"group": "again", "queued": 4}
    await wait_for(lambda: len(seen) == 10)
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix,
           "EVENTFLOW_ARCHIVE_PATH": settings.archive_path, "EVENTFLOW_PARTITIONS": str(settings.partitions)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "archive", "replay", "--group", "again", "--since", "0",
        "--until", str(int(entries[-1].split("-")[0]) + 1), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"group": "again", "queued": 4}
    await wait_for(lambda: len(seen) == 14)
    await asyncio.sleep(0.2)  # time for a wrong delivery to "other" to show
    assert sorted(seen, key=entry_key) == sorted(entries + entries[:4] * 2, key=entry_key)
    assert sorted(others, key=entry_key) == entries


async def test_one_process_at_a_time_runs_retention_on_a_partition(redis: Redis, archive_settings: Settings) -> None:
    services = Services(redis, archive_settings.replace(retention_max_entries=1))
    await ingest(services, 3)
    await redis.set(services.retention.keys.retention_lease(home(archive_settings)), "someone-else", px=5000)
    report = await services.retention.run_pass()
    assert report.partitions[home(archive_settings)].skipped and report.trimmed == 0


async def test_the_worker_loop_trims_in_the_background(redis: Redis, archive_settings: Settings) -> None:
    settings = archive_settings.replace(retention_max_entries=2, retention_interval_s=0.05)
    services = Services(redis, settings)
    await ingest(services, 5)
    stop = asyncio.Event()
    loop = asyncio.create_task(run_forever(redis, settings, stop))

    async def trimmed() -> bool:
        return await redis.xlen(services.log.keys.stream(home(settings))) == 2

    await wait_for(trimmed)
    stop.set()
    await asyncio.wait_for(loop, 5)


async def test_the_cli_runs_one_pass_with_progress(redis: Redis, archive_settings: Settings) -> None:
    services = Services(redis, archive_settings)
    await ingest(services, 4)
    env = {**os.environ, "REDIS_URL": archive_settings.redis_url or "", "EVENTFLOW_PREFIX": archive_settings.prefix,
           "EVENTFLOW_ARCHIVE_PATH": archive_settings.archive_path, "EVENTFLOW_RETENTION_MAX_ENTRIES": "1",
           "EVENTFLOW_PARTITIONS": str(archive_settings.partitions)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", "retention", "run", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert b"archived 3 and trimmed 3 entries" in err
    assert json.loads(out)["trimmed"] == 3
    status = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", "retention", "status", env=env,
                                                  stdout=asyncio.subprocess.PIPE)
    assert json.loads((await status.communicate())[0])["partitions"][home(archive_settings)]["length"] == 1


async def test_a_group_holding_trimming_back_is_named_by_the_gauges(redis: Redis, archive_settings: Settings) -> None:
    from app.metrics import default_metrics

    settings = archive_settings.replace(retention_max_entries=2, retention_interval_s=0.05)
    services = Services(redis, settings)
    group = f"down-{settings.prefix}"  # the gauges are per process: a name no other test uses
    await Dispatch(redis, settings).ensure_groups(group)
    await ingest(services, 7)
    stop = asyncio.Event()
    loop = asyncio.create_task(run_forever(redis, settings, stop))
    gauge = default_metrics().retention_excess.labels(group)

    async def exported() -> bool:
        return gauge._value.get() == 5

    await wait_for(exported)
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert await redis.xlen(services.log.keys.stream(home(settings))) == 7


async def test_an_archived_event_is_still_shown_after_its_partition_was_deleted_by_hand(
    redis: Redis, archive_settings: Settings, make_client: Any, auth: dict[str, str]
) -> None:
    # The archive outlives the log: an operator DELs the stream (a wiped partition), and the event's
    # page must still answer from the archive, with no group to show, never a 500 (XINFO GROUPS of a
    # missing key is an error).
    settings = archive_settings.replace(retention_max_entries=1)
    services = Services(redis, settings)
    ids = await ingest(services, 3)
    report = await services.retention.run_pass()
    assert report.trimmed == 2
    assert await redis.delete(services.log.keys.stream(home(settings)))
    async with make_client(archive_path=settings.archive_path) as c:
        resp = await c.get(f"/v1/events/{ids[0]}", headers=auth)
        assert resp.status_code == 200, resp.text
        assert resp.json()["entry_id"] == ids[0] and resp.json()["deliveries"] == []
        gone = await c.get(f"/v1/events/{ids[2]}", headers=auth)  # deleted with the stream, never archived
        assert gone.status_code == 404, gone.text
