"""Every dashboard page — each GET route of the app, error pages included — carries the security
headers: a Content-Security-Policy without inline script and with frame-ancestors 'none', a
Referrer-Policy, nosniff, and HSTS exactly when the request came over HTTPS. (A path that matches no
route is answered by Litestar's router with problem+json, before any middleware: no page, no CSP.)"""

from __future__ import annotations

import httpx
import pytest

from app.service import Services
from app.settings import Settings
from app.web import create_app
from tests.conftest import running
from tests.integration.dashboard_helpers import logged_in
from tests.security.test_routes import concrete, kind, routes


def check(resp: httpx.Response, https: bool) -> None:
    where = f"{resp.request.method} {resp.request.url.path} ({resp.status_code})"
    csp = resp.headers.get("content-security-policy", "")
    directives = dict(d.strip().partition(" ")[::2] for d in csp.split(";") if d.strip())
    assert directives.get("script-src") == "'self'", where
    assert directives.get("frame-ancestors") == "'none'" and directives.get("object-src") == "'none'", where
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, where
    assert resp.headers.get("referrer-policy") == "same-origin", where
    assert resp.headers.get("x-content-type-options") == "nosniff", where
    assert resp.headers.get("x-frame-options") == "DENY", where
    assert ("strict-transport-security" in resp.headers) == https, where


@pytest.mark.usefixtures("cheap_hashing")
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_every_dashboard_page_carries_the_security_headers(
    services: Services, settings: Settings, scheme: str
) -> None:
    await services.users.create("ada", "admin", "ada-password-1")
    pages = sorted({concrete(p) for m, p, _ in routes(settings)
                    if m == "GET" and kind(p) == "dashboard" and not p.startswith("/live/")})
    app = create_app(settings)
    https = scheme == "https"
    async with running(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                               base_url=f"{scheme}://testserver") as client:
        check(await client.get("/login"), https)
        await logged_in(client, "ada", "ada-password-1")
        for path in [*pages, "/events/no-such-event", "/dead-letters/0:1-0"]:
            check(await client.get(path), https)
        # A path no route matches is answered by the router with problem+json, not a page.
        unrouted = await client.get("/no-such-page")
        assert unrouted.status_code == 404
        assert unrouted.headers["content-type"].startswith("application/problem+json")
