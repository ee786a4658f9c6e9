"""The log's append and query scripts on fakeredis (fast; the real server runs the same suite's
integration tests): idempotency, lazy indexing of direct writes, paging across partitions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from app.events import Incoming, parse_request
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from app.store import Query


@pytest.fixture
async def fake() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


def make_services(fake: fakeredis.FakeAsyncRedis, **changes: Any) -> Services:
    return Services(fake, Settings(prefix="unit").replace(**changes))


def events(*bodies: dict[str, Any]) -> list[Incoming]:
    return [parse_request(json.dumps(b).encode(), "application/json", {})[0][0] for b in bodies]


async def all_pages(svc: Services, query: Query) -> list[str]:
    """Follow next_cursor to the end; the entry ids in the order served."""
    seen: list[str] = []
    for _ in range(1000):
        page = await svc.query(query, None)
        seen += [f"{r.entry_id}/{r.partition}" for r in page.events]
        if page.next_cursor is None:
            return seen
        query = Query(**{**_fields(query), "cursor": page.next_cursor})
    raise AssertionError("paging did not end")


def _fields(query: Query) -> dict[str, Any]:
    return {f: getattr(query, f) for f in query.__struct_fields__}


async def test_a_repeat_of_source_and_id_is_not_appended_and_points_to_the_original(
    fake: fakeredis.FakeAsyncRedis,
) -> None:
    svc = make_services(fake)
    first = await svc.ingest(events({"type": "t", "id": "e-1"}), "billing", {})
    again = await svc.ingest(events({"type": "t", "id": "e-1", "data": "different"}), "billing", {})
    assert first[0].duplicate is False
    assert again[0].duplicate is True
    assert again[0].entry_id == first[0].entry_id
    assert await fake.xlen(svc.log.keys.stream(0)) == 1


async def test_events_without_an_id_are_never_taken_for_repeats(fake: fakeredis.FakeAsyncRedis) -> None:
    svc = make_services(fake)
    a = await svc.ingest(events({"type": "t"}), "billing", {})
    b = await svc.ingest(events({"type": "t"}), "billing", {})
    assert a[0].id != b[0].id
    assert not a[0].duplicate and not b[0].duplicate
    assert await fake.xlen(svc.log.keys.stream(0)) == 2


async def test_the_same_id_twice_in_one_batch_is_appended_once(fake: fakeredis.FakeAsyncRedis) -> None:
    svc = make_services(fake)
    got = await svc.ingest(events({"type": "t", "id": "x"}, {"type": "t", "id": "x"}), "billing", {})
    assert [g.duplicate for g in got] == [False, True]
    assert got[0].entry_id == got[1].entry_id
    assert await fake.xlen(svc.log.keys.stream(0)) == 1


async def test_a_full_batch_and_texts_of_every_length_reach_the_log_whole(fake: fakeredis.FakeAsyncRedis) -> None:
    # fakeredis has no cmsgpack, so this runs append.lua's own MessagePack reader (the real server's
    # cmsgpack reads the same argument in the integration tests): 8-, 16- and 32-bit lengths and
    # a 16-bit array (1000 events).
    svc = make_services(fake)
    texts = ["", "é" * 40, "x" * 300, "y" * 70_000] + [f"n{n}" for n in range(996)]
    got = await svc.ingest(events(*({"type": "t", "id": f"e-{n}", "data": t} for n, t in enumerate(texts))),
                           "billing", {})
    assert [g.id for g in got] == [f"e-{n}" for n in range(1000)]
    entries = await fake.xrange(svc.log.keys.stream(0))
    assert [json.loads(fields[b"data"]) for _, fields in entries] == texts
    assert [e.decode() for e, _ in entries] == [g.entry_id for g in got]


async def test_the_same_id_from_two_sources_is_two_events_each_deduplicated_on_its_own(
    fake: fakeredis.FakeAsyncRedis,
) -> None:
    svc = make_services(fake)
    a1 = await svc.ingest(events({"type": "t", "id": "shared"}), "billing", {})
    b1 = await svc.ingest(events({"type": "t", "id": "shared"}), "shipping", {})
    a2 = await svc.ingest(events({"type": "t", "id": "shared"}), "billing", {})
    b2 = await svc.ingest(events({"type": "t", "id": "shared"}), "shipping", {})
    assert a1[0].entry_id != b1[0].entry_id
    assert (a2[0].duplicate, a2[0].entry_id) == (True, a1[0].entry_id)
    assert (b2[0].duplicate, b2[0].entry_id) == (True, b1[0].entry_id)
    assert await fake.xlen(svc.log.keys.stream(0)) == 2


async def test_concurrent_repeats_in_one_flush_append_once(fake: fakeredis.FakeAsyncRedis) -> None:
    svc = make_services(fake)
    got = await asyncio.gather(*(svc.ingest(events({"type": "t", "id": "race"}), "billing", {}) for _ in range(20)))
    assert len({g[0].entry_id for g in got}) == 1
    assert sum(not g[0].duplicate for g in got) == 1
    assert await fake.xlen(svc.log.keys.stream(0)) == 1


async def test_the_idempotency_key_expires_after_the_window(fake: fakeredis.FakeAsyncRedis) -> None:
    svc = make_services(fake, idempotency_window_s=60)
    await svc.ingest(events({"type": "t", "id": "e-1"}), "billing", {})
    ttl_ms = await fake.pttl(svc.log.keys.event_id(0, "e-1"))
    assert 59_000 < ttl_ms <= 60_000


async def test_the_indexes_hold_one_entry_per_run_of_consecutive_entries(fake: fakeredis.FakeAsyncRedis) -> None:
    svc = make_services(fake)
    got = await svc.ingest(events({"type": "a"}, {"type": "a"}, {"type": "b"}, {"type": "a"}), "billing", {})
    ids = [g.entry_id for g in got]
    keys = svc.log.keys

    async def runs(key: str) -> list[tuple[str, str]]:
        return [(e.decode(), f[b"l"].decode()) for e, f in await fake.xrange(key)]

    assert await runs(keys.type_index(0, "a")) == [(ids[0], ids[1]), (ids[3], ids[3])]
    assert await runs(keys.type_index(0, "b")) == [(ids[2], ids[2])]
    assert await runs(keys.source_index(0, "billing")) == [(ids[0], ids[3])]


async def test_direct_writes_are_indexed_before_a_filtered_query(fake: fakeredis.FakeAsyncRedis) -> None:
    svc = make_services(fake)
    stream = svc.log.keys.stream(0)
    direct = (await fake.xadd(stream, {"type": "order.created", "source": "pos", "data": "{}"})).decode()
    await fake.xadd(stream, {"type": "other", "source": "pos"})
    page = await svc.query(Query(type="order.created"), None)
    assert [(r.entry_id, r.direct) for r in page.events] == [(direct, True)]
    assert len((await svc.query(Query(source="pos"), None)).events) == 2


async def test_an_append_after_many_direct_writes_indexes_them_all_first(fake: fakeredis.FakeAsyncRedis) -> None:
    # More direct entries than one script call indexes: append.lua answers BEHIND, the store catches
    # up in chunks and retries, and the index stays in log order.
    svc = make_services(fake)
    stream = svc.log.keys.stream(0)
    pipe = fake.pipeline(transaction=False)
    for i in range(1205):
        pipe.xadd(stream, {"type": "bulk", "source": "pos", "id": f"d{i}"})
    await pipe.execute()
    got = await svc.ingest(events({"type": "bulk"}), "pos", {})
    covered = []
    for first, fields in await fake.xrange(svc.log.keys.type_index(0, "bulk")):
        covered += [e.decode() for e, _ in await fake.xrange(stream, first, fields[b"l"])]
    log = [e.decode() for e, _ in await fake.xrange(stream)]
    assert covered == log
    assert covered[-1] == got[0].entry_id


async def test_a_direct_write_with_an_id_makes_a_later_post_of_that_id_a_repeat(fake: fakeredis.FakeAsyncRedis) -> None:
    svc = make_services(fake)
    direct = (await fake.xadd(svc.log.keys.stream(0), {"type": "t", "source": "pos", "id": "d-1"})).decode()
    got = await svc.ingest(events({"type": "t", "id": "d-1"}), "pos", {})
    assert (got[0].duplicate, got[0].entry_id) == (True, direct)


@pytest.mark.parametrize("newest_first", [True, False])
@pytest.mark.parametrize("limit", [1, 7, 100])
async def test_paging_over_four_partitions_serves_every_event_once_in_order(
    fake: fakeredis.FakeAsyncRedis, newest_first: bool, limit: int
) -> None:
    svc = make_services(fake, partitions=4)
    for chunk in range(3):
        await svc.ingest(events(*({"type": "t", "subject": f"s{chunk}-{i}"} for i in range(15))), "billing", {})
    keys = Keys("unit", 4)
    everything = []
    for p in range(4):
        everything += [(e.decode(), p) for e, _ in await fake.xrange(keys.stream(p))]
    assert len({p for _, p in everything}) == 4, "the subjects should spread over every partition"
    expected = sorted(everything, key=lambda e: (*map(int, e[0].split("-")), e[1]), reverse=newest_first)
    served = await all_pages(svc, Query(limit=limit, newest_first=newest_first))
    assert served == [f"{e}/{p}" for e, p in expected]


async def test_filtered_paging_over_partitions_serves_only_matches_once(fake: fakeredis.FakeAsyncRedis) -> None:
    svc = make_services(fake, partitions=4)
    sent = await svc.ingest(
        events(*({"type": "even" if i % 2 == 0 else "odd", "subject": f"s{i}"} for i in range(40))), "billing", {}
    )
    want = {f"{a.entry_id}/{a.partition}" for a, i in zip(sent, range(40), strict=True) if i % 2 == 0}
    served = await all_pages(svc, Query(type="even", limit=3))
    assert len(served) == len(want) == 20
    assert set(served) == want
