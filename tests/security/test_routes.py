"""Every route of the app, enumerated from Litestar itself, and who may use it: a new route that is not
classified here fails the first test, so nobody adds one without deciding who may call it.

  - public: probes, the OpenAPI viewers, static files, the login form, /metrics (its own token);
  - the HTTP API (/v1): a producer key or the operator token, checked by the handler;
  - the dashboard: everything else, behind `auth.guard` (session, CSRF on every unsafe method, and
    the admin role for every mutation but logout).

tests/integration/test_dashboard_access.py already posts to every dashboard mutation as a viewer and
without the CSRF token; this adds the routes' classification, the API's credentials, and the
dashboard without any session.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest

from app.settings import Settings
from app.users import Role
from app.web import create_app
from app.web.dashboard import auth

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
TOKEN = "routes-test-operator-token"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
PUBLIC = ("/healthz", "/readyz", "/schema", "/static/", "/login", "/metrics")
# What a producer key may do besides ingest: read its own events, their counts and its own validation
# failures (scoped to its source), read the type registry, dry-run a sample.
PRODUCER_MAY = {
    ("POST", "/v1/events"), ("POST", "/v1/events/batch"), ("GET", "/v1/events"), ("GET", "/v1/events/{ident:str}"),
    ("GET", "/v1/stats"), ("GET", "/v1/event-types"), ("GET", "/v1/event-types/{name:str}"),
    ("GET", "/v1/event-types/{name:str}/schemas"), ("GET", "/v1/event-types/{name:str}/schemas/{version:int}"),
    ("POST", "/v1/event-types/{name:str}/validate"), ("GET", "/v1/event-types/{name:str}/failures"),
}


def routes(settings: Settings) -> Iterator[tuple[str, str, Any]]:
    """(method, path template, handler) for every route, OPTIONS aside."""
    for route in create_app(settings).routes:
        handler = getattr(route, "route_handler", None)
        if handler is not None:  # an ASGI route (the dashboard's live streams)
            yield "GET", route.path, handler
        for handler in getattr(route, "route_handlers", []):
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                yield method, route.path, handler


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path.replace("{version:int}", "1"))


def kind(path: str) -> str:
    if path.startswith(PUBLIC) or path == "/schema":
        return "public"
    return "api" if path.startswith("/v1/") else "dashboard"


def test_every_route_is_classified_and_every_dashboard_route_is_guarded(settings: Settings) -> None:
    found = list(routes(settings))
    assert len(found) > 60, len(found)
    for method, path, handler in found:
        if kind(path) != "dashboard":
            continue
        assert auth.guard in handler.resolve_guards(), f"{method} {path} is not behind the dashboard guard"
        assert not handler.opt.get("public"), f"{method} {path} opts out of the session"
        if method in UNSAFE and handler.opt.get("role") == Role.VIEWER:
            assert path == "/logout", f"{method} {path} lets a viewer change things"
    public_unsafe = {(m, p) for m, p, _ in found if kind(p) == "public" and m in UNSAFE}
    assert public_unsafe == {("POST", "/login")}, public_unsafe  # the one form without a session (own CSRF)


async def test_every_api_route_refuses_a_request_without_credentials(make_client: MakeClient,
                                                                     settings: Settings) -> None:
    api = [(m, p) for m, p, _ in routes(settings) if kind(p) == "api"]
    assert len(api) >= 25
    async with make_client(api_token=TOKEN) as client:
        for method, path in api:
            for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Basic {TOKEN}"}):
                resp = await client.request(method, concrete(path), json={}, headers=headers)
                assert resp.status_code == 401, (method, path, headers, resp.status_code, resp.text[:200])
                assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_a_producer_key_reaches_only_ingest_its_events_and_the_type_registry(
    make_client: MakeClient, settings: Settings, new_producer: Callable[[str], Awaitable[dict[str, str]]]
) -> None:
    auth_header = await new_producer("billing")
    api = [(m, p) for m, p, _ in routes(settings) if kind(p) == "api"]
    async with make_client(api_token=TOKEN) as client:
        for method, path in api:
            resp = await client.request(method, concrete(path), json={"type": "t"}, headers=auth_header)
            if (method, path) in PRODUCER_MAY:
                assert resp.status_code not in (401, 403), (method, path, resp.text[:200])
            else:
                assert resp.status_code == 403, (method, path, resp.status_code, resp.text[:200])


@pytest.mark.usefixtures("cheap_hashing")
async def test_without_a_session_the_dashboard_only_redirects_to_the_login_form(
    make_client: MakeClient, settings: Settings
) -> None:
    dashboard = [(m, p) for m, p, _ in routes(settings) if kind(p) == "dashboard"]
    assert len(dashboard) >= 25
    async with make_client() as client:
        for method, path in dashboard:
            resp = await client.request(method, concrete(path), data={"csrf_token": "x", "name": "x"})
            if method == "GET" and not path.startswith("/live/"):
                assert resp.status_code == 303 and resp.headers["location"].startswith("/login?next="), (method, path)
            else:
                assert resp.status_code == 401, (method, path, resp.status_code)


async def test_a_producer_key_reads_only_its_own_validation_failures(
    make_client: MakeClient, new_producer: Callable[[str], Awaitable[dict[str, str]]]
) -> None:
    alice, bob = await new_producer("alice"), await new_producer("bob")
    operator = {"Authorization": f"Bearer {TOKEN}"}
    schema = {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "integer"}}}
    async with make_client(api_token=TOKEN) as client:
        registered = await client.put("/v1/event-types/order.created", headers=operator,
                                      json={"schema": schema, "mode": "enforce"})
        assert registered.status_code in (200, 201), registered.text
        refused = await client.post("/v1/events", headers=alice,
                                    json={"type": "order.created", "id": "alice-secret-order", "data": {}})
        assert refused.status_code == 422, refused.text
        refused = await client.post("/v1/events", headers=bob, json={"type": "order.created", "data": {}})
        assert refused.status_code == 422, refused.text
        seen = await client.get("/v1/event-types/order.created/failures", headers=bob)
        everyone = await client.get("/v1/event-types/order.created/failures", headers=operator)
    assert seen.status_code == 200 and "alice" not in seen.text, seen.text
    assert seen.json()["counts"] == {"rejected": 1}
    assert [f["source"] for f in seen.json()["recent"]] == ["bob"]
    assert everyone.json()["counts"] == {"rejected": 2}
    assert sorted(f["source"] for f in everyone.json()["recent"]) == ["alice", "bob"]


# Every route the issues and the README name, spelt as they do: users, scripts and outside checks call
# these paths, so a rename is a break, not a refactor.
CONTRACT = {
    ("POST", "/v1/events"), ("POST", "/v1/events/batch"), ("GET", "/v1/events"), ("GET", "/v1/events/{ident}"),
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/schema/openapi.json"),
    ("GET", "/schema/swagger"), ("GET", "/v1/stats"), ("GET", "/v1/errors"), ("GET", "/v1/errors/{ident}"),
    ("GET", "/v1/consumers"), ("GET", "/v1/dead-letters"), ("GET", "/v1/dead-letters/{ident}"),
    ("POST", "/v1/dead-letters/replay"), ("POST", "/v1/dead-letters/discard"), ("POST", "/v1/replay"),
    ("GET", "/v1/webhooks"), ("POST", "/v1/webhooks"), ("GET", "/v1/webhooks/{ident}"),
    ("PATCH", "/v1/webhooks/{ident}"), ("DELETE", "/v1/webhooks/{ident}"), ("GET", "/v1/event-types"),
    ("GET", "/v1/event-types/{name}"), ("PUT", "/v1/event-types/{name}"),
    ("POST", "/v1/event-types/{name}/validate"), ("GET", "/v1/retention"), ("POST", "/v1/archive/replay"),
    ("GET", "/login"), ("POST", "/login"), ("POST", "/logout"), ("GET", "/"), ("GET", "/events"),
    ("GET", "/events/{ident}"), ("GET", "/producers"), ("GET", "/consumers"), ("GET", "/dead-letters"),
    ("GET", "/webhooks"), ("GET", "/errors"), ("GET", "/types"),
}


def test_every_route_the_issues_name_exists_with_that_spelling(settings: Settings) -> None:
    served = {(method, re.sub(r":\w+\}", "}", path)) for method, path, _ in routes(settings)}
    assert sorted(CONTRACT - served) == []
