"""The public HTTP API: ingest and query. Handlers decode, call one service function, encode."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery

from app.errors import FieldProblem, InvalidEvent
from app.events import parse_time
from app.service import Services
from app.store import Query
from app.web import ingest

_encode = msgspec.json.Encoder().encode
AnyRequest = Request[Any, Any, Any]


def services(request: AnyRequest) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def single_parameters(request: AnyRequest) -> None:
    """Before every API handler: a query parameter given more than once is a 422 naming it, rather than
    one of its values taken silently (`type=a&type=b` read only `b`). The dashboard's forms send lists
    (`id=...&id=...`), so only /v1 is checked."""
    if not request.url.path.startswith("/v1/"):
        return
    counts = Counter(name for name, _ in request.query_params.multi_items())
    repeated = sorted(name for name, n in counts.items() if n > 1)
    if repeated:
        raise InvalidEvent([FieldProblem(f"/{name}", "given more than once: send it once") for name in repeated])


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(_encode(body), status_code=status, media_type="application/json", headers=headers)


@post("/v1/events", status_code=202, summary="Ingest one event (plain JSON, CloudEvents structured or binary)")
async def ingest_one(request: AnyRequest) -> Response[bytes]:
    # Production traffic is answered by app/web/ingest.py's fast path before routing; this handler
    # runs the same function (and documents the route in the OpenAPI schema).
    return await _ingest(request, ingest.ONE)


@post("/v1/events/batch", status_code=202, summary="Ingest a batch of events, all or none")
async def ingest_batch(request: AnyRequest) -> Response[bytes]:
    return await _ingest(request, ingest.BATCH)


async def _ingest(request: AnyRequest, path: str) -> Response[bytes]:
    answer = await ingest.ingest(services(request), path, request.headers, await request.body(),
                                 request.scope["headers"])
    headers = {k.decode(): v.decode() for k, v in answer.headers if k != b"content-type"}
    media = dict(answer.headers)[b"content-type"].decode()
    return Response(answer.body, status_code=answer.status, media_type=media, headers=headers)


@get("/v1/events", summary="Query the log by time range, type and source, newest first")
async def list_events(
    request: AnyRequest,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    type: FromQuery[str | None] = None,  # noqa: A002 - the CloudEvents attribute is called `type`
    source: FromQuery[str | None] = None,
    limit: FromQuery[int] = 100,
    cursor: FromQuery[str | None] = None,
    order: FromQuery[str] = "desc",
) -> Response[bytes]:
    problems: list[FieldProblem] = []
    if not 1 <= limit <= 1000:
        problems.append(FieldProblem("/limit", "must be between 1 and 1000"))
    if order not in ("asc", "desc"):
        problems.append(FieldProblem("/order", "must be asc or desc"))
    since_ms, until_ms = _time_range(since, until, problems)
    query = Query(
        since_ms=since_ms, until_ms=until_ms,
        type=type or None, source=source or None, limit=limit, newest_first=order == "desc", cursor=cursor,
    )
    if problems:
        raise InvalidEvent(problems)
    query.after()  # reject a bad cursor before touching Redis
    svc = services(request)
    scope = await svc.reader_scope(request.headers.get("authorization"))
    return _json(await svc.query(query, scope))


@get("/v1/events/{ident:str}", summary="One event by event id or stream entry id")
async def get_event(request: AnyRequest, ident: FromPath[str]) -> Response[bytes]:
    svc = services(request)
    scope = await svc.reader_scope(request.headers.get("authorization"))
    return _json(await svc.get_event(ident, scope))


def _time_range(since: str | int | None, until: str | int | None, problems: list[FieldProblem],
                within: str = "") -> tuple[int | None, int | None]:
    """`since` and `until` as milliseconds (see `_time_ms`)."""
    since_ms, until_ms = _time_ms(since, "since", problems, within), _time_ms(until, "until", problems, within)
    check_order(since_ms, until_ms, problems, within)
    return since_ms, until_ms


def check_order(since_ms: int | None, until_ms: int | None, problems: list[FieldProblem], within: str = "") -> None:
    """A range the wrong way round is a problem at `until`, as GET /v1/stats says: it used to select
    nothing, silently (`until` is exclusive, so `until == since` selects nothing too)."""
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        problems.append(FieldProblem(f"{within}/until", "must be after since"))


def _time_ms(value: str | int | None, name: str, problems: list[FieldProblem], within: str = "") -> int | None:
    """RFC 3339 or milliseconds since the epoch (a JSON body may give those as a number); a bad value
    is added to `problems` (its pointer under `within`, for a time inside a JSON body)."""
    try:
        return parse_time(value if value is None or isinstance(value, str) else str(value), name)
    except InvalidEvent as exc:
        problems.extend(FieldProblem(within + p.pointer, p.message, p.keyword) for p in exc.problems)
        return None


ROUTES = [ingest_one, ingest_batch, list_events, get_event]
