"""Index-driven queries agree with a brute-force scan of the log, for random data and random pages."""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.asyncio import Redis

from app.events import parse_batch
from app.service import Services
from app.settings import Settings
from app.store import Query

TYPES = ["a", "b", "c"]
SOURCES = ["s1", "s2"]


async def fill(services: Services, redis: Redis, rng: random.Random) -> None:
    for _ in range(40):
        source = rng.choice(SOURCES)
        size = rng.choice([1, 1, 2, 5, 30])
        body = ",".join(
            f'{{"type":"{rng.choice(TYPES)}","subject":"k{rng.randrange(5)}"}}' for _ in range(size)
        )
        await services.ingest(parse_batch(f"[{body}]".encode(), "application/json"), source, {})
        if rng.random() < 0.3:  # a producer writing straight into a partition, over several ms
            stream = services.log.keys.stream(rng.randrange(services.log.keys.partitions))
            kind = {"type": rng.choice(TYPES), "source": rng.choice(SOURCES), "data": "1"}
            for _ in range(rng.randrange(1, 5)):  # indexed later, as one run spanning these ms
                await redis.xadd(stream, kind)
                await asyncio.sleep(0.002)


async def brute_force(services: Services, redis: Redis, q: Query) -> list[tuple[str, int]]:
    rows = []
    for p in range(services.log.keys.partitions):
        for entry_id, fields in await redis.xrange(services.log.keys.stream(p)):
            ms = int(entry_id.split(b"-")[0])
            if q.type is not None and fields.get(b"type", b"").decode() != q.type:
                continue
            if q.source is not None and fields.get(b"source", b"").decode() != q.source:
                continue
            if (q.since_ms is not None and ms < q.since_ms) or (q.until_ms is not None and ms >= q.until_ms):
                continue
            rows.append((entry_id.decode(), p))

    def key(row: tuple[str, int]) -> tuple[int, int, int]:
        ms, seq = row[0].split("-")
        return int(ms), int(seq), row[1]

    return sorted(rows, key=key, reverse=q.newest_first)


async def paged(services: Services, q: Query) -> list[tuple[str, int]]:
    rows: list[tuple[str, int]] = []
    for _ in range(500):
        page = await services.log.query(q)
        rows += [(r.entry_id, r.partition) for r in page.events]
        if page.next_cursor is None:
            return rows
        q = Query(**{**{f: getattr(q, f) for f in q.__struct_fields__}, "cursor": page.next_cursor})
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("partitions", [1, 3])
async def test_filtered_pages_match_a_scan_of_the_log(redis: Redis, settings: Settings, partitions: int) -> None:
    settings = settings.replace(partitions=partitions)
    services = Services(redis, settings)
    rng = random.Random(partitions)
    await fill(services, redis, rng)
    first = int((await redis.xrange(services.log.keys.stream(0), count=1))[0][0].split(b"-")[0])
    last = int((await redis.xrevrange(services.log.keys.stream(0), count=1))[0][0].split(b"-")[0])
    for _ in range(60):
        since = rng.choice([None, rng.randint(first, last)])
        q = Query(
            type=rng.choice([None, *TYPES]), source=rng.choice([None, *SOURCES]),
            since_ms=since, until_ms=rng.choice([None, rng.randint(since or first, last + 1)]),
            limit=rng.choice([1, 3, 7, 50]), newest_first=rng.random() < 0.5,
        )
        assert await paged(services, q) == await brute_force(services, redis, q), q
