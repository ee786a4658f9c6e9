"""Event types API: register types, add schema versions, read them, dry-run a sample event.

Reading and the dry run take any valid key (producers may look up the schemas they must follow);
validation failures are scoped like events (a producer key sees only its own); changes need the
operator API token.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
from litestar import Request, Response, get, post, put
from litestar.params import FromPath, FromQuery

from app.errors import FieldProblem, InvalidEvent
from app.events import is_json_media, media_type, parse_request
from app.schemas import SchemaConflict, TypeChange
from app.web.api import _json, services
from app.web.ingest import single_headers
from app.web.operations import _decode, _operator
from app.web.problems import problem

AnyRequest = Request[Any, Any, Any]

class NewVersion(msgspec.Struct, forbid_unknown_fields=True):
    """A schema version to add; `force` saves it even when recent events would fail it."""

    schema: dict[str, Any] | bool
    force: bool = False
    note: str = ""


async def _reader(request: AnyRequest) -> Any:
    svc = services(request)
    await svc.reader_scope(request.headers.get("authorization"))
    return svc


def _conflict(request: AnyRequest, exc: SchemaConflict) -> Response[bytes]:
    return problem(request, exc.status, exc.title, exc.detail, recent_check=msgspec.to_builtins(exc.check))


@get("/v1/event-types", summary="Registered event types with their current schema version and mode")
async def list_types(request: AnyRequest) -> Response[bytes]:
    svc = await _reader(request)
    return _json({"types": await svc.schemas.registered()})


@get("/v1/event-types/{name:str}", summary="One event type with its current schema")
async def get_type(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    svc = await _reader(request)
    found = await svc.schemas.get(name)
    current = await svc.schemas.version(name, found.version) if found.version else None
    return _json({"type": found, "schema": current})


@put("/v1/event-types/{name:str}", summary="Register or update an event type (a `schema` adds a version)")
async def put_type(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    svc = await _operator(request)
    change = _decode(await request.body(), TypeChange)
    try:
        registered, version = await svc.schemas.register(name, change)
    except SchemaConflict as exc:
        return _conflict(request, exc)
    return _json({"type": registered, "version": version})


@post("/v1/event-types/{name:str}/schemas", status_code=201,
      summary="Add a schema version, tested first against the type's most recent stored events")
async def add_version(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    svc = await _operator(request)
    body = _decode(await request.body(), NewVersion)
    try:
        version = await svc.schemas.add_version(name, body.schema, force=body.force, note=body.note)
    except SchemaConflict as exc:
        return _conflict(request, exc)
    return _json(version, 201)


@get("/v1/event-types/{name:str}/schemas", summary="Every schema version of an event type, oldest first")
async def list_versions(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    svc = await _reader(request)
    return _json({"versions": await svc.schemas.versions(name)})


@get("/v1/event-types/{name:str}/schemas/{version:int}", summary="One schema version")
async def get_version(request: AnyRequest, name: FromPath[str], version: FromPath[int]) -> Response[bytes]:
    svc = await _reader(request)
    return _json(await svc.schemas.version(name, version))


@get("/v1/event-types/{name:str}/failures",
     summary="Validation failures of a type: counts and the latest ones (a producer key: its own only)")
async def failures(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    svc = services(request)
    scope = await svc.reader_scope(request.headers.get("authorization"))
    recent = await svc.schemas.recent_failures(name)
    if scope is None:
        counts = (await svc.schemas.failure_counts()).get(name, {})
    else:
        # A failure names its source and event id. The counters are per type, not per source, so a
        # producer's counts are those of its own failures among the recent ones (as /v1/stats does
        # for dead letters).
        recent = [f for f in recent if f.source == scope]
        counts = dict(Counter(f.outcome for f in recent))
    return _json({"counts": counts, "recent": recent})


@post("/v1/event-types/{name:str}/validate", status_code=200,
      summary="Dry run: check a sample event (as it would be POSTed to /v1/events) without storing it")
async def validate(request: AnyRequest, name: FromPath[str], version: FromQuery[int | None] = None) -> Response[bytes]:
    single_headers(request.scope["headers"])
    svc = await _reader(request)
    body = await request.body()
    content_type = request.headers.get("content-type") or "application/json"
    if "ce-specversion" not in request.headers and is_json_media(media_type(content_type)):
        body = _with_type(body, name)
        if media_type(content_type) != "application/cloudevents+json":
            content_type = "application/json"
    events, is_batch = parse_request(body, content_type, request.headers)
    if is_batch or events[0].type != name:
        raise InvalidEvent([FieldProblem("/type", f"send one event of type {name!r}")])
    return _json(await svc.schemas.dry_run(events[0], version))


def _with_type(body: bytes, name: str) -> bytes:
    """A sample may leave out `type`: the path names it."""
    try:
        sample = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return body  # parse_request reports it (400: not JSON, not UTF-8, nested too deeply)
    if isinstance(sample, dict) and "type" not in sample:
        return msgspec.json.encode({"type": name, **sample})
    return body


ROUTES = [list_types, get_type, put_type, add_version, list_versions, get_version, failures, validate]
