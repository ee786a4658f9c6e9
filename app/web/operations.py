"""Operator API: consumer groups, dead letters and replays (operator API token only)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery

from app.connections import redis_errors
from app.deadletters import Filter
from app.errors import FieldProblem, InvalidEvent, MalformedBody
from app.web.api import _json, _time_ms, _time_range, check_order, services
from app.web.problems import field_problem

AnyRequest = Request[Any, Any, Any]


class SelectionFilter(msgspec.Struct, forbid_unknown_fields=True):
    """The filter of a bulk action: the list's query parameters, as JSON. Strict: a misspelt or
    unknown key is a 422, never a filter that quietly matches more than was meant."""

    group: str | None = None
    type: str | None = None
    source: str | None = None
    since: str | None = None
    until: str | None = None
    since_ms: int | None = None  # the names this filter had first (milliseconds since the epoch)
    until_ms: int | None = None


class Selection(msgspec.Struct, forbid_unknown_fields=True):
    """Which dead letters a bulk action applies to: explicit ids, all matching a filter, or all."""

    ids: list[str] | None = None
    filter: SelectionFilter | None = None
    all: bool = False

    def to_filter(self) -> Filter:
        given = self.filter or SelectionFilter()
        if self.filter is not None and given == SelectionFilter():
            raise InvalidEvent([FieldProblem("/filter", 'an empty filter selects every dead letter: send "all": '
                                             "true for that, or name a group, type, source, since or until")])
        problems: list[FieldProblem] = []
        since_ms = _time_ms(given.since, "since", problems, "/filter") if given.since is not None else given.since_ms
        until_ms = _time_ms(given.until, "until", problems, "/filter") if given.until is not None else given.until_ms
        check_order(since_ms, until_ms, problems, "/filter")
        flt = Filter(group=given.group, type=given.type, source=given.source, since_ms=since_ms, until_ms=until_ms)
        if problems:
            raise InvalidEvent(problems)
        return flt


class HistoryReplay(msgspec.Struct, forbid_unknown_fields=True):
    group: str
    since: str | int  # RFC 3339, or milliseconds since the epoch as a number or a string
    until: str | int | None = None


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidEvent([field_problem(str(exc))]) from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from None


async def _operator(request: AnyRequest) -> Any:
    svc = services(request)
    await svc.require_operator(request.headers.get("authorization"))
    return svc


@get("/v1/consumers", summary="Consumer groups with their consumers, pending entries and lag")
async def list_consumers(request: AnyRequest) -> Response[bytes]:
    svc = await _operator(request)
    async with redis_errors(svc.settings):
        groups = await svc.lifecycle.groups()
        dead = await svc.dead_letters.count()
    return _json({"groups": [{**msgspec.structs.asdict(g), "dead_letters": dead.get(g.name, 0)} for g in groups]})


@get("/v1/dead-letters", summary="Dead letters, newest first, filtered by group, type, source and time")
async def list_dead_letters(
    request: AnyRequest,
    group: FromQuery[str | None] = None,
    type: FromQuery[str | None] = None,  # noqa: A002 - the CloudEvents attribute name
    source: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    limit: FromQuery[int] = 100,
) -> Response[bytes]:
    problems: list[FieldProblem] = []
    since_ms, until_ms = _time_range(since, until, problems)
    flt = Filter(group=group, type=type, source=source, since_ms=since_ms, until_ms=until_ms)
    if not 1 <= limit <= 1000:
        problems.append(FieldProblem("/limit", "must be between 1 and 1000"))
    if problems:
        raise InvalidEvent(problems)
    svc = await _operator(request)
    async with redis_errors(svc.settings):
        return _json({"dead_letters": await svc.dead_letters.list(flt, limit)})


@get("/v1/dead-letters/{ident:str}", summary="One dead letter with the original event and its last error")
async def get_dead_letter(request: AnyRequest, ident: FromPath[str]) -> Response[bytes]:
    svc = await _operator(request)
    async with redis_errors(svc.settings):
        return _json(await svc.dead_letters.get(ident))


async def _selected(request: AnyRequest) -> tuple[Any, list[str]]:
    svc = await _operator(request)
    sel = _decode(await request.body(), Selection)
    if sel.ids is None and sel.filter is None and not sel.all:
        raise InvalidEvent([FieldProblem("/ids", 'send "ids", a "filter", or "all": true')])
    async with redis_errors(svc.settings):
        ids = sel.ids if sel.ids is not None else await svc.dead_letters.matching_ids(sel.to_filter())
    return svc, ids


@post("/v1/dead-letters/replay", status_code=200, summary="Deliver dead letters again to the group they failed in")
async def replay_dead_letters(request: AnyRequest) -> Response[bytes]:
    svc, ids = await _selected(request)
    async with redis_errors(svc.settings):
        replayed = await svc.dead_letters.replay(ids)
    return _json({"selected": len(ids), "replayed": replayed})


@post("/v1/dead-letters/discard", status_code=200, summary="Delete dead letters for good")
async def discard_dead_letters(request: AnyRequest) -> Response[bytes]:
    svc, ids = await _selected(request)
    async with redis_errors(svc.settings):
        discarded = await svc.dead_letters.discard(ids)
    return _json({"selected": len(ids), "discarded": discarded})


@post("/v1/replay", status_code=202, summary="Deliver a time range of the log again to one consumer group")
async def replay_history(request: AnyRequest) -> Response[bytes]:
    svc = await _operator(request)
    body = _decode(await request.body(), HistoryReplay)
    problems: list[FieldProblem] = []
    since_ms, until_ms = _time_range(body.since, body.until, problems)
    if problems or since_ms is None:
        raise InvalidEvent(problems or [FieldProblem("/since", "required")])
    async with redis_errors(svc.settings):
        queued = await svc.dead_letters.replay_history(body.group, since_ms, until_ms)
    return _json({"group": body.group, "queued": queued}, 202)


ROUTES = [list_consumers, list_dead_letters, get_dead_letter, replay_dead_letters, discard_dead_letters,
          replay_history]
