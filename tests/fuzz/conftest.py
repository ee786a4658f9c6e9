"""The fuzzer's target: the web process under granian (the production command) on the session's Valkey,
with an operator token and a producer key, and the API's own OpenAPI document.

The document is fetched from `/schema/openapi.json`. The routes read their bodies themselves (raw
bytes, decoded by msgspec), so Litestar describes no request body for them; without one schemathesis
would send none. `with_request_bodies` adds the bodies the handlers actually decode, built from the
same msgspec structs (and a hand-written CloudEvent schema for ingest). The equivalent change in the
app itself is in docs/security.md ("Fuzzing").
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from redis.asyncio import Redis

from app.embedded import EmbeddedServer
from app.producers import Producers
from app.schemas import TypeChange
from app.web.operations import HistoryReplay, Selection
from app.web.retention import ArchiveReplay
from app.web.types import NewVersion
from app.webhooks import SubscriptionIn, SubscriptionPatch
from tests.fault.stack import OPERATOR_TOKEN, Stack

JSON_TYPES = ("application/json", "application/cloudevents+json", "application/cloudevents-batch+json")
STRING = {"type": "string", "minLength": 1, "maxLength": 64}
# What ingest accepts, as precisely as JSON Schema says it, so most positive cases reach the append.
EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": STRING, "id": STRING, "source": {"const": "fuzzer"}, "subject": STRING,
        "time": {"type": "string", "format": "date-time"},
        "datacontenttype": {"enum": ["application/json", "text/plain", "application/vnd.acme+json"]},
        "dataschema": STRING, "traceparent": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$"},
        "specversion": {"const": "1.0"}, "data": {},
        "data_base64": {"type": "string", "pattern": "^([A-Za-z0-9+/]{4})*$"},
    },
    "patternProperties": {"^[a-z0-9]{1,20}$": {"oneOf": [{"type": "string", "maxLength": 64}, {"type": "boolean"},
                                                         {"type": "integer", "minimum": -(2**31),
                                                          "maximum": 2**31 - 1}]}},
    "additionalProperties": False,
    "not": {"required": ["data", "data_base64"]},  # one or the other
}
BATCH = {"oneOf": [{"type": "array", "items": EVENT, "maxItems": 20},
                   {"type": "object", "required": ["events"],
                    "properties": {"events": {"type": "array", "items": EVENT, "maxItems": 20}}}]}
STRUCTS: dict[tuple[str, str], type[Any]] = {
    ("post", "/v1/webhooks"): SubscriptionIn,
    ("patch", "/v1/webhooks/{ident}"): SubscriptionPatch,
    ("post", "/v1/dead-letters/replay"): Selection,
    ("post", "/v1/dead-letters/discard"): Selection,
    ("post", "/v1/replay"): HistoryReplay,
    ("post", "/v1/archive/replay"): ArchiveReplay,
    ("put", "/v1/event-types/{name}"): TypeChange,
    ("post", "/v1/event-types/{name}/schemas"): NewVersion,
}
INLINE: dict[tuple[str, str], dict[str, dict[str, Any]]] = {  # (method, path) -> media type -> schema
    ("post", "/v1/events"): {"application/json": EVENT, "application/cloudevents+json": EVENT,
                             "application/cloudevents-batch+json": BATCH},
    ("post", "/v1/events/batch"): dict.fromkeys(JSON_TYPES, BATCH),
    ("post", "/v1/event-types/{name}/validate"): {"application/json": EVENT},
}


def with_request_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the request bodies the handlers decode. (No security scheme: the test
    sends the right credential per route itself, or none.)"""
    doc = copy.deepcopy(document)
    refs, components = msgspec.json.schema_components(list(STRUCTS.values()),
                                                      ref_template="#/components/schemas/{name}")
    doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
    bodies = {key: {"application/json": ref} for key, ref in zip(STRUCTS, refs, strict=True)}
    bodies.update(INLINE)
    for (method, path), by_media in bodies.items():
        doc["paths"][path][method]["requestBody"] = {
            "required": True, "content": {media: {"schema": schema} for media, schema in by_media.items()}}
    return doc


class Target(msgspec.Struct):
    url: str
    producer_key: str
    operator_token: str


@pytest.fixture(scope="module")
def fuzz_target(redis_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("fuzz")
    stack = Stack(server=redis_server, folder=Path(folder), prefix=f"fz{uuid.uuid4().hex[:8]}")

    async def start() -> str:
        redis = Redis.from_url(redis_server.url)
        try:
            key = (await Producers(redis, stack.settings).create("fuzzer")).key
        finally:
            await redis.aclose()
        await stack.start_web()
        return key

    try:
        key = asyncio.run(start())
        yield Target(stack.url, key, OPERATOR_TOKEN)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_target: Target) -> Any:
    document = httpx.get(f"{fuzz_target.url}/schema/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(with_request_bodies(document))
    schema.config.update(base_url=fuzz_target.url, request_timeout=10)
    schema.config.generation.update(modes=["positive", "negative"], allow_x00=False)
    return schema
