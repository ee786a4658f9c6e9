"""The ingest path end to end against the real server: post, read back, look up by id."""

from __future__ import annotations

import sys
from typing import Any

from litestar.testing import AsyncTestClient

JSON = {"Content-Type": "application/json"}


async def test_posted_event_is_enriched_and_readable(client: AsyncTestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    resp = await client.post("/v1/events", content=b'{"type":"order.created","data":{"amount":3}}',
                             headers={**auth, **JSON})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["duplicate"] is False
    got = await client.get(f"/v1/events/{body['id']}", headers=auth)
    assert got.status_code == 200, got.text
    event = got.json()["event"]
    assert event["source"] == "billing"
    assert event["data"] == {"amount": 3}
    assert event["specversion"] == "1.0"
    assert event["time"].endswith("Z")
    assert event["traceparent"].startswith("00-")
    assert got.json()["entry_id"] == body["entry_id"]


async def test_a_made_event_id_is_a_uuid7_that_finds_its_entry_without_a_lookup_key(
    client: AsyncTestClient, auth: dict[str, str], redis: Any, settings: Any  # type: ignore[type-arg]
) -> None:
    import uuid

    from app.ids import made_entry
    from app.keys import Keys

    posted = [
        (await client.post("/v1/events", content=b'{"type":"t"}', headers={**auth, **JSON})).json()
        for _ in range(20)
    ]
    for body in posted:
        assert uuid.UUID(body["id"]).version == 7
        assert made_entry(body["id"]) == (0, body["entry_id"])
        assert not await redis.exists(Keys(settings.prefix).event_id(0, body["id"]))
        got = await client.get(f"/v1/events/{body['id']}", headers=auth)
        assert got.json()["entry_id"] == body["entry_id"]
    assert len({b["id"] for b in posted}) == 20
    # A producer's own UUIDv7 that happens to decode to an entry is not mistaken for it.
    own = str(uuid.UUID(posted[0]["id"]))[:-8] + "00000000"
    assert (await client.get(f"/v1/events/{own}", headers=auth)).status_code == 404


async def test_the_production_entry_point_answers_ingest_outside_litestar(
    settings: Any, producer_key: str, monkeypatch: Any
) -> None:
    import httpx

    from app.web import GIL_SWITCH_INTERVAL_S, create_app_from_env
    from app.web.ingest import IngestFastPath
    from tests.conftest import running

    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("EVENTFLOW_PREFIX", settings.prefix)
    switched: list[float] = []  # the web process's GIL switch interval (not this test process's)
    monkeypatch.setattr(sys, "setswitchinterval", switched.append)
    asgi = create_app_from_env()
    assert isinstance(asgi, IngestFastPath)
    assert switched == [GIL_SWITCH_INTERVAL_S]
    async with running(asgi.litestar), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi), base_url="http://testserver"
    ) as c:
        auth = {"Authorization": f"Bearer {producer_key}", **JSON}
        posted = await c.post("/v1/events", content=b'{"type":"t","data":[1]}', headers=auth)
        assert posted.status_code == 202, posted.text
        assert posted.headers["x-content-type-options"] == "nosniff"
        bad = await c.post("/v1/events/batch", content=b'[{"data":1}]', headers=auth)
        assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/events/0/type"
        got = await c.get(f"/v1/events/{posted.json()['id']}", headers=auth)  # through Litestar
        assert got.json()["event"]["data"] == [1]
