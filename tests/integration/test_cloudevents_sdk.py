"""A real CloudEvents client (the `cloudevents` PyPI SDK) talks to the ingest API in both modes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudevents.v1.conversion import to_binary, to_structured
from cloudevents.v1.http import CloudEvent, from_json
from litestar import Litestar
from litestar.testing import AsyncTestClient

Client = AsyncTestClient[Litestar]

# The SDK sends header values as they are (no percent-encoding), so attributes stay printable ASCII.
CASES: list[tuple[str, dict[str, Any], Any]] = [
    ("json", {"type": "com.example.order.created", "subject": "order-7", "datacontenttype": "application/json",
              "dataschema": "https://schemas.example/order.json", "tenant": "acme", "priority": "3"},
     {"amount": 3.5, "items": ["a", "b"], "gift": False}),
    ("binary", {"type": "com.example.file.uploaded", "datacontenttype": "application/octet-stream"},
     bytes(range(256))),
]


@pytest.mark.parametrize("mode", ["structured", "binary"])
@pytest.mark.parametrize(("kind", "attributes", "data"), CASES, ids=[c[0] for c in CASES])
async def test_events_sent_with_the_sdk_read_back_with_every_attribute_equal(
    client: Client, auth: dict[str, str], mode: str, kind: str, attributes: dict[str, Any], data: Any
) -> None:
    sent = CloudEvent({**attributes, "source": "billing"}, data)
    headers, body = (to_structured if mode == "structured" else to_binary)(sent)
    resp = await client.post("/v1/events", content=body, headers={**auth, **headers})
    assert resp.status_code == 202, resp.text
    assert resp.json()["id"] == sent["id"]

    got = await client.get(f"/v1/events/{sent['id']}", headers=auth)
    assert got.status_code == 200, got.text
    record = got.json()
    assert record["direct"] is False
    # Parse what the API returns with the SDK's own JSON event format reader (data_base64 included).
    received = from_json(json.dumps(record["event"]))
    sent_attrs = dict(sent.get_attributes())
    received_attrs = dict(received.get_attributes())
    # EventFlow adds only the W3C trace context extension; everything the SDK sent comes back as sent.
    assert set(received_attrs) - set(sent_attrs) == {"traceparent"}
    assert {k: received_attrs[k] for k in sent_attrs} == sent_attrs
    assert received.get_data() == data


async def test_a_structured_sdk_event_without_source_gets_the_producers_source(
    client: Client, auth: dict[str, str]
) -> None:
    # The SDK requires a source; a producer may also send none and let EventFlow fill it in.
    sent = CloudEvent({"type": "t", "source": "billing"}, {"x": 1})
    _, body = to_structured(sent)
    stripped = body.replace(b'"source": "billing", ', b"")
    assert b"source" not in stripped
    resp = await client.post("/v1/events", content=stripped,
                             headers={**auth, "Content-Type": "application/cloudevents+json"})
    assert resp.status_code == 202, resp.text
    got = await client.get(f"/v1/events/{sent['id']}", headers=auth)
    assert from_json(json.dumps(got.json()["event"]))["source"] == "billing"
