"""Retention and archive API (operator API token): where trimming stands, and archive replays."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post

from app.errors import FieldProblem, InvalidEvent
from app.web.api import _json, _time_range
from app.web.operations import _decode, _operator

AnyRequest = Request[Any, Any, Any]


class ArchiveReplay(msgspec.Struct, forbid_unknown_fields=True):
    group: str
    since: str | int  # RFC 3339, or milliseconds since the epoch as a number or a string
    until: str | int | None = None


@get("/v1/retention", summary="Retention policy, per-partition state, and the groups holding trimming back")
async def retention_status(request: AnyRequest) -> Response[bytes]:
    svc = await _operator(request)
    return _json(await svc.retention.status())


@post("/v1/archive/replay", status_code=202, summary="Deliver archived events of a time range again to one group")
async def archive_replay(request: AnyRequest) -> Response[bytes]:
    svc = await _operator(request)
    body = _decode(await request.body(), ArchiveReplay)
    problems: list[FieldProblem] = []
    since_ms, until_ms = _time_range(body.since, body.until, problems)
    if problems or since_ms is None:
        raise InvalidEvent(problems or [FieldProblem("/since", "required")])
    queued = await svc.retention.replay(body.group, since_ms, until_ms)
    return _json({"group": body.group, "queued": queued}, 202)


ROUTES = [retention_status, archive_replay]
