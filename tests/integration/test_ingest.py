"""Accepted events: the 202 answer, enrichment, batches in every dialect, and idempotency."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.connections import connect
from app.events import parse_request
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from tests.integration.helpers import home_stream

Client = AsyncTestClient[Litestar]
MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
CE_BATCH = {"Content-Type": "application/cloudevents-batch+json"}
ENTRY_ID = re.compile(r"^\d+-\d+$")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def log_entries(redis: Redis, settings: Settings) -> list[tuple[str, dict[str, str]]]:
    """Every entry of the log (of every partition, in partition order)."""
    keys = Keys(settings.prefix, settings.partitions)
    raw = [entry for p in range(keys.partitions) for entry in await redis.xrange(keys.stream(p))]
    return [(e.decode(), {k.decode(): v.decode() for k, v in f.items()}) for e, f in raw]


async def test_an_accepted_event_answers_202_with_its_id_and_entry_id(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    resp = await client.post("/v1/events", json={"type": "order.created", "data": {"amount": 3}}, headers=auth)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert uuid.UUID(body["id"]).version == 7
    assert ENTRY_ID.match(body["entry_id"])
    assert body["duplicate"] is False
    assert resp.headers["location"] == f"/v1/events/{body['id']}"
    [(entry_id, fields)] = await log_entries(redis, settings)
    assert entry_id == body["entry_id"]
    assert fields["id"] == body["id"]
    assert fields["type"] == "order.created"
    assert fields["source"] == "billing"
    assert json.loads(fields["data"]) == {"amount": 3}


async def test_the_request_traceparent_header_is_carried_on_the_event(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    resp = await client.post("/v1/events", json={"type": "t"}, headers={**auth, "traceparent": TRACEPARENT})
    assert resp.status_code == 202
    [(_, fields)] = await log_entries(redis, settings)
    assert fields["traceparent"] == TRACEPARENT


async def test_an_invalid_traceparent_header_is_replaced_by_a_fresh_trace(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    resp = await client.post("/v1/events", json={"type": "t"}, headers={**auth, "traceparent": "garbage"})
    assert resp.status_code == 202
    [(_, fields)] = await log_entries(redis, settings)
    assert re.match(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$", fields["traceparent"])


async def test_binary_mode_is_accepted_with_binary_data(client: Client, auth: dict[str, str]) -> None:
    payload = b"\x89PNG\r\n\x1a\n\x00"
    headers = {**auth, "Content-Type": "image/png", "ce-specversion": "1.0", "ce-type": "image.uploaded",
               "ce-id": "img-1", "ce-subject": "a%20b", "ce-tenant": "acme"}
    resp = await client.post("/v1/events", content=payload, headers=headers)
    assert resp.status_code == 202, resp.text
    event = (await client.get("/v1/events/img-1", headers=auth)).json()["event"]
    assert base64.b64decode(event["data_base64"]) == payload
    assert event["datacontenttype"] == "image/png"
    assert event["subject"] == "a b"
    assert event["tenant"] == "acme"


async def test_a_batch_answers_each_event_in_order(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    events = [{"type": f"t{i}", "id": f"b-{i}"} for i in range(5)]
    resp = await client.post("/v1/events/batch", json=events, headers=auth)
    assert resp.status_code == 202, resp.text
    answers = resp.json()["events"]
    assert [a["id"] for a in answers] == [f"b-{i}" for i in range(5)]
    entries = await log_entries(redis, settings)
    assert [a["entry_id"] for a in answers] == [e for e, _ in entries]
    assert [f["type"] for _, f in entries] == [f"t{i}" for i in range(5)]


async def test_a_batch_may_be_wrapped_in_an_events_object(client: Client, auth: dict[str, str]) -> None:
    resp = await client.post("/v1/events/batch", json={"events": [{"type": "a"}, {"type": "b"}]}, headers=auth)
    assert resp.status_code == 202, resp.text
    assert len(resp.json()["events"]) == 2


async def test_a_cloudevents_batch_is_accepted_on_both_endpoints(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    batch = [{"specversion": "1.0", "type": "a", "id": f"ce-{i}", "source": "billing"} for i in range(3)]
    on_single = await client.post("/v1/events", content=json.dumps(batch), headers={**auth, **CE_BATCH})
    assert on_single.status_code == 202, on_single.text
    assert [a["id"] for a in on_single.json()["events"]] == ["ce-0", "ce-1", "ce-2"]
    batch = [{**e, "id": f"ce-{i + 3}"} for i, e in enumerate(batch)]
    on_batch = await client.post("/v1/events/batch", content=json.dumps(batch), headers={**auth, **CE_BATCH})
    assert on_batch.status_code == 202, on_batch.text
    assert [f["id"] for _, f in await log_entries(redis, settings)] == [f"ce-{i}" for i in range(6)]


async def test_a_batch_of_one_thousand_is_accepted_by_default(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    resp = await client.post("/v1/events/batch", json=[{"type": "bulk"}] * 1000, headers=auth)
    assert resp.status_code == 202, resp.text
    assert len({a["entry_id"] for a in resp.json()["events"]}) == 1000
    assert await redis.xlen(home_stream(settings)) == 1000


# -- idempotency ---------------------------------------------------------------------------------


async def test_a_repeat_returns_the_original_entry_and_appends_nothing(
    client: Client, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    first = await client.post("/v1/events", json={"type": "t", "id": "order-7", "data": 1}, headers=auth)
    again = await client.post("/v1/events", json={"type": "t", "id": "order-7", "data": 2}, headers=auth)
    assert first.status_code == again.status_code == 202
    assert again.json() == {**first.json(), "duplicate": True}
    [(_, fields)] = await log_entries(redis, settings)
    assert fields["data"] == "1"


async def test_a_repeat_inside_a_batch_points_to_the_original(client: Client, auth: dict[str, str]) -> None:
    first = await client.post("/v1/events", json={"type": "t", "id": "x"}, headers=auth)
    resp = await client.post("/v1/events/batch", json=[{"type": "t", "id": "x"}, {"type": "t", "id": "y"}],
                             headers=auth)
    answers = resp.json()["events"]
    assert answers[0] == {**first.json(), "duplicate": True}
    assert answers[1]["duplicate"] is False


async def test_fifty_concurrent_repeats_append_exactly_once(
    make_client: MakeClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    async with make_client() as c:
        answers = await asyncio.gather(
            *(c.post("/v1/events", json={"type": "t", "id": "once", "data": n}, headers=auth) for n in range(50))
        )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["entry_id"] for a in answers}) == 1
    assert sum(a.json()["duplicate"] is False for a in answers) == 1
    assert len(await log_entries(redis, settings)) == 1


async def test_concurrent_repeats_from_separate_processes_append_exactly_once(
    settings: Settings, redis: Redis, producer_key: str
) -> None:
    # Separate clients stand for separate web processes: no in-process coalescing can help, only the
    # atomic check-and-append in append.lua.
    clients = [connect(settings) for _ in range(10)]
    try:
        for r in clients:  # every "process" is connected before the burst, as a started web process is
            await r.ping()
        event = parse_request(b'{"type": "t", "id": "cross"}', "application/json", {})[0]
        answers = await asyncio.gather(
            *(Services(r, settings).ingest(event, "billing", {}) for r in clients for _ in range(5))
        )
    finally:
        for r in clients:
            await r.aclose()
    assert len({a[0].entry_id for a in answers}) == 1
    assert sum(not a[0].duplicate for a in answers) == 1
    assert len(await log_entries(redis, settings)) == 1


async def test_the_same_id_from_two_sources_appends_twice_and_each_is_idempotent(
    client: Client, auth: dict[str, str], new_producer: Callable[[str], Awaitable[dict[str, str]]],
    redis: Redis, settings: Settings,
) -> None:
    shipping = await new_producer("shipping")
    answers: dict[str, list[Any]] = {"billing": [], "shipping": []}
    for _ in range(2):
        for name, headers in (("billing", auth), ("shipping", shipping)):
            resp = await client.post("/v1/events", json={"type": "t", "id": "shared-1"}, headers=headers)
            assert resp.status_code == 202, resp.text
            answers[name].append(resp.json())
    assert answers["billing"][0]["entry_id"] != answers["shipping"][0]["entry_id"]
    for name in answers:
        first, again = answers[name]
        assert (again["duplicate"], again["entry_id"]) == (True, first["entry_id"])
    assert sorted(f["source"] for _, f in await log_entries(redis, settings)) == ["billing", "shipping"]


async def test_concurrent_events_from_many_requests_all_land_once(
    make_client: MakeClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    # Requests arriving together share one Redis round trip (group commit); each still gets its own answer.
    async with make_client() as c:
        answers = await asyncio.gather(
            *(c.post("/v1/events", json={"type": "t", "id": f"c-{n}"}, headers=auth) for n in range(100))
        )
    assert [a.json().get("id", a.text) for a in answers] == [f"c-{n}" for n in range(100)]
    by_id = {f["id"]: e for e, f in await log_entries(redis, settings)}
    assert len(by_id) == 100
    assert all(by_id[a.json()["id"]] == a.json()["entry_id"] for a in answers)
