"""Read-only pages: overview, events (list, search, detail with its trace) and consumers. Each handler
asks the service layer for data, builds a view context with a function that the live partials share,
and renders the page."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Response, get
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect

from app.archive import encode_cursor, entry_key
from app.errors import FieldProblem, InvalidEvent, NotFound
from app.events import parse_time
from app.retention import Holdback
from app.service import EventDetail, Services
from app.settings import Settings
from app.store import Query
from app.web.api import services
from app.web.dashboard import charts
from app.web.dashboard.render import AnyRequest, event_url, number, page, period, picker_time, query_url, render
from app.web.dashboard.trace import trace_of

PAGE_SIZE = 50
_LOCAL_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")  # <input type=datetime-local>


# -- overview -------------------------------------------------------------------------------------
async def overview_context(svc: Services) -> dict[str, Any]:
    overview = await svc.overview()
    rate = await charts.event_rate(svc)
    held = held_groups(await svc.retention_held_back())
    return {"overview": overview, "chart": rate, "held": held, "policy": retention_policy(svc.settings)}


class HeldGroup(msgspec.Struct, kw_only=True):
    """A consumer group holding retention back, over the partitions where it does."""

    group: str
    partitions: list[int]
    overdue_s: float  # how far past the age limit the oldest entries it keeps are (the worst partition)
    excess_entries: int  # entries over the size limit, summed over those partitions
    pending: int
    lag: int | None


def held_groups(held: list[Holdback]) -> list[HeldGroup]:
    """Per-partition hold-backs summed per group, the group holding back most first."""
    out: dict[str, HeldGroup] = {}
    for h in held:
        g = out.setdefault(h.group, HeldGroup(group=h.group, partitions=[], overdue_s=0.0, excess_entries=0,
                                              pending=0, lag=0))
        g.partitions.append(h.partition)
        g.overdue_s = max(g.overdue_s, h.overdue_s)
        g.excess_entries += h.excess_entries
        g.pending += h.pending
        g.lag = None if g.lag is None or h.lag is None else g.lag + h.lag
    return sorted(out.values(), key=lambda g: (-g.overdue_s, -g.excess_entries, g.group))


def retention_policy(settings: Settings) -> str:
    """`keep 7 d, at most 100 000 entries per partition`: the policy in words ("" when there is none)."""
    parts = [f"keep {period(settings.retention_s)}"] if settings.retention_s else []
    if settings.retention_max_entries:
        parts.append(f"at most {number(settings.retention_max_entries)} entries per partition")
    return ", ".join(parts)


def overview_partial(context: dict[str, Any]) -> str:
    return render("_overview_live.html", **context)


@get("/", include_in_schema=False)
async def overview_page(request: AnyRequest) -> Response[str]:
    return page(request, "overview.html", nav="overview", **await overview_context(services(request)))


# -- events ---------------------------------------------------------------------------------------
def form_time(value: str | None, name: str, problems: list[str]) -> int | None:
    """A time from a filter form: RFC 3339, ms since the epoch, or a datetime-local value (UTC)."""
    if not value:
        return None
    text = value.strip()
    if _LOCAL_TIME.match(text):
        text = text + (":00" if len(text) == 16 else "") + "Z"
    try:
        return parse_time(text, name)
    except InvalidEvent:
        problems.append(f"{name.capitalize()}: “{value}” is not a time (use the picker, or RFC 3339).")
        return None


@get("/events", include_in_schema=False)
async def events_page(
    request: AnyRequest, type: FromQuery[str | None] = None,  # noqa: A002 - the CloudEvents attribute
    source: FromQuery[str | None] = None, since: FromQuery[str | None] = None, until: FromQuery[str | None] = None,
    cursor: FromQuery[str | None] = None, id: FromQuery[str | None] = None,  # noqa: A002 - the event's id
) -> Response[Any]:
    svc = services(request)
    filters = {"type": type or None, "source": source or None, "since": since or None, "until": until or None}
    problems: list[str] = []
    if id and id.strip():
        try:
            found = await svc.get_event(id.strip(), None)
            return Redirect(event_url(found.entry_id), status_code=303)
        except NotFound:
            problems.append(f"No event with id “{id.strip()}”. Ids are found within the idempotency window; "
                            "older events can be found by time.")
    since_ms, until_ms = form_time(since, "since", problems), form_time(until, "until", problems)
    # One more than a page: when the log holds exactly a page more, there is no "Older" page to offer.
    query = Query(type=filters["type"], source=filters["source"], since_ms=since_ms, until_ms=until_ms,
                  limit=PAGE_SIZE + 1, cursor=cursor or None)
    events, next_cursor = [], None
    # Taken before the query, the feed's starting point leaves no gap between the page and the feed
    # (the page's script skips rows it already has).
    tail = await svc.live.tail_cursor() if not cursor and not until else None
    try:
        query.after()
        result = await svc.query(query, None)
        events, next_cursor = result.events[:PAGE_SIZE], result.next_cursor
        if len(result.events) > PAGE_SIZE:
            last = events[-1]
            next_cursor = encode_cursor(entry_key(last.entry_id, last.partition))
    except InvalidEvent as exc:
        problems += [_problem_text(p) for p in exc.problems]
    live = not cursor and not until and not problems
    return page(
        request, "events.html", nav="events", events=events, filters=filters, problems=problems,
        picker={"since": picker_time(since_ms), "until": picker_time(until_ms)},
        search_id=id or "", older_url=query_url("/events", **filters, cursor=next_cursor) if next_cursor else None,
        newest_url=query_url("/events", **filters) if cursor else None,
        live_url=query_url("/live/events", type=filters["type"], source=filters["source"], cursor=tail)
        if live else None,
    )


def _problem_text(problem: FieldProblem) -> str:
    return f"{problem.pointer.strip('/') or 'request'}: {problem.message}"


def lifecycle_context(detail: EventDetail) -> dict[str, Any]:
    terminal = {"succeeded", "dead-lettered", "skipped"}
    return {"detail": detail, "settled": all(d.state in terminal for d in detail.deliveries),
            "trace": trace_of(detail)}


def lifecycle_partial(detail: EventDetail) -> str:
    """The event page's live part: the lifecycle and the trace (both change as deliveries happen)."""
    return render("_event_live.html", **lifecycle_context(detail))


@get("/events/{ident:str}", include_in_schema=False)
async def event_page(request: AnyRequest, ident: FromPath[str]) -> Response[str]:
    detail = await services(request).get_event(ident, None)
    attributes = [(k, v) for k, v in detail.event.items() if k not in ("data", "data_base64")]
    return page(
        request, "event.html", nav="events", attributes=attributes, data=detail.event.get("data"),
        data_base64=detail.event.get("data_base64"), live_url=query_url("/live/lifecycle", entry=detail.entry_id),
        **lifecycle_context(detail),
    )


# -- consumers ------------------------------------------------------------------------------------
async def consumers_context(svc: Services) -> dict[str, Any]:
    held = {g.group: g for g in held_groups(await svc.retention_held_back())}
    return {"groups": await svc.consumer_groups(), "throughput": await charts.group_throughput(svc), "held": held}


def consumers_partial(context: dict[str, Any]) -> str:
    return render("_consumers_live.html", **context)


@get("/consumers", include_in_schema=False)
async def consumers_page(request: AnyRequest) -> Response[str]:
    return page(request, "consumers.html", nav="consumers", **await consumers_context(services(request)))


ROUTES = [overview_page, events_page, event_page, consumers_page]
