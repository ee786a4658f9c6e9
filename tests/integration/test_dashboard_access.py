"""Who gets into the dashboard and what they may do: login, sessions, CSRF, roles, headers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from app.keys import Keys
from app.service import Services
from app.sessions import token_hash
from app.settings import Settings
from app.web import create_app
from app.web.dashboard.auth import SESSION_COOKIE
from tests.integration.dashboard_helpers import cheap_hashing, csrf_token, logged_in, login  # noqa: F401

pytestmark = pytest.mark.usefixtures("cheap_hashing")

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
ADMIN, VIEWER = ("ada", "ada-password-1"), ("vic", "vic-password-1")
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@pytest.fixture(autouse=True)
async def operators(services: Services, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue("cheap_hashing")  # before the hashing below
    await services.users.create(ADMIN[0], "admin", ADMIN[1])
    await services.users.create(VIEWER[0], "viewer", VIEWER[1])


async def test_pages_need_a_session_and_send_you_back_where_you_were(make_client: MakeClient) -> None:
    async with make_client() as client:
        resp = await client.get("/dead-letters?group=x")
        assert resp.status_code == 303
        assert resp.headers["location"] == "/login?next=%2Fdead-letters%3Fgroup%3Dx"
        resp = await login(client, *ADMIN, next_path="/dead-letters?group=x")
        assert resp.headers["location"] == "/dead-letters?group=x"
        assert (await client.get("/dead-letters?group=x")).status_code == 200


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:x"])
async def test_login_never_redirects_off_site(make_client: MakeClient, target: str) -> None:
    async with make_client() as client:
        resp = await login(client, *ADMIN, next_path=target)
        assert resp.headers["location"] == "/"


async def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(make_client: MakeClient) -> None:
    async with make_client() as client:
        wrong = await login(client, ADMIN[0], "not-the-password")
        unknown = await login(client, "nobody", "not-the-password")
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong name or password." in wrong.text and "Wrong name or password." in unknown.text
    assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")


async def test_the_login_form_needs_its_own_csrf_token(make_client: MakeClient) -> None:
    async with make_client() as client:
        resp = await client.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]})
        assert resp.status_code == 403
        await client.get("/login")  # sets the cookie half of the pair, but the form half is missing
        resp = await client.post("/login", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": "x"})
        assert resp.status_code == 403
        assert SESSION_COOKIE not in client.cookies


async def test_failed_logins_are_limited_per_client_address(make_client: MakeClient) -> None:
    async with make_client(login_max_failures=3, login_window_s=60) as client:
        for _ in range(3):
            assert (await login(client, ADMIN[0], "wrong-password")).status_code == 401
        blocked = await login(client, *ADMIN)  # even the right password waits out the window
        assert blocked.status_code == 429
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        assert "Too many failed attempts" in blocked.text
    async with make_client(login_max_failures=3, trust_proxy=True) as client:
        # Behind a trusted proxy, the address is the one the proxy appended: another client is not blocked.
        client.headers["X-Forwarded-For"] = "203.0.113.9"
        assert (await login(client, *ADMIN)).status_code == 303


async def test_concurrent_wrong_passwords_get_no_more_tries_than_the_limit(make_client: MakeClient) -> None:
    async with make_client(login_max_failures=3, login_window_s=60) as client:
        form = csrf_token((await client.get("/login")).text)
        tries = [client.post("/login", data={"csrf_token": form, "username": ADMIN[0], "password": f"guess-{n}"})
                 for n in range(20)]
        answers = sorted(resp.status_code for resp in await asyncio.gather(*tries))
    assert answers == [401] * 3 + [429] * 17


async def test_right_passwords_do_not_use_up_the_failed_login_limit(make_client: MakeClient) -> None:
    async with make_client(login_max_failures=2, login_window_s=60) as client:
        assert (await login(client, ADMIN[0], "wrong-password")).status_code == 401
        for _ in range(4):
            assert (await login(client, *ADMIN)).status_code == 303
            client.cookies.clear()  # logged out again (a session's GET /login redirects)
        assert (await login(client, ADMIN[0], "wrong-password")).status_code == 401
        assert (await login(client, *ADMIN)).status_code == 429  # two failures: the window is spent


async def test_login_issues_a_new_session_and_ends_the_one_the_browser_had(
    make_client: MakeClient, services: Services
) -> None:
    async with make_client() as client:
        client.cookies.set(SESSION_COOKIE, "planted-by-an-attacker", domain="testserver.local")
        await logged_in(client, *VIEWER)
        first = client.cookies[SESSION_COOKIE]
        assert first != "planted-by-an-attacker"
        # Log in again from the same browser (the form comes from elsewhere: a logged-in GET /login redirects).
        async with make_client() as other:
            form = await other.get("/login")
            client.cookies.set("eventflow_login", other.cookies["eventflow_login"], domain="testserver.local",
                               path="/login")
        resp = await client.post("/login", data={"csrf_token": csrf_token(form.text), "username": ADMIN[0],
                                                 "password": ADMIN[1]})
        assert resp.status_code == 303
        second = client.cookies[SESSION_COOKIE]
        assert second != first
    assert await services.sessions.load(first) is None  # the earlier session is gone
    loaded = await services.sessions.load(second)
    assert loaded is not None and loaded.session.user == ADMIN[0]


async def test_the_session_cookie_is_httponly_samesite_and_secure_behind_https(make_client: MakeClient) -> None:
    async with make_client() as client:
        cookie = (await login(client, *ADMIN)).headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    async with make_client(trust_proxy=True) as client:
        client.headers["X-Forwarded-Proto"] = "https"
        cookie = (await login(client, *ADMIN)).headers["set-cookie"]
        assert "Secure" in cookie
    async with make_client(cookie_secure="always") as client:
        assert "Secure" in (await login(client, *ADMIN)).headers["set-cookie"]


async def test_sessions_expire_when_idle_and_after_their_maximum_age(
    make_client: MakeClient, services: Services, redis: Redis, settings: Settings
) -> None:
    async with make_client(session_idle_s=120) as client:
        await logged_in(client, *ADMIN)
        key = Keys(settings.prefix).session(token_hash(client.cookies[SESSION_COOKIE]))
        assert 100 < await redis.ttl(key) <= 120  # every request restarts the idle timer
        await redis.delete(key)  # what the idle timeout does
        assert (await client.get("/")).status_code == 303
        await logged_in(client, *ADMIN)
        key = Keys(settings.prefix).session(token_hash(client.cookies[SESSION_COOKIE]))
        record = msgspec.json.decode(await redis.get(key))
        record["created_ms"] -= (settings.session_max_s + 1) * 1000
        await redis.set(key, msgspec.json.encode(record), ex=60)
        assert (await client.get("/")).status_code == 303


async def test_logout_ends_the_session(make_client: MakeClient, services: Services) -> None:
    async with make_client() as client:
        token = await logged_in(client, *VIEWER)
        cookie = client.cookies[SESSION_COOKIE]
        resp = await client.post("/logout", data={"csrf_token": token})
        assert resp.status_code == 303 and resp.headers["location"] == "/login"
    assert await services.sessions.load(cookie) is None


async def test_deleting_an_operator_or_changing_a_password_ends_their_sessions(
    make_client: MakeClient, services: Services
) -> None:
    async with make_client() as client:
        await logged_in(client, *VIEWER)
        await services.set_user_password(VIEWER[0], "a-new-password")
        assert (await client.get("/")).status_code == 303
        await logged_in(client, VIEWER[0], "a-new-password")
        await services.delete_user(VIEWER[0])
        assert (await client.get("/")).status_code == 303
        assert (await login(client, VIEWER[0], "a-new-password")).status_code == 401


def _mutation_routes(settings: Settings) -> list[str]:
    """Every state-changing dashboard route, with its path parameters filled in."""
    app = create_app(settings)
    paths = []
    for route in app.routes:
        if route.path.startswith(("/v1", "/login", "/schema")) or "POST" not in getattr(route, "methods", ()):
            continue
        if route.path == "/producers/{target:path}":  # one route for a producer's three actions
            paths += [f"/producers/x/{action}" for action in ("rotate", "types", "revoke")]
            continue
        path = re.sub(r"\{(?!action)[^}]+\}", "x", route.path)
        actions = ("enable", "disable", "delete", "rotate-secret") if "{action" in path else ("",)
        paths += [re.sub(r"\{action[^}]*\}", action, path) for action in actions]
    return sorted(paths)


async def test_every_mutation_refuses_a_viewer_and_a_missing_csrf_token(
    make_client: MakeClient, settings: Settings
) -> None:
    routes = _mutation_routes(settings)
    assert len(routes) >= 12, routes  # producers, dead letters, webhooks, logout
    async with make_client() as client:
        token = await logged_in(client, *VIEWER)
        for path in routes:
            if path == "/logout":
                continue  # a viewer may log out
            resp = await client.post(path, data={"csrf_token": token, "name": "x", "which": "all"})
            assert resp.status_code == 403, path
            assert "Admins only" in resp.text, path
    async with make_client() as client:
        await logged_in(client, *ADMIN)
        for path in routes:
            resp = await client.post(path, data={"name": "x", "which": "all"})
            assert resp.status_code == 403, path
            assert "did not come from this dashboard" in resp.text, path
            resp = await client.post(path, data={"name": "x", "csrf_token": "forged" * 7})
            assert resp.status_code == 403, path


async def test_a_cross_site_request_is_refused_even_with_a_token(make_client: MakeClient) -> None:
    async with make_client() as client:
        token = await logged_in(client, *ADMIN)
        resp = await client.post("/producers", data={"csrf_token": token, "name": "x"},
                                 headers={"Sec-Fetch-Site": "cross-site"})
        assert resp.status_code == 403


async def test_a_viewer_reads_every_page_but_the_confirmation_step(make_client: MakeClient) -> None:
    async with make_client() as client:
        await logged_in(client, *VIEWER)
        for path in ("/", "/events", "/types", "/producers", "/consumers", "/errors", "/dead-letters", "/webhooks"):
            resp = await client.get(path)
            assert resp.status_code == 200, path
            forms = re.findall(r'<form method="post" action="([^"]+)"', resp.text)
            assert forms == ["/logout"], (path, forms)
        assert (await client.get("/dead-letters/confirm?action=replay&which=all")).status_code == 403


async def test_pages_carry_the_security_headers(make_client: MakeClient) -> None:
    async with make_client() as client:
        resp = await client.get("/login")
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["referrer-policy"] == "same-origin"
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["x-frame-options"] == "DENY"
        assert "strict-transport-security" not in resp.headers
    async with make_client(trust_proxy=True) as client:
        resp = await client.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert resp.headers["strict-transport-security"].startswith("max-age=")
    async with make_client() as client:  # an untrusted X-Forwarded-Proto changes nothing
        resp = await client.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" not in resp.headers


def test_templates_hold_no_inline_script_style_or_event_handler() -> None:
    for path in TEMPLATES.glob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path.name
        assert not re.search(r"\sstyle=", text), path.name
        assert not re.search(r"\son[a-z]+=", text), path.name
        assert "|safe" not in text and "Markup" not in text, path.name


async def test_static_files_are_served_with_a_long_cache_and_need_no_session(make_client: MakeClient) -> None:
    async with make_client() as client:
        page = await client.get("/login")
        css = re.search(r'href="(/static/app\.css\?v=[0-9a-f]+)"', page.text)
        assert css
        resp = await client.get(css.group(1))
        assert resp.status_code == 200 and "immutable" in resp.headers["cache-control"]
        assert (await client.get("/static/app.js")).status_code == 200


@pytest.mark.parametrize("name", ["%00", "a" * 300, "nope.css"])
async def test_a_static_file_no_file_can_be_is_a_404(make_client: MakeClient, name: str) -> None:
    # A NUL byte (ValueError) or a name longer than the file system allows (OSError) was a 500.
    async with make_client() as client:
        for method in ("GET", "HEAD"):
            assert (await client.request(method, f"/static/{name}")).status_code == 404


async def test_unknown_pages_and_events_get_html_error_pages(make_client: MakeClient) -> None:
    async with make_client() as client:
        await logged_in(client, *ADMIN)
        resp = await client.get("/events/no-such-event")
        assert resp.status_code == 404
        assert resp.headers["content-type"].startswith("text/html")
        assert "no event with id" in resp.text


async def test_an_unrouted_address_shows_the_error_page_with_the_navigation(make_client: MakeClient) -> None:
    # A mistyped address (404) or a form's address opened as a page (405) is refused before any
    # route, so the guard never loaded the session: the page came without the navigation bar, and
    # the operator had no way back but the address bar.
    html = {"Accept": "text/html"}
    async with make_client() as client:
        anonymous = await client.get("/producer", headers=html)
        assert anonymous.status_code == 404 and 'class="mainnav"' not in anonymous.text
        assert 'href="/login"' in anonymous.text
        await logged_in(client, *VIEWER)
        for path, status, heading in (("/producer", 404, "Not found"), ("/events/x/y", 404, "Not found"),
                                      ("/producers/shop/rotate", 405, "Not a page")):
            resp = await client.get(path, headers=html)
            assert resp.status_code == status and resp.headers["content-type"].startswith("text/html"), path
            assert f"<h1>{heading}</h1>" in resp.text, path
            nav = resp.text.split('<nav class="mainnav"', 1)[1].split("</nav>", 1)[0]
            assert 'href="/dead-letters"' in nav and 'href="/webhooks"' in nav, path
            assert "vic" in resp.text and resp.headers["cache-control"] == "no-store", path
            assert "frame-ancestors 'none'" in resp.headers["content-security-policy"], path
        api = await client.get("/v1/nope", headers=html)
        assert api.status_code == 404 and api.headers["content-type"] == "application/problem+json"
