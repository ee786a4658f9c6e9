"""The Types page: event types seen in the log (the analytics consumer's per-minute counts) and the
registered ones, each with its schema, mode and validation failures; and one registered type's page
with every schema version. Read-only: types change through the API and the CLI (`eventflow types`)."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import msgspec
from litestar import Response, get
from litestar.params import FromPath

from app.schemas import EventType, Failure, Mode
from app.service import Services
from app.web.api import services
from app.web.dashboard import charts
from app.web.dashboard.render import AnyRequest, page, period

RECENT = 10  # validation failures on the Types page, newest first across types
RECENT_TYPES = 50  # types whose latest failures are read for it (one read each)
MODE_TEXT = {
    Mode.ENFORCE: "events that fail are rejected (422)",
    Mode.WARN: "events that fail are accepted and flagged",
    Mode.OFF: "events are not checked",
}


class TypeRow(msgspec.Struct, kw_only=True):
    name: str
    registered: EventType | None
    count: int | None  # events in the counting window; None when nothing counts them
    last_seen_ms: int | None
    failures: dict[str, int]  # outcome (rejected, flagged, dead-lettered) -> count


class RecentFailure(NamedTuple):
    type: str
    failure: Failure


async def types_context(svc: Services) -> dict[str, Any]:
    registered = {t.name: t for t in await svc.schemas.registered()}
    counts = {c.type: c for c in await svc.stats.type_counts()}
    failures = await svc.schemas.failure_counts()
    counted = bool(counts) or any(g.name == charts.ANALYTICS for g in await svc.consumer_groups())
    rows = [
        TypeRow(name=name, registered=registered.get(name), failures=failures.get(name, {}),
                count=counts[name].count if name in counts else (0 if counted else None),
                last_seen_ms=counts[name].last_minute_ms if name in counts else None)
        for name in registered.keys() | counts.keys() | failures.keys()
    ]
    rows.sort(key=lambda r: (-(r.count or 0), r.name))
    return {"rows": rows, "counted": counted, "recent": await _recent(svc, failures),
            "window": _window(svc)}


async def _recent(svc: Services, failures: dict[str, dict[str, int]]) -> list[RecentFailure]:
    names = sorted(failures, key=lambda n: -sum(failures[n].values()))[:RECENT_TYPES]
    lists = await asyncio.gather(*(svc.schemas.recent_failures(n, RECENT) for n in names))
    merged = [RecentFailure(n, f) for n, found in zip(names, lists, strict=True) for f in found]
    return sorted(merged, key=lambda r: -r.failure.at_ms)[:RECENT]


def _window(svc: Services) -> str:
    """How far back the counts go, for "events in the last ...": `day`, or `2 h` with a short stats retention."""
    window_s = svc.stats.type_window_s
    return "day" if window_s == 86_400 else period(window_s)


@get("/types", include_in_schema=False)
async def types_page(request: AnyRequest) -> Response[str]:
    return page(request, "types.html", nav="types", **await types_context(services(request)))


@get("/types/{name:str}", include_in_schema=False)
async def type_page(request: AnyRequest, name: FromPath[str]) -> Response[str]:
    svc = services(request)
    found = await svc.schemas.get(name)  # 404 page for a type nobody registered
    versions = await svc.schemas.versions(name)
    count = next((c for c in await svc.stats.type_counts() if c.type == name), None)
    return page(
        request, "type.html", nav="types", type=found, versions=versions[::-1], count=count,
        failures=(await svc.schemas.failure_counts()).get(name, {}), mode_text=MODE_TEXT[found.mode],
        recent=[RecentFailure(name, f) for f in await svc.schemas.recent_failures(name)], window=_window(svc),
    )


ROUTES = [types_page, type_page]
