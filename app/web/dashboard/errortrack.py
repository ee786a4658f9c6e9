"""The Errors page: failures grouped by consumer, exception type and normalized message (`app.errortrack`),
most recently seen first, with a consumer filter. Read-only, so viewers see it too."""

from __future__ import annotations

from litestar import Response, get
from litestar.params import FromQuery

from app.web.api import services
from app.web.dashboard.render import AnyRequest, page, period

LIMIT = 200


@get("/errors", include_in_schema=False)
async def errors_page(request: AnyRequest, consumer: FromQuery[str | None] = None) -> Response[str]:
    svc = services(request)
    chosen = (consumer or "").strip() or None
    groups = await svc.error_groups(chosen, LIMIT)
    group_names = {g.name for g in await svc.consumer_groups()}
    # The filter offers every consumer group, and `web` (unexpected API errors) once it has failed.
    consumers = sorted(group_names | {g.consumer for g in groups} | ({chosen} if chosen else set()))
    return page(
        request, "errors.html", nav="errors", groups=groups, consumers=consumers, chosen=chosen,
        group_names=group_names, limit=LIMIT, kept_for=period(svc.settings.attempts_ttl_s),
        failures=sum(g.count for g in groups), dead=sum(g.dead_lettered for g in groups),
    )


ROUTES = [errors_page]
