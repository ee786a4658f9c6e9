"""The ingest path end to end against the real server: post, read back, look up by id."""

from __future__ import annotations

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
