"""Dashboard access: the one guard every dashboard route passes (session, CSRF, role), and the login
and logout handlers.

Rules, enforced in `guard` from each handler's `opt`:
  - every route needs a session, except those marked `public` (the login form);
  - every unsafe method (POST...) needs the session's CSRF token;
  - every unsafe method needs the admin role unless the handler says `role="viewer"` (logout),
    and a safe one needs it only when the handler says `role="admin"`. Mutations are admin-only
    by default, so a new route cannot forget its role check.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromQuery
from litestar.response import Redirect

from app.errors import Unauthorized
from app.sessions import Loaded
from app.users import Role
from app.web.api import services
from app.web.dashboard.render import page
from app.web.security import CSRF_FIELD, client_address, new_token, secure_cookies, tokens_match

SESSION_COOKIE = "eventflow_session"
LOGIN_COOKIE = "eventflow_login"  # the login form's double-submit CSRF token
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

AnyRequest = Request[Any, Any, Any]
AnyConnection = ASGIConnection[Any, Any, Any, Any]


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, streams and forms get 401."""


class CsrfRefused(Exception):
    """A state-changing request without this session's CSRF token (forged, or a stale form)."""


class RoleRequired(Exception):
    """A viewer asked for something only an admin may do."""


async def guard(connection: AnyConnection, handler: BaseRouteHandler) -> None:
    if handler.opt.get("public"):
        return
    method = connection.scope.get("method", "GET")
    unsafe = method not in SAFE_METHODS
    stream = bool(handler.opt.get("stream"))
    svc = services(connection)  # type: ignore[arg-type]
    loaded = await svc.sessions.load(connection.cookies.get(SESSION_COOKIE), take_flashes=not (unsafe or stream))
    if loaded is None:
        raise LoginRequired
    connection.state.operator = loaded
    if unsafe:
        await _check_csrf(connection, loaded)
    needed = handler.opt.get("role") or (Role.ADMIN if unsafe else Role.VIEWER)
    if needed == Role.ADMIN and loaded.session.role is not Role.ADMIN:
        raise RoleRequired


async def _check_csrf(connection: AnyConnection, loaded: Loaded) -> None:
    # A browser says when a request comes from another site; refuse those before reading the body.
    if connection.headers.get("sec-fetch-site") == "cross-site":
        raise CsrfRefused
    given = connection.headers.get("x-csrf-token")
    if given is None and isinstance(connection, Request):
        given = (await connection.form()).get(CSRF_FIELD)
    if not tokens_match(loaded.session.csrf, given if isinstance(given, str) else None):
        raise CsrfRefused


def operator(request: AnyRequest) -> Loaded:
    """The session the guard loaded for this request."""
    return request.state.operator  # type: ignore[no-any-return]


async def flash(request: AnyRequest, message: str) -> None:
    await services(request).sessions.flash(operator(request).token, message)


def safe_next(target: str | None) -> str:
    """Only same-site paths: `/events?x=1` yes; `//evil.example`, `https://...`, `/\\evil` no."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _cookie(request: AnyRequest, key: str, value: str, *, max_age: int | None, path: str = "/") -> Cookie:
    settings = request.app.state.settings
    return Cookie(key=key, value=value, max_age=max_age, path=path, httponly=True, samesite="lax",
                  secure=secure_cookies(request, settings))


def _login_page(request: AnyRequest, *, error: str | None, status: int, next_path: str,
                headers: dict[str, str] | None = None) -> Response[str]:
    token = new_token()
    response = page(request, "login.html", status=status, headers=headers, error=error, login_token=token,
                    next_path=next_path, csrf_field=CSRF_FIELD)
    response.set_cookie(_cookie(request, LOGIN_COOKIE, token, max_age=3600, path="/login"))
    return response


@get("/login", opt={"public": True}, include_in_schema=False)
async def login_form(request: AnyRequest, next: FromQuery[str | None] = None) -> Response[Any]:  # noqa: A002
    svc = services(request)
    if await svc.sessions.load(request.cookies.get(SESSION_COOKIE), take_flashes=False) is not None:
        return Redirect(safe_next(next))
    return _login_page(request, error=None, status=200, next_path=safe_next(next))


@post("/login", opt={"public": True}, include_in_schema=False, status_code=303)
async def login(request: AnyRequest) -> Response[Any]:
    svc = services(request)
    settings = request.app.state.settings
    form = await request.form()
    next_path = safe_next(form.get("next"))
    if not tokens_match(request.cookies.get(LOGIN_COOKIE, ""), form.get(CSRF_FIELD)):
        return _login_page(request, error="The form expired. Please try again.", status=403, next_path=next_path)
    client = client_address(request, settings)
    wait_s = await svc.login_throttle.attempt(client)
    if wait_s is not None:
        return _login_page(request, error=f"Too many failed attempts. Try again in {wait_s} s.", status=429,
                           next_path=next_path, headers={"Retry-After": str(wait_s)})
    try:
        user = await svc.users.authenticate(str(form.get("username", "")), str(form.get("password", "")))
    except Unauthorized:
        return _login_page(request, error="Wrong name or password.", status=401, next_path=next_path)
    await svc.login_throttle.succeeded(client)
    token, _session = await svc.sessions.start(user, previous_token=request.cookies.get(SESSION_COOKIE))
    response: Response[Any] = Redirect(next_path, status_code=303)
    response.set_cookie(_cookie(request, SESSION_COOKIE, token, max_age=None))
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@post("/logout", opt={"role": Role.VIEWER}, include_in_schema=False, status_code=303)
async def logout(request: AnyRequest) -> Response[Any]:
    await services(request).sessions.end(operator(request).token)
    response: Response[Any] = Redirect("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def login_redirect(request: AnyRequest) -> Response[Any]:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return Redirect(f"/login?next={quote(target, safe='')}", status_code=303)


ROUTES = [login_form, login, logout]
