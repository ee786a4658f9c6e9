"""The operator dashboard: server-rendered pages under one router, one guard (session, CSRF, role)
and HTML error pages. Live updates come from `app.web.sse`; static files from `app/static`."""

from __future__ import annotations

import errno
import logging
from typing import Any

from litestar import Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import HTTPException, InternalServerException, NotFoundException
from litestar.static_files import create_static_files_router

from app.connections import is_unavailable, unavailable
from app.errors import EventFlowError, Unavailable
from app.web import sse
from app.web.api import services
from app.web.dashboard import auth, errortrack, manage, pages, types, webhooks
from app.web.dashboard.render import STATIC, AnyRequest, page
from app.web.metrics import note_problem
from app.web.problems import http_error, unexpected_error
from app.web.security import security_headers

log = logging.getLogger("eventflow.web.dashboard")


def _error_page(request: AnyRequest, status: int, title: str, detail: str,
                headers: dict[str, str] | None = None) -> Response[Any]:
    if request.url.path.startswith("/live/"):  # an EventSource cannot show a page
        return Response(detail, status_code=status, media_type="text/plain", headers=headers)
    return page(request, "error.html", status=status, headers=headers, title=title, detail=detail)


def _login_required(request: AnyRequest, exc: auth.LoginRequired) -> Response[Any]:
    if request.method == "GET" and not request.url.path.startswith("/live/"):
        return auth.login_redirect(request)
    return _error_page(request, 401, "Please log in", "Your session has ended. Log in again to continue.")


def _csrf_refused(request: AnyRequest, exc: auth.CsrfRefused) -> Response[Any]:
    return _error_page(request, 403, "Request refused",
                       "This form did not come from this dashboard, or it has expired. Go back, reload the "
                       "page and try again.")


def _role_required(request: AnyRequest, exc: auth.RoleRequired) -> Response[Any]:
    return _error_page(request, 403, "Admins only",
                       "Your account can look but not change things. Ask an admin to do this for you.")


def _domain_error(request: AnyRequest, exc: EventFlowError) -> Response[Any]:
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Unavailable) else None
    return _error_page(request, exc.status, exc.title, exc.detail, headers)


def _http_error(request: AnyRequest, exc: HTTPException) -> Response[Any]:
    title = {404: "Not found", 405: "Not allowed", 400: "Bad request"}.get(exc.status_code, "Error")
    return _error_page(request, exc.status_code, title, str(exc.detail))


def _unexpected(request: AnyRequest, exc: Exception) -> Response[Any]:
    if is_unavailable(exc):
        return _domain_error(request, unavailable(exc, request.app.state.settings))
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _error_page(request, 500, "Something went wrong", "An unexpected error occurred; it has been logged.")


_API_PATHS = ("/v1/", "/schema", "/healthz", "/readyz", "/metrics", "/static/", "/live/")
_UNROUTED = {  # status: (title, detail, the problem type the API would have answered, for the metrics)
    404: ("Not found", "There is no page at this address.", "/problems/not-found"),
    405: ("Not a page", "This address is where a form sends its changes; it shows nothing by itself. "
                        "Go back to the page the form was on.", "/problems/method-not-allowed"),
}


class _UnroutedPage(Response[str]):
    """The error page for a request no route took. No guard ran for it, so the session is not
    loaded, and the page would lack the navigation bar (and the operator's name and Log out) that
    every other page has. Exception handlers are synchronous, so the session is loaded here, when
    the response is sent. The app's middleware never runs for such a request either: the page,
    which now holds the operator's Log out form, gets the security headers (CSP, frame denial) here."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__("", status_code=status)
        self.title, self.detail = title, detail

    def to_asgi_response(self, app: Any, request: AnyRequest, **kwargs: Any) -> Any:
        async def send_page(scope: Any, receive: Any, send: Any) -> None:
            try:
                cookie = request.cookies.get(auth.SESSION_COOKIE)
                loaded = await services(request).sessions.load(cookie)
            except Exception:  # noqa: BLE001 - Redis away: the page without the bar beats no page
                loaded = None
            if loaded is not None:
                request.state.operator = loaded
            response = _error_page(request, self.status_code, self.title, self.detail)
            page_app = response.to_asgi_response(app, request, **kwargs)
            await security_headers(request.app.state.settings)(page_app)(scope, receive, send)

        return send_page


def unrouted_error(request: AnyRequest, exc: HTTPException) -> Response[Any]:
    """The app's handler for HTTP errors, which are also raised before any route is found (an
    unknown address, a GET to a form's address: a reloaded /producers/x/rotate). A browser asking
    for a dashboard page gets an error page there, not a problem+json document; the API, as before."""
    wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
    if wants_page and exc.status_code in _UNROUTED and not request.url.path.startswith(_API_PATHS):
        title, detail, problem_type = _UNROUTED[exc.status_code]
        note_problem(request, exc.status_code, problem_type)
        return _UnroutedPage(exc.status_code, title, detail)
    return http_error(request, exc)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    auth.LoginRequired: _login_required,
    auth.CsrfRefused: _csrf_refused,
    auth.RoleRequired: _role_required,
    EventFlowError: _domain_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}

# Pages link to /static/<file>?v=<content hash>, so a changed file gets a new URL.
_CACHE = CacheControlHeader(public=True, max_age=31_536_000, immutable=True)


def _no_such_file(request: AnyRequest, exc: Exception) -> Response[Any]:
    """A static file name no file can have is a 404, not a 500: the file system refuses a NUL byte
    (ValueError) and a name longer than it allows (ENAMETOOLONG, which Litestar's file system adapter
    raises as a 500 InternalServerException) instead of saying "not found"."""
    cause = exc.__cause__ if isinstance(exc, InternalServerException) else exc
    if isinstance(cause, ValueError) or (isinstance(cause, OSError) and cause.errno == errno.ENAMETOOLONG):
        return http_error(request, NotFoundException("no such static file"))
    return http_error(request, exc) if isinstance(exc, HTTPException) else unexpected_error(request, exc)


HANDLERS = [*auth.ROUTES, *pages.ROUTES, *types.ROUTES, *errortrack.ROUTES, *manage.ROUTES, *webhooks.ROUTES,
            *sse.ROUTES]


def routers() -> list[Router]:
    """The dashboard router (every route behind `auth.guard`) and the static files."""
    dashboard = Router(path="/", route_handlers=HANDLERS, guards=[auth.guard], exception_handlers=EXCEPTION_HANDLERS,
                       include_in_schema=False)
    static = create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False,
                                        cache_control=_CACHE,
                                        exception_handlers={ValueError: _no_such_file,
                                                            InternalServerException: _no_such_file})
    return [dashboard, static]
