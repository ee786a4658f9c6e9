"""GET /v1/events and /v1/events/{id}: filters, time ranges, paging across partitions, lookups."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.keys import Keys
from app.settings import Settings
from tests.integration.helpers import assert_problem

Client = AsyncTestClient[Litestar]
MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
OPERATOR = {"Authorization": "Bearer operator-token"}


def rfc3339(ms: int) -> str:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


async def post(c: Client | httpx.AsyncClient, auth: dict[str, str], **event: Any) -> str:
    resp = await c.post("/v1/events", json=event, headers=auth)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["entry_id"])


async def ids(c: Client | httpx.AsyncClient, auth: dict[str, str], **params: Any) -> list[str]:
    resp = await c.get("/v1/events", params=params, headers=auth)
    assert resp.status_code == 200, resp.text
    return [r["entry_id"] for r in resp.json()["events"]]


async def every_page(c: Client | httpx.AsyncClient, auth: dict[str, str], **params: Any) -> list[str]:
    """Follow next_cursor to the end: `<entry id>/<partition>` in the order served."""
    served: list[str] = []
    cursor = None
    for _ in range(200):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = await c.get("/v1/events", params=query, headers=auth)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert len(page["events"]) <= params.get("limit", 100)
        served += [f"{r['entry_id']}/{r['partition']}" for r in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return served
    raise AssertionError("paging did not end")


async def log_order(redis: Redis, settings: Settings, partitions: int, *, newest_first: bool) -> list[str]:
    """Every entry of every partition in the API's order: (entry id, partition)."""
    keys = Keys(settings.prefix, partitions)
    found = [(e.decode(), p) for p in range(partitions) for e, _ in await redis.xrange(keys.stream(p))]
    found.sort(key=lambda x: (*map(int, x[0].split("-")), x[1]), reverse=newest_first)
    return [f"{e}/{p}" for e, p in found]


# -- filters -------------------------------------------------------------------------------------


async def test_newest_first_is_the_default(client: Client, auth: dict[str, str]) -> None:
    posted = [await post(client, auth, type="t") for _ in range(3)]
    assert await ids(client, auth) == posted[::-1]
    assert await ids(client, auth, order="asc") == posted


async def test_type_filter(client: Client, auth: dict[str, str]) -> None:
    a1 = await post(client, auth, type="a")
    await post(client, auth, type="b")
    a2 = await post(client, auth, type="a")
    assert await ids(client, auth, type="a") == [a2, a1]
    assert await ids(client, auth, type="missing") == []


async def test_source_and_type_plus_source_filters(
    make_client: MakeClient, auth: dict[str, str], new_producer: Callable[[str], Awaitable[dict[str, str]]]
) -> None:
    shipping = await new_producer("shipping")
    async with make_client(api_token="operator-token") as c:
        b_a = await post(c, auth, type="a")
        s_a = await post(c, shipping, type="a")
        b_b = await post(c, auth, type="b")
        assert await ids(c, OPERATOR, source="billing") == [b_b, b_a]
        assert await ids(c, OPERATOR, source="shipping") == [s_a]
        assert await ids(c, OPERATOR, type="a", source="billing") == [b_a]
        assert await ids(c, OPERATOR, type="a", source="shipping") == [s_a]
        assert await ids(c, OPERATOR, type="a") == [s_a, b_a]


async def test_since_is_inclusive_and_until_exclusive_in_ms_and_rfc3339(client: Client, auth: dict[str, str]) -> None:
    posted = []
    for _ in range(3):
        posted.append(await post(client, auth, type="t"))
        await asyncio.sleep(0.003)  # distinct milliseconds
    first, second, third = posted
    ms = entry_ms(second)
    for since, until in ((ms, entry_ms(third)), (rfc3339(ms), rfc3339(entry_ms(third)))):
        assert await ids(client, auth, since=since) == [third, second]
        assert await ids(client, auth, until=since) == [first]
        assert await ids(client, auth, since=since, until=until) == [second]
        assert await ids(client, auth, since=since, until=until, type="t") == [second]


async def test_a_time_range_combines_with_type_and_paging(client: Client, auth: dict[str, str]) -> None:
    before = await post(client, auth, type="t")
    await asyncio.sleep(0.003)
    inside = [await post(client, auth, type="t") for _ in range(5)]
    since = entry_ms(inside[0])
    assert before not in inside and entry_ms(before) < since
    served = await every_page(client, auth, type="t", since=since, limit=2)
    assert [s.split("/")[0] for s in served] == inside[::-1]


@pytest.mark.parametrize(
    ("params", "pointers"),
    [
        ({"limit": 0}, ["/limit"]),
        ({"limit": 1001}, ["/limit"]),
        ({"order": "sideways"}, ["/order"]),
        ({"since": "last tuesday"}, ["/since"]),
        ({"until": "2024-02-30T00:00:00Z"}, ["/until"]),
        ({"cursor": "not-a-cursor"}, ["/cursor"]),
        ({"limit": 0, "order": "x"}, ["/limit", "/order"]),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, ["/until"]),  # was an empty page
        ({"since": "1767225600000", "until": "1767225600000"}, ["/until"]),
    ],
)
async def test_bad_query_parameters_are_422_naming_them(
    client: Client, auth: dict[str, str], params: dict[str, Any], pointers: list[str]
) -> None:
    assert_problem(await client.get("/v1/events", params=params, headers=auth), 422, *pointers)


@pytest.mark.parametrize("query", ["type=a&type=b", "order=asc&order=desc", "limit=1&limit=x",
                                   "since=0&until=1&since=2"])
