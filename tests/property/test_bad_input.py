"""Hostile bodies, one by one: deep nesting, huge numbers, invalid UTF-8, odd content types, oversize.
Each is refused with the right problem+json and leaves the log as it was.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.settings import Settings
from tests.property.conftest import log_unchanged
from tests.property.test_envelope import assert_problem

DEEP = 2_000  # msgspec gives up near Python's recursion limit (~1,000 levels)


def case(name: str, body: bytes, content_type: str | None = "application/json", status: int = 400, *,
         path: str = "/v1/events", headers: dict[str, str] | None = None, pointer: str | None = None) -> Any:
    return pytest.param(path, body, content_type, status, headers or {}, pointer, id=name)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


EVENT = b'{"type":"order.created"}'
CASES = [
    case("deep nesting in data", b'{"type":"t","data":' + nested(DEEP) + b"}"),
    case("deep nesting in a batch", b'[{"type":"t","data":' + nested(DEEP) + b"}]", path="/v1/events/batch"),
    case("invalid UTF-8 in an attribute", b'{"type":"\xff\xfe"}'),
    case("invalid UTF-8 in a batch", b'[{"type":"\xc3\x28"}]', path="/v1/events/batch"),
    case("invalid UTF-8 in data", b'{"type":"t","data":{"name":"\xed\xa0\x80"}}'),
    case("overlong UTF-8 in a data key", b'{"type":"t","data":{"\xc0\xaf":1}}'),
    case("a lone surrogate escape", b'{"type":"t","data":"\\ud800"}'),
    case("NaN", b'{"type":"t","data":NaN}'),
    case("Infinity", b'{"type":"t","data":[Infinity]}'),
    case("a number beyond a double", b'{"type":"t","data":{"n":1e400}}', status=422, pointer="/data"),
    case("an integer of 5,000 digits", b'{"type":"t","data":' + b"9" * 5000 + b"}", status=422, pointer="/data"),
    case("an extension integer beyond 32 bits", b'{"type":"t","seq":4294967296}', status=422, pointer="/seq"),
    case("an extension integer beyond 64 bits", b'{"type":"t","seq":' + b"9" * 30 + b"}", status=422,
         pointer="/seq"),
    case("an empty body", b""),
    case("trailing bytes", EVENT + b" {}"),
    case("a JSON string", b'"order.created"', status=422, pointer="/"),
    case("a number as the type", b'{"type":7}', status=422, pointer="/type"),
    case("an object in an extension", b'{"type":"t","tenant":{"id":1}}', status=422, pointer="/tenant"),
    case("no content type", EVENT, None, 415),
    case("text/plain", EVENT, "text/plain", 415),
    case("XML", b"<event type='t'/>", "application/xml", 415),
    case("a form", b"type=t", "application/x-www-form-urlencoded", 415),
    case("octet-stream", EVENT, "application/octet-stream", 415),
    case("two content types", EVENT, "application/json, text/plain", 415),
    case("a batch content type holding one object", EVENT, "application/cloudevents-batch+json", 422,
         pointer="/events"),
    case("an empty batch", b"[]", path="/v1/events/batch", status=422, pointer="/events"),
    case("a batch over EVENTFLOW_MAX_BATCH", b"[" + b",".join([EVENT] * 1001) + b"]", path="/v1/events/batch",
         status=413),
    case("a body over EVENTFLOW_MAX_BODY_BYTES", b'{"type":"t","data":"' + b"x" * 1_048_576 + b'"}', status=413),
    case("a bad time in a batch names its event", b'[{"type":"a"},{"type":"a","time":"yesterday"}]',
         path="/v1/events/batch", status=422, pointer="/events/1/time"),
    case("binary mode, a body that is not JSON", b"{not json", headers={"ce-specversion": "1.0", "ce-type": "t"}),
    case("binary mode, text that is not UTF-8", b"caf\xe9", "text/plain; charset=utf-8", 422,
         headers={"ce-specversion": "1.0", "ce-type": "t"}, pointer="/data"),
    case("binary mode, no type", b"{}", status=422, headers={"ce-specversion": "1.0"}, pointer="/type"),
    case("binary mode, a bad specversion", b"{}", status=422, headers={"ce-specversion": "0.3", "ce-type": "t"},
         pointer="/specversion"),
]


@pytest.mark.parametrize(("path", "body", "content_type", "status", "headers", "pointer"), CASES)
async def test_hostile_input_is_refused_with_the_right_problem_and_stores_nothing(
    api: httpx.AsyncClient, redis: Redis, settings: Settings, path: str, body: bytes, content_type: str | None,
    status: int, headers: dict[str, str], pointer: str | None,
) -> None:
    sent = {**headers, **({"Content-Type": content_type} if content_type else {})}
    async with log_unchanged(redis, settings):
        resp = await api.post(path, content=body, headers=sent)
    assert resp.status_code == status, resp.text[:300]
    problem = assert_problem(resp, path)
    if pointer is not None:
        assert pointer in {e["pointer"] for e in problem["errors"]}, problem


async def test_reasonable_nesting_is_stored_and_read_back_whole(api: httpx.AsyncClient) -> None:
    data: Any = {"leaf": [1.5, -2, "x", None, True]}
    for n in range(100):
        data = {f"level{n}": data} if n % 2 else [data]
    resp = await api.post("/v1/events", content=json.dumps({"type": "deep", "data": data}).encode(),
                          headers={"Content-Type": "application/json"})
    assert resp.status_code == 202, resp.text
    got = await api.get(f"/v1/events/{resp.json()['entry_id']}")
    assert got.json()["event"]["data"] == data
