"""Error monitoring API: failure groups per consumer (operator API token only)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath, FromQuery

from app.connections import redis_errors
from app.errors import FieldProblem, InvalidEvent, NotFound
from app.web.api import _json, services

AnyRequest = Request[Any, Any, Any]


@get("/v1/errors", summary="Failures grouped by consumer, exception type and normalized message, latest first")
async def list_errors(
    request: AnyRequest, consumer: FromQuery[str | None] = None, limit: FromQuery[int] = 100
) -> Response[bytes]:
    if not 1 <= limit <= 1000:
        raise InvalidEvent([FieldProblem("/limit", "must be between 1 and 1000")])
    svc = services(request)
    await svc.require_operator(request.headers.get("authorization"))
    async with redis_errors(svc.settings):
        return _json({"errors": await svc.error_groups(consumer, limit)})


@get("/v1/errors/{ident:str}", summary="One error group with its sample event ids")
async def get_error(request: AnyRequest, ident: FromPath[str]) -> Response[bytes]:
    svc = services(request)
    await svc.require_operator(request.headers.get("authorization"))
    async with redis_errors(svc.settings):
        group = await svc.errors.get(ident)
    if group is None:
        raise NotFound(f"no error group {ident!r} (groups expire after EVENTFLOW_ATTEMPTS_TTL_S without failures)")
    return _json(group)


ROUTES = [list_errors, get_error]