async def test_a_query_parameter_given_twice_is_a_422_naming_it(
    client: Client, auth: dict[str, str], query: str
) -> None:
    # One of the values used to be taken silently (the last): `type=a&type=b` read only type b.
    repeated = "/" + query.split("=")[0]
    assert_problem(await client.get(f"/v1/events?{query}", headers=auth), 422, repeated)
    assert_problem(await client.get(f"/v1/stats?{query}", headers=auth), 422, repeated)


@pytest.mark.parametrize(("path", "name"), [("/v1/events", "limit"), ("/v1/dead-letters", "limit"),
                                           ("/v1/errors", "limit"), ("/v1/stats", "bucket"),
                                           ("/v1/event-types/t/validate", "version")])
async def test_a_non_integer_query_parameter_is_a_422_naming_it(
    client: Client, auth: dict[str, str], path: str, name: str
) -> None:
    # It was a 400 (Litestar's own answer for a value its type cannot hold) while an integer out of
    # range was a 422: both are a query parameter with an invalid value.
    method = client.post if path.endswith("/validate") else client.get
    body = assert_problem(await method(path, params={name: "ten"}, headers=auth), 422, f"/{name}")
    assert body["type"] == "/problems/invalid-event"
    # Said as the range check says it, not in msgspec's words ("Expected `int`, got `str`").
    assert body["errors"] == [{"pointer": f"/{name}", "detail": "must be a whole number"}]


# -- paging --------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_paging_serves_every_event_exactly_once_in_order(
    make_client: MakeClient, auth: dict[str, str], redis: Redis, settings: Settings, order: str
) -> None:
    async with make_client(api_token="operator-token") as c:
        await c.post("/v1/events/batch", json=[{"type": "t", "data": i} for i in range(23)], headers=auth)
        expected = await log_order(redis, settings, settings.partitions, newest_first=order == "desc")
        assert len(expected) == 23
        for who in (OPERATOR, auth):  # the raw stream path and the source-index path
            assert await every_page(c, who, limit=5, order=order) == expected
            assert await every_page(c, who, limit=23, order=order) == expected
            assert await every_page(c, who, limit=1000, order=order) == expected


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_paging_merges_four_partitions_in_order(
    make_client: MakeClient, auth: dict[str, str], redis: Redis, settings: Settings, order: str
) -> None:
    async with make_client(partitions=4, api_token="operator-token") as c:
        # Concurrent batches land in the same milliseconds on different partitions: the merge must
        # break those ties the same way on every page.
        batches = [[{"type": "even" if (b + i) % 2 == 0 else "odd", "subject": f"order-{b}-{i}"}
                    for i in range(12)] for b in range(4)]
        answers = await asyncio.gather(*(c.post("/v1/events/batch", json=b, headers=auth) for b in batches))
        assert {a.status_code for a in answers} == {202}
        partitions = {e["partition"] for a in answers for e in a.json()["events"]}
        assert partitions == {0, 1, 2, 3}, "subjects should spread events over every partition"
        expected = await log_order(redis, settings, 4, newest_first=order == "desc")
        assert len(expected) == 48
        for who in (OPERATOR, auth):
            for limit in (1, 5, 48):
                assert await every_page(c, who, limit=limit, order=order) == expected
        evens = await every_page(c, OPERATOR, type="even", limit=7, order=order)
        assert len(evens) == 24
        assert evens == [e for e in expected if e in set(evens)]


# -- one event -----------------------------------------------------------------------------------


async def test_one_event_by_event_id_and_by_entry_id(client: Client, auth: dict[str, str]) -> None:
    resp = await client.post("/v1/events", json={"type": "t", "id": "order-9", "data": {"n": 1}}, headers=auth)
    by_id = await client.get("/v1/events/order-9", headers=auth)
    by_entry = await client.get(f"/v1/events/{resp.json()['entry_id']}", headers=auth)
    assert by_id.status_code == by_entry.status_code == 200
    assert by_id.json() == by_entry.json()
    assert by_id.json()["event"]["id"] == "order-9"
    assert by_id.json()["event"]["data"] == {"n": 1}


async def test_one_event_by_id_on_four_partitions(make_client: MakeClient, auth: dict[str, str]) -> None:
    async with make_client(partitions=4) as c:
        sent = (await c.post("/v1/events/batch", json=[{"type": "t", "id": f"p-{i}", "subject": f"s{i}"}
                                                        for i in range(12)], headers=auth)).json()["events"]
        assert len({a["partition"] for a in sent}) > 1
        for answer in sent:
            by_id = (await c.get(f"/v1/events/{answer['id']}", headers=auth)).json()
            assert (by_id["partition"], by_id["entry_id"]) == (answer["partition"], answer["entry_id"])
            assert by_id["event"]["id"] == answer["id"]
        # Entry ids are unique only within a partition, so two partitions can hold the same one (a
        # lookup by entry id then cannot tell them apart); ids unique overall are found wherever they are.
        counts: dict[str, int] = {}
        for answer in sent:
            counts[answer["entry_id"]] = counts.get(answer["entry_id"], 0) + 1
        for answer in (a for a in sent if counts[a["entry_id"]] == 1):
            by_entry = (await c.get(f"/v1/events/{answer['entry_id']}", headers=auth)).json()
            assert (by_entry["partition"], by_entry["event"]["id"]) == (answer["partition"], answer["id"])


@pytest.mark.parametrize("ident", ["no-such-event", "1-0", "99999999999999-0"])
async def test_an_unknown_event_is_a_404_problem(client: Client, auth: dict[str, str], ident: str) -> None:
    await post(client, auth, type="t")
    assert_problem(await client.get(f"/v1/events/{ident}", headers=auth), 404)


async def test_queries_need_a_key(client: Client) -> None:
    assert_problem(await client.get("/v1/events"), 401)
    assert_problem(await client.get("/v1/events/anything"), 401)
