"""GET /v1/stats: event counts per time bucket for the dashboard's charts (read side of app.stats)."""

from __future__ import annotations

from litestar import Response, get
from litestar.params import FromQuery

from app.errors import FieldProblem, InvalidEvent
from app.stats import Stats
from app.web.api import AnyRequest, _json, _time_ms, services


def stats_reader(request: AnyRequest) -> Stats:
    """One reader per app, so its one-second cache is shared by every request."""
    state = request.app.state
    reader = state.get("stats")
    if reader is None:
        svc = services(request)
        reader = state["stats"] = Stats(svc.redis, svc.settings)
    return reader


@get("/v1/stats", summary="Events per time bucket: total, by type, by source; dead letters by group")
async def get_stats(
    request: AnyRequest,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    bucket: FromQuery[int] = 60,
) -> Response[bytes]:
    """`since`/`until`: RFC 3339 or ms since the epoch (default: the last hour); `bucket`: seconds,
    a multiple of 60. The operator token sees everything, a producer key only its own events."""
    problems: list[FieldProblem] = []
    since_ms, until_ms = _time_ms(since, "since", problems), _time_ms(until, "until", problems)
    if problems:
        raise InvalidEvent(problems)
    scope = await services(request).reader_scope(request.headers.get("authorization"))
    return _json(await stats_reader(request).series(since_ms, until_ms, bucket, scope))


ROUTES = [get_stats]
