"""Producers may XADD straight into the log; such entries show up in queries, marked direct, and
consumers dead-letter the ones that are not valid events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.deadletters import Filter
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from consumers.base import Consumer, Delivery
from tests.integration.helpers import consuming, wait_for

Client = AsyncTestClient[Litestar]
MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


async def xadd(redis: Redis, settings: Settings, **fields: str) -> str:
    # What the README tells direct writers: XADD <stream key> * type ... source ... data '<json>'
    entry_id = await redis.xadd(Keys(settings.prefix).stream(0), fields)  # type: ignore[arg-type]
    return entry_id.decode()


async def test_a_direct_xadd_is_listed_and_marked_direct(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    entry_id = await xadd(redis, settings, type="order.created", source="billing", data='{"amount": 3}')
    resp = await client.get("/v1/events", headers=auth)
    assert resp.status_code == 200, resp.text
    [record] = resp.json()["events"]
    assert record["entry_id"] == entry_id
    assert record["direct"] is True
    assert record["problems"] == []
    assert record["event"] == {"specversion": "1.0", "id": entry_id, "type": "order.created",
                               "source": "billing", "data": {"amount": 3}}


async def test_a_direct_xadd_can_be_fetched_by_entry_id_and_by_its_own_id(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    entry_id = await xadd(redis, settings, id="pos-1", type="t", source="billing", data="1")
    by_entry = await client.get(f"/v1/events/{entry_id}", headers=auth)
    by_id = await client.get("/v1/events/pos-1", headers=auth)
    assert by_entry.status_code == by_id.status_code == 200
    assert by_entry.json() == by_id.json()
    assert by_id.json()["direct"] is True


async def test_direct_xadds_are_found_by_type_and_source_filters(
    make_client: MakeClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    created = await xadd(redis, settings, type="order.created", source="billing", data="{}")
    await xadd(redis, settings, type="order.paid", source="billing", data="{}")
    shipped = await xadd(redis, settings, type="order.created", source="shipping", data="{}")
    async with make_client(api_token="operator-token") as c:
        operator = {"Authorization": "Bearer operator-token"}
        by_type = (await c.get("/v1/events", params={"type": "order.created"}, headers=operator)).json()
        assert [r["entry_id"] for r in by_type["events"]] == [shipped, created]
        by_source = (await c.get("/v1/events", params={"source": "shipping"}, headers=operator)).json()
        assert [r["entry_id"] for r in by_source["events"]] == [shipped]
        both = (await c.get("/v1/events", params={"type": "order.created", "source": "billing"},
                            headers=operator)).json()
        assert [r["entry_id"] for r in both["events"]] == [created]
        mine = (await c.get("/v1/events", params={"type": "order.created"}, headers=auth)).json()
        assert [r["entry_id"] for r in mine["events"]] == [created]


async def test_direct_and_posted_events_stay_in_log_order_in_the_indexes(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    order = [await xadd(redis, settings, type="t", source="billing", data="0")]
    order.append((await client.post("/v1/events", json={"type": "t"}, headers=auth)).json()["entry_id"])
    order.append(await xadd(redis, settings, type="t", source="billing", data="2"))
    order.append((await client.post("/v1/events", json={"type": "t"}, headers=auth)).json()["entry_id"])
    resp = await client.get("/v1/events", params={"type": "t", "order": "asc"}, headers=auth)
    records = resp.json()["events"]
    assert [r["entry_id"] for r in records] == order
    assert [r["direct"] for r in records] == [True, False, True, False]


async def test_a_malformed_direct_entry_is_listed_with_its_problems_not_a_500(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    good = await xadd(redis, settings, type="t", source="billing", data="{}")
    bad_data = await xadd(redis, settings, type="t", source="billing", data="{amount: 3")
    bad_ext = await xadd(redis, settings, type="t", source="billing", _x="not json")
    resp = await client.get("/v1/events", headers=auth)
    assert resp.status_code == 200, resp.text
    problems = {r["entry_id"]: r["problems"] for r in resp.json()["events"]}
    assert problems == {good: [], bad_data: ["data is not valid JSON"], bad_ext: ["_x is not a JSON object"]}


async def test_a_deeply_nested_direct_entry_is_listed_with_its_problem_and_dead_lettered_as_invalid(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings, services: Services
) -> None:
    # Deeper than msgspec can decode (it stops near Python's recursion limit): reading it used to
    # raise RecursionError, a 500 for queries and a crash loop for every consumer.
    deep = await xadd(redis, settings, type="t", source="billing", data="[" * 5000 + "]" * 5000)
    good = await xadd(redis, settings, type="t", source="billing", data='{"ok": true}')
    listed = await client.get("/v1/events", headers=auth)
    assert listed.status_code == 200, listed.text
    problems = {r["entry_id"]: r["problems"] for r in listed.json()["events"]}
    assert problems == {deep: ["data is nested too deeply"], good: []}

    got: list[Any] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.data)

    async def done() -> bool:
        return got == [{"ok": True}] and bool(await services.dead_letters.list(Filter()))

    async with consuming(redis, settings, Consumer("direct", handler)):
        await wait_for(done)
    [letter] = await services.dead_letters.list(Filter())
    assert (letter.entry_id, letter.reason) == (deep, "invalid")
    assert "nested too deeply" in letter.error


# What ingest refuses over HTTP with a 422, written straight into the stream instead.
REFUSED_OVER_HTTP = {
    "time": ({"time": "yesterday"}, "/time: must be an RFC 3339 timestamp with a UTC offset"),
    "empty type": ({"type": ""}, "/type: must not be empty"),
    "specversion": ({"specversion": "0.3"}, '/specversion: must be "1.0"'),
    "base64": ({"data_base64": "@@@"}, "/data_base64: not valid base64"),
    "attribute name": ({"Amount": "5"}, "/Amount: unknown attribute"),
    "extension value": ({"_x": '{"foo": {"a": 1}}'}, "/foo: extension attributes must be"),
    "data twice": ({"data_base64": "AAAA"}, "/data_base64: send either data or data_base64"),
    "traceparent": ({"traceparent": "00-xyz"}, "/traceparent: must be a W3C traceparent"),
}


async def test_direct_entries_get_the_checks_ingest_makes_and_the_invalid_ones_are_dead_lettered(
    redis: Redis, settings: Settings, services: Services
) -> None:
    bad = {}
    for name, (fields, problem) in REFUSED_OVER_HTTP.items():
        entry = {"type": "t", "source": "billing", "data": "1", **fields}
        if "data_base64" in fields and name != "data twice":
            del entry["data"]
        bad[await xadd(redis, settings, **entry)] = (name, problem)
    good = await xadd(redis, settings, type="t", source="billing", data="1", partitionkey="k1",
                      _x='{"region": "eu"}', time="2026-11-27T06:00:00Z", specversion="1.0")
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(delivery.entry_id)

    async def done() -> bool:
        return handled == [good] and len(await services.dead_letters.list(Filter())) == len(bad)

    async with consuming(redis, settings, Consumer("direct", handler)):
        await wait_for(done)
    for letter in await services.dead_letters.list(Filter()):
        name, problem = bad[letter.entry_id]
        assert letter.reason == "invalid", name
        assert problem in letter.error, (name, letter.error)


async def test_deleting_the_newest_entry_directly_does_not_stall_ingest_or_reads(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    # An operator removes the latest event by hand (XDEL): the stream's tip is then older than the
    # last entry the log indexed, and neither appends nor reads may wait for entries that never come.
    stream = Keys(settings.prefix).stream(0)
    first = await client.post("/v1/events", json={"type": "t", "data": 1}, headers=auth)
    second = await client.post("/v1/events", json={"type": "t", "data": 2}, headers=auth)
    assert first.status_code == second.status_code == 202
    assert await redis.xdel(stream, second.json()["entry_id"]) == 1
    async with asyncio.timeout(5):
        listed = await client.get("/v1/events", headers=auth)
        third = await client.post("/v1/events", json={"type": "t", "data": 3}, headers=auth)
    assert [r["entry_id"] for r in listed.json()["events"]] == [first.json()["entry_id"]]
    assert third.status_code == 202, third.text
    assert third.json()["entry_id"] > second.json()["entry_id"]


async def test_a_lost_index_marker_is_rebuilt_without_duplicating_the_index(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    # The key that says how far the indexes reach is gone (deleted by hand): catch-up then reads
    # entries that are indexed already, and must neither fail on them nor list them twice.
    keys = Keys(settings.prefix)
    before = [await client.post("/v1/events", json={"type": "t", "data": n}, headers=auth) for n in range(3)]
    assert await redis.delete(keys.indexed(0)) == 1
    direct = await xadd(redis, settings, type="t", source="billing", data="3")
    after = await client.post("/v1/events", json={"type": "t", "data": 4}, headers=auth)
    assert after.status_code == 202, after.text
    listed = await client.get("/v1/events", params={"type": "t", "limit": 50}, headers=auth)
    expected = [r.json()["entry_id"] for r in before] + [direct, after.json()["entry_id"]]
    assert [r["entry_id"] for r in listed.json()["events"]] == expected[::-1], (listed.json(), expected)  # newest first


async def test_an_index_deleted_by_hand_is_rebuilt_once_its_marker_is_deleted_too(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    # The recovery step the README gives for an index deleted by hand.
    keys = Keys(settings.prefix)
    posted = [await client.post("/v1/events", json={"type": kind, "data": n}, headers=auth)
              for n, kind in enumerate(["a", "b", "a", "a"])]
    assert await redis.delete(keys.type_index(0, "a"), keys.indexed(0)) == 2
    listed = await client.get("/v1/events", params={"type": "a", "limit": 50}, headers=auth)
    assert [r["entry_id"] for r in listed.json()["events"]] == [posted[n].json()["entry_id"] for n in (3, 2, 0)]
    others = await client.get("/v1/events", params={"type": "b", "limit": 50}, headers=auth)
    assert [r["entry_id"] for r in others.json()["events"]] == [posted[1].json()["entry_id"]]


async def test_a_direct_entry_with_a_junk_format_field_is_still_checked(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings, services: Services
) -> None:
    # `_v` marks what ingest wrote; any `_v` used to pass as one, skipping every check.
    bad = await xadd(redis, settings, _v="x", type="t", source="billing", time="yesterday")
    resp = await client.get(f"/v1/events/{bad}", headers=auth)
    assert resp.status_code == 200, resp.text
    assert resp.json()["direct"] is True
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(delivery.entry_id)

    async def dead() -> bool:
        return bool(await services.dead_letters.list(Filter()))

    async with consuming(redis, settings, Consumer("direct", handler)):
        await wait_for(dead)
    [letter] = await services.dead_letters.list(Filter())
    assert (letter.entry_id, letter.reason) == (bad, "invalid")
    assert "time" in letter.error, letter.error
    assert handled == []


async def test_a_direct_entry_with_the_largest_possible_id_is_a_clear_503_not_a_500(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    # XADD with an explicit id, not *: Redis then refuses every later append to that stream, for good
    # (deleting the entry does not help: Redis never lowers a stream's last id below a deleted one).
    stream = Keys(settings.prefix).stream(0)
    future = await xadd_at(redis, stream, "99999999999999-0")  # far in the future: appends go on after it
    accepted = await client.post("/v1/events", json={"type": "t", "data": 1}, headers=auth)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["entry_id"] > future
    last = await xadd_at(redis, stream, "18446744073709551615-18446744073709551615")
    refused = await client.post("/v1/events", json={"type": "t", "data": 2}, headers=auth)
    assert refused.status_code == 503, refused.text
    assert "largest possible id" in refused.json()["detail"]
    listed = await client.get("/v1/events", headers=auth)
    assert listed.status_code == 200, listed.text
    assert last in [e["entry_id"] for e in listed.json()["events"]], listed.json()


async def xadd_at(redis: Redis, stream: str, entry_id: str) -> str:
    return (await redis.xadd(stream, {"type": "t", "source": "billing"}, id=entry_id)).decode()
