"""Probes, and Redis outages: 503 with Retry-After while Redis is away, recovery without a restart."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.connections import connect
from app.embedded import EmbeddedServer
from app.service import Services
from app.settings import Settings
from tests.integration.helpers import assert_problem

Client = AsyncTestClient[Litestar]
MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


async def producer_on(server: EmbeddedServer, settings: Settings) -> dict[str, str]:
    redis = connect(settings.replace(redis_url=server.url))
    try:
        key = (await Services(redis, settings).producers.create("billing")).key
    finally:
        await redis.aclose()
    return {"Authorization": f"Bearer {key}"}


async def test_healthz_answers_ok(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


async def test_readyz_answers_ready_when_redis_answers(client: Client) -> None:
    resp = await client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready"}


async def test_the_openapi_schema_lists_the_api(client: Client) -> None:
    resp = await client.get("/schema/openapi.json")
    assert resp.status_code == 200
    assert {"/v1/events", "/v1/events/batch", "/v1/events/{ident}", "/healthz", "/readyz"} <= set(resp.json()["paths"])


async def test_redis_down_is_503_with_retry_after_then_recovers_by_itself(
    make_client: MakeClient, own_server: EmbeddedServer, settings: Settings
) -> None:
    auth = await producer_on(own_server, settings)
    async with make_client(redis_url=own_server.url, retry_after_s=7) as c:
        before = await c.post("/v1/events", json={"type": "t", "id": "before"}, headers=auth)
        assert before.status_code == 202, before.text

        own_server.stop()
        for resp in (
            await c.post("/v1/events", json={"type": "t", "id": "during"}, headers=auth),
            await c.post("/v1/events/batch", json=[{"type": "t"}], headers=auth),
            await c.get("/v1/events", headers=auth),
            await c.get("/v1/events/before", headers=auth),
            await c.get("/readyz"),
        ):
            body = assert_problem(resp, 503)
            assert resp.headers["retry-after"] == "7"
            assert body["retry_after"] == 7
        assert (await c.get("/healthz")).status_code == 200

        own_server.start()  # same data dir, same port; the app is not restarted
        assert (await c.get("/readyz")).status_code == 200
        after = await c.post("/v1/events", json={"type": "t", "id": "after"}, headers=auth)
        assert after.status_code == 202, after.text
        listed = (await c.get("/v1/events", headers=auth)).json()["events"]
        assert [r["event"]["id"] for r in listed] == ["after", "before"]


async def test_a_stalled_redis_is_503_within_the_timeout(
    make_client: MakeClient, own_server: EmbeddedServer, settings: Settings
) -> None:
    auth = await producer_on(own_server, settings)
    assert own_server.process is not None
    async with make_client(redis_url=own_server.url, redis_timeout_s=0.5) as c:
        assert (await c.post("/v1/events", json={"type": "t"}, headers=auth)).status_code == 202
        os.kill(own_server.process.pid, signal.SIGSTOP)
        try:
            resp = await c.post("/v1/events", json={"type": "t", "id": "stalled"}, headers=auth)
            assert_problem(resp, 503)
            assert "retry-after" in resp.headers
        finally:
            os.kill(own_server.process.pid, signal.SIGCONT)
        again = await c.post("/v1/events", json={"type": "t", "id": "stalled"}, headers=auth)
        assert again.status_code == 202, again.text


async def test_the_app_starts_while_redis_is_down_and_serves_once_it_is_up(
    make_client: MakeClient, own_server: EmbeddedServer, settings: Settings
) -> None:
    auth = await producer_on(own_server, settings)
    own_server.stop()
    async with make_client(redis_url=own_server.url) as c:
        assert_problem(await c.post("/v1/events", json={"type": "t"}, headers=auth), 503)
        own_server.start()
        resp = await c.post("/v1/events", json={"type": "t"}, headers=auth)
        assert resp.status_code == 202, resp.text
