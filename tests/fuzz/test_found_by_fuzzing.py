"""What the fuzzer found, pinned as plain tests (fast, in-process). Fixed here: malformed dead-letter
ids, time bounds and cursors, entry ids beyond 2^64 (Redis refuses them with an error that became a
500), and non-ASCII base64 data."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from urllib.parse import quote

import httpx
import pytest

from app.ids import is_entry_id
from tests.integration.helpers import assert_problem

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
TOKEN = "fuzz-regressions-operator-token"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}


def test_entry_ids_beyond_64_bits_are_not_entry_ids() -> None:
    assert is_entry_id("18446744073709551615-18446744073709551615")
    assert not is_entry_id("18446744073709551616-0")
    assert not is_entry_id("99999999999999999999-0")


@pytest.mark.parametrize("ident", [
    "%C2%AD%2A", "x", "0:99999999999999999999-1", "7:1-0", "-1:1-0", "0:1-0-0",
    # \d and str.isdigit() take Unicode digits, and `$` matches before a final newline: Redis then
    # refused the id with an error (a 500).
    "\u0661-0", "0:1-0\n", "\u00b2:1-0", "\u0661:1-0",
])
async def test_a_malformed_dead_letter_id_is_a_422_not_a_500(make_client: MakeClient, ident: str) -> None:
    async with make_client(api_token=TOKEN) as client:
        path = quote(ident, safe="%:")  # "%C2%AD%2A" goes as it is: an escaped path
        assert_problem(await client.get(f"/v1/dead-letters/{path}", headers=OPERATOR), 422)
        for action in ("replay", "discard"):
            resp = await client.post(f"/v1/dead-letters/{action}", json={"ids": [ident]}, headers=OPERATOR)
            assert_problem(resp, 422)


@pytest.mark.parametrize("ident", ["\u0661-0", "1-0\n", "\u0661\u0662-\u0663"])
async def test_an_event_id_of_non_ascii_digits_or_a_newline_is_a_404(make_client: MakeClient, ident: str) -> None:
    async with make_client(api_token=TOKEN) as client:
        assert_problem(await client.get(f"/v1/events/{quote(ident)}", headers=OPERATOR), 404)


@pytest.mark.parametrize("query", ["until=0", "since=99999999999999999999", "until=99999999999999999999"])
async def test_dead_letter_time_bounds_redis_cannot_take_give_an_empty_list(
    make_client: MakeClient, query: str
) -> None:
    async with make_client(api_token=TOKEN) as client:
        resp = await client.get(f"/v1/dead-letters?{query}", headers=OPERATOR)
        assert resp.status_code == 200 and resp.json() == {"dead_letters": []}, resp.text


@pytest.mark.parametrize("selection", [{"until_ms": -5}, {"until_ms": 0}, {"since_ms": 2**64}, {"since_ms": -1}])
async def test_a_dead_letter_filter_out_of_range_selects_nothing(
    make_client: MakeClient, selection: dict[str, int]
) -> None:
    async with make_client(api_token=TOKEN) as client:
        resp = await client.post("/v1/dead-letters/replay", json={"filter": selection}, headers=OPERATOR)
        assert resp.status_code == 200 and resp.json() == {"selected": 0, "replayed": 0}, resp.text


@pytest.mark.parametrize("path", ["/v1/events?since=%C2%B2", "/v1/stats?until=%C2%B2", "/v1/dead-letters?since=%C2%B2"])
async def test_a_time_of_non_ascii_digits_is_a_422_naming_it(make_client: MakeClient, path: str) -> None:
    # "²".isdigit() is True, but int("²") raises: a 500 before.
    async with make_client(api_token=TOKEN) as client:
        assert_problem(await client.get(path, headers=OPERATOR), 422, "/" + path.split("?")[1].split("=")[0])
        resp = await client.post("/v1/replay", json={"group": "g", "since": "²"}, headers=OPERATOR)
        assert_problem(resp, 422, "/since")


async def test_an_event_id_that_looks_like_an_entry_id_beyond_64_bits_is_a_404(make_client: MakeClient) -> None:
    async with make_client(api_token=TOKEN) as client:
        assert_problem(await client.get("/v1/events/99999999999999999999-0", headers=OPERATOR), 404)


@pytest.mark.parametrize("query", ["until=0", "since=18446744073709551616", "until=99999999999999999999&type=x",
                                   "until=1960-01-01T00:00:00Z", "since=1960-01-01T00:00:00Z&until=5&order=asc"])
async def test_event_query_time_bounds_redis_cannot_take_give_an_empty_page(
    make_client: MakeClient, query: str
) -> None:
    async with make_client(api_token=TOKEN) as client:
        resp = await client.get(f"/v1/events?{query}", headers=OPERATOR)
    assert resp.status_code == 200 and resp.json() == {"events": [], "next_cursor": None}, resp.text


async def test_a_cursor_beyond_64_bits_is_a_422(make_client: MakeClient) -> None:
    cursor = base64.urlsafe_b64encode(b"99999999999999999999-0/0").decode().rstrip("=")
    async with make_client(api_token=TOKEN) as client:
        assert_problem(await client.get(f"/v1/events?cursor={cursor}", headers=OPERATOR), 422, "/cursor")


async def test_non_ascii_data_base64_is_a_422(
    make_client: MakeClient, new_producer: Callable[[str], Awaitable[dict[str, str]]]
) -> None:
    auth = await new_producer("base64")
    async with make_client() as client:
        resp = await client.post("/v1/events", json={"type": "t", "data_base64": "é"}, headers=auth)
    assert_problem(resp, 422, "/data_base64")
