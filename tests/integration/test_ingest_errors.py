"""Every refusal of the ingest API is an RFC 9457 problem with the right status, and stores nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.keys import Keys
from app.service import Services
from app.settings import Settings
from tests.integration.helpers import JSON, assert_problem

Client = AsyncTestClient[Litestar]
MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


async def stored(redis: Redis, settings: Settings) -> int:
    return int(await redis.xlen(Keys(settings.prefix).stream(0)))


# -- 400 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"type": "t"', b"{type: t}", b""])
async def test_malformed_json_is_400(client: Client, auth: dict[str, str], body: bytes) -> None:
    resp = await client.post("/v1/events", content=body, headers={**auth, **JSON})
    assert_problem(resp, 400)


async def test_malformed_batch_is_400(client: Client, auth: dict[str, str]) -> None:
    resp = await client.post("/v1/events/batch", content=b'[{"type": "a"},', headers={**auth, **JSON})
    assert_problem(resp, 400)


async def test_malformed_binary_mode_json_body_is_400(client: Client, auth: dict[str, str]) -> None:
    headers = {**auth, **JSON, "ce-specversion": "1.0", "ce-type": "t"}
    assert_problem(await client.post("/v1/events", content=b"{nope", headers=headers), 400)


# -- 413 -----------------------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_413_naming_the_setting(
    make_client: MakeClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    async with make_client(max_body_bytes=2048) as c:
        small = await c.post("/v1/events", json={"type": "t", "data": "x" * 1000}, headers=auth)
        assert small.status_code == 202, small.text
        big = await c.post("/v1/events", json={"type": "t", "data": "x" * 3000}, headers=auth)
        body = assert_problem(big, 413)
        assert "EVENTFLOW_MAX_BODY_BYTES" in body["detail"]
        batch = await c.post("/v1/events/batch", json=[{"type": "t", "data": "x" * 3000}], headers=auth)
        assert_problem(batch, 413)
    assert await stored(redis, settings) == 1


async def test_a_batch_over_max_batch_is_413_on_both_endpoints(
    make_client: MakeClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    events = [{"specversion": "1.0", "type": "t"} for _ in range(6)]
    async with make_client(max_batch=5) as c:
        resp = await c.post("/v1/events/batch", json=events, headers=auth)
        assert "EVENTFLOW_MAX_BATCH" in assert_problem(resp, 413)["detail"]
        resp = await c.post("/v1/events", content=json.dumps(events),
                            headers={**auth, "Content-Type": "application/cloudevents-batch+json"})
        assert_problem(resp, 413)
        ok = await c.post("/v1/events/batch", json=events[:5], headers=auth)
        assert ok.status_code == 202, ok.text
    assert await stored(redis, settings) == 5


# -- 415 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_a_wrong_content_type_is_415(client: Client, auth: dict[str, str], content_type: str) -> None:
    resp = await client.post("/v1/events", content=b'{"type": "t"}', headers={**auth, "Content-Type": content_type})
    assert_problem(resp, 415)


async def test_a_missing_content_type_is_415(client: Client, auth: dict[str, str]) -> None:
    resp = await client.post("/v1/events", content=b'{"type": "t"}', headers=auth)
    assert_problem(resp, 415)


async def test_a_batch_in_a_wrong_content_type_is_415(client: Client, auth: dict[str, str]) -> None:
    headers = {**auth, "Content-Type": "text/csv"}
    resp = await client.post("/v1/events/batch", content=b'[{"type": "t"}]', headers=headers)
    assert_problem(resp, 415)


# -- 422 -----------------------------------------------------------------------------------------


async def test_a_missing_type_is_422_naming_the_field(client: Client, auth: dict[str, str]) -> None:
    resp = await client.post("/v1/events", json={"data": {"amount": 3}}, headers=auth)
    body = assert_problem(resp, 422, "/type")
    assert body["errors"][0]["detail"] == "required"


async def test_every_bad_field_of_an_event_is_named(client: Client, auth: dict[str, str]) -> None:
    resp = await client.post("/v1/events", json={"type": "", "time": "soon", "traceparent": "x", "Bad": 1},
                             headers=auth)
    assert_problem(resp, 422, "/type", "/time", "/traceparent", "/Bad")


async def test_a_traceparent_or_extension_name_ending_in_a_newline_is_422_and_stores_nothing(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    # `$` matches before a final newline: both were accepted, and stored with the newline.
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n"
    resp = await client.post("/v1/events", json={"type": "t", "traceparent": traceparent}, headers=auth)
    assert_problem(resp, 422, "/traceparent")
    resp = await client.post("/v1/events/batch", json=[{"type": "t", "abc\n": "x"}], headers=auth)
    assert_problem(resp, 422, "/events/0/abc\n")
    assert await stored(redis, settings) == 0


async def test_structured_mode_without_specversion_is_422(client: Client, auth: dict[str, str]) -> None:
    resp = await client.post("/v1/events", content=b'{"type": "t"}',
                             headers={**auth, "Content-Type": "application/cloudevents+json"})
    assert_problem(resp, 422, "/specversion")


async def test_a_batch_is_refused_whole_listing_every_failing_item(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    events: list[Any] = [{"type": "ok"} for _ in range(6)]
    events[1] = {"type": "ok", "time": "yesterday"}
    events[3] = {"data": 1}
    events[5] = ["not", "an", "object"]
    resp = await client.post("/v1/events/batch", json=events, headers=auth)
    assert_problem(resp, 422, "/events/1/time", "/events/3/type", "/events/5")
    assert await stored(redis, settings) == 0


async def test_an_empty_batch_is_422(client: Client, auth: dict[str, str]) -> None:
    assert_problem(await client.post("/v1/events/batch", json=[], headers=auth), 422, "/events")


# -- 401 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic YmlsbGluZzpzZWNyZXQ=", "Bearer efk_not-a-real-key", "efk_no-scheme"],
)
async def test_a_missing_or_wrong_key_is_401(client: Client, authorization: str | None) -> None:
    headers = dict(JSON)
    if authorization is not None:
        headers["Authorization"] = authorization
    resp = await client.post("/v1/events", content=b'{"type": "t"}', headers=headers)
    assert_problem(resp, 401)
    assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_401_comes_before_reading_the_body(client: Client) -> None:
    # An unauthenticated caller learns nothing about the body's validity.
    resp = await client.post("/v1/events", content=b"{broken", headers=JSON)
    assert_problem(resp, 401)


async def test_the_batch_endpoint_needs_a_key_too(client: Client) -> None:
    assert_problem(await client.post("/v1/events/batch", json=[{"type": "t"}]), 401)


async def test_a_revoked_key_is_401_at_once_without_an_auth_cache(
    make_client: MakeClient, services: Services, new_producer: Callable[[str], Awaitable[dict[str, str]]]
) -> None:
    auth = await new_producer("temp")
    async with make_client(auth_cache_s=0) as c:
        assert (await c.post("/v1/events", json={"type": "t"}, headers=auth)).status_code == 202
        await services.producers.revoke("temp")
        assert_problem(await c.post("/v1/events", json={"type": "t"}, headers=auth), 401)


async def test_a_revoked_key_is_401_once_the_auth_cache_expires(
    make_client: MakeClient, services: Services, new_producer: Callable[[str], Awaitable[dict[str, str]]]
) -> None:
    # Other processes' caches keep a revoked key for at most EVENTFLOW_AUTH_CACHE_S.
    auth = await new_producer("temp")
    async with make_client(auth_cache_s=0.3) as c:
        assert (await c.post("/v1/events", json={"type": "t"}, headers=auth)).status_code == 202
        await services.producers.revoke("temp")
        await asyncio.sleep(0.35)
        assert_problem(await c.post("/v1/events", json={"type": "t"}, headers=auth), 401)


async def test_a_rotated_key_replaces_the_old_one(
    make_client: MakeClient, services: Services, new_producer: Callable[[str], Awaitable[dict[str, str]]]
) -> None:
    old = await new_producer("temp")
    async with make_client(auth_cache_s=0) as c:
        new = {"Authorization": f"Bearer {(await services.producers.rotate('temp')).key}"}
        assert_problem(await c.post("/v1/events", json={"type": "t"}, headers=old), 401)
        assert (await c.post("/v1/events", json={"type": "t"}, headers=new)).status_code == 202


# -- 403 -----------------------------------------------------------------------------------------


async def test_a_body_claiming_another_source_is_403(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    resp = await client.post("/v1/events", json={"type": "t", "source": "shipping"}, headers=auth)
    body = assert_problem(resp, 403)
    assert "billing" in body["detail"]
    assert await stored(redis, settings) == 0


async def test_a_binary_mode_ce_source_of_another_producer_is_403(client: Client, auth: dict[str, str]) -> None:
    headers = {**auth, **JSON, "ce-specversion": "1.0", "ce-type": "t", "ce-source": "shipping"}
    assert_problem(await client.post("/v1/events", content=b"{}", headers=headers), 403)


async def test_one_foreign_source_in_a_batch_refuses_the_batch(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    events = [{"type": "t", "source": "billing"}, {"type": "t"}, {"type": "t", "source": "shipping"}]
    body = assert_problem(await client.post("/v1/events/batch", json=events, headers=auth), 403)
    assert "/events/2/source" in body["detail"]
    assert await stored(redis, settings) == 0


async def test_claiming_its_own_source_is_fine(client: Client, auth: dict[str, str]) -> None:
    resp = await client.post("/v1/events", json={"type": "t", "source": "billing"}, headers=auth)
    assert resp.status_code == 202, resp.text


# -- others --------------------------------------------------------------------------------------


async def test_an_unknown_route_is_a_404_problem(client: Client) -> None:
    assert_problem(await client.get("/v2/nothing"), 404)


async def test_a_wrong_method_is_a_405_problem(client: Client) -> None:
    assert_problem(await client.delete("/v1/events"), 405)


@pytest.mark.parametrize("repeated", [("ce-type", "a"), ("content-type", "text/plain"),
                                      ("authorization", "Bearer efk_other"), ("traceparent", "x")])
async def test_a_header_ingest_reads_given_twice_is_a_400_naming_it_and_stores_nothing(
    make_client: MakeClient, auth: dict[str, str], redis: Redis, settings: Settings, repeated: tuple[str, str]
) -> None:
    # One copy used to be taken silently: two ce-type headers stored the event under the last one.
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = [*auth.items(), ("content-type", "application/json"), ("ce-specversion", "1.0"),
               ("ce-type", "b"), ("traceparent", traceparent), repeated]
    async with make_client() as client:  # (Litestar's test client joins repeated headers into one)
        for path in ("/v1/events", "/v1/event-types/b/validate"):
            # Built by hand: a client's header merge keeps one copy of each name.
            request = httpx.Request("POST", client.base_url.join(path), content=b"{}", headers=headers)
            body = assert_problem(await client.send(request), 400)
            assert repeated[0] in body["detail"].lower()
    assert await stored(redis, settings) == 0


async def test_a_non_ascii_event_id_is_accepted_and_can_be_fetched(client: Client, auth: dict[str, str]) -> None:
    # The Location header is percent-encoded (a raw non-Latin-1 id used to turn into a 500 after the
    # event had been stored).
    resp = await client.post("/v1/events", json={"type": "t", "id": "commande/№ 7"}, headers=auth)
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == "/v1/events/commande%2F%E2%84%96%207"
    got = await client.get(f"/v1/events/{resp.json()['entry_id']}", headers=auth)
    assert got.json()["event"]["id"] == "commande/№ 7"


async def test_a_streamed_body_without_content_length_over_the_limit_is_413(
    make_client: MakeClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type": "t", "data": "'
        for _ in range(10):
            yield b"x" * 512
        yield b'"}'

    async with make_client(max_body_bytes=2048) as c:
        resp = await c.post("/v1/events", content=chunks(), headers={**auth, **JSON})
        assert "content-length" not in resp.request.headers
        assert_problem(resp, 413)
    assert await stored(redis, settings) == 0


async def test_a_body_that_stops_arriving_is_a_408_and_stores_nothing(
    make_client: MakeClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    # A producer that declares more than it sends (or stalls mid-body) held its request, and a task,
    # open for as long as the connection lived.
    async def stalls() -> AsyncIterator[bytes]:
        yield b'{"type": "t", "data": "'
        await asyncio.sleep(30)
        yield b'"}'

    async with make_client(body_timeout_s=0.3) as c:
        resp = await asyncio.wait_for(c.post("/v1/events", content=stalls(), headers={**auth, **JSON}), 10)
        problem = assert_problem(resp, 408)
        assert "EVENTFLOW_BODY_TIMEOUT_S" in problem["detail"]
    assert await stored(redis, settings) == 0
