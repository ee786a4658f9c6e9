"""The Webhooks page: the notify consumer's subscriptions (create, edit, enable or disable, rotate
the signing secret, delete) with each one's last delivery. Mutations are admin-only (see
`auth.guard`); a new secret is rendered once and never stored in the session."""

from __future__ import annotations

import re
from typing import Any

from litestar import Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect

from app.errors import InvalidEvent
from app.web.api import services
from app.web.dashboard.auth import flash
from app.web.dashboard.render import AnyRequest, kept, page, query_url
from app.webhooks import IssuedSecret, SubscriptionIn, SubscriptionPatch

_SPLIT = re.compile(r"[\s,]+")


def _types(text: Any) -> list[str]:
    return [t for t in _SPLIT.split(str(text or "")) if t]


def _secret_page(request: AnyRequest, issued: IssuedSecret, rotated: bool) -> Response[str]:
    return page(request, "webhook_secret.html", nav="webhooks", issued=issued, rotated=rotated,
                headers={"Cache-Control": "no-store"})


async def _refused(request: AnyRequest, exc: InvalidEvent, back: str) -> Response[Any]:
    problems = "; ".join(f"{p.pointer.strip('/') or 'form'}: {p.message}" for p in exc.problems)
    await flash(request, f"error:Not saved. {problems}")
    return Redirect(back, status_code=303)


@get("/webhooks", include_in_schema=False)
async def webhooks_page(
    request: AnyRequest, url: FromQuery[str] = "", types: FromQuery[str] = "", description: FromQuery[str] = "",
    enabled: FromQuery[str] = "on",
) -> Response[str]:
    """The list and the form to add one; the query holds a refused form's values, to show them again
    (`enabled=off`: the box was unticked; a new form starts ticked)."""
    subscriptions = await services(request).webhooks.list()
    return page(request, "webhooks.html", nav="webhooks", subscriptions=subscriptions,
                draft={"url": url, "types": types, "description": description, "enabled": enabled != "off"})


@post("/webhooks", include_in_schema=False, status_code=200)
async def create_webhook(request: AnyRequest) -> Response[Any]:
    form = await request.form()
    data = SubscriptionIn(url=str(form.get("url", "")).strip(), types=_types(form.get("types")),
                          description=str(form.get("description", "")).strip(), enabled=form.get("enabled") == "on")
    try:
        issued = await services(request).webhooks.create(data)
    except InvalidEvent as exc:  # back to the form, with what was typed in it
        draft = {k: kept(form.get(k)) for k in ("url", "types", "description")}
        # An unticked box sends nothing, which the page would take for a new form's tick: say "off".
        draft["enabled"] = "on" if data.enabled else "off"
        return await _refused(request, exc, query_url("/webhooks", **draft))
    return _secret_page(request, issued, rotated=False)


@get("/webhooks/{ident:str}", include_in_schema=False)
async def webhook_page(
    request: AnyRequest, ident: FromPath[str], url: FromQuery[str | None] = None,
    types: FromQuery[str | None] = None, description: FromQuery[str | None] = None,
) -> Response[str]:
    """One subscription and its edit form: the saved values, or a refused edit's (from the query)."""
    sub = await services(request).webhooks.get(ident)
    draft = {"url": sub.url, "types": " ".join(sub.types), "description": sub.description}
    draft.update({k: v for k, v in (("url", url), ("types", types), ("description", description)) if v is not None})
    return page(request, "webhook.html", nav="webhooks", sub=sub, draft=draft)


@post("/webhooks/{ident:str}", include_in_schema=False, status_code=303)
async def update_webhook(request: AnyRequest, ident: FromPath[str]) -> Response[Any]:
    form = await request.form()
    patch = SubscriptionPatch(url=str(form.get("url", "")).strip(), types=_types(form.get("types")),
                              description=str(form.get("description", "")).strip())
    try:
        await services(request).webhooks.update(ident, patch)
    except InvalidEvent as exc:  # back to the form, with what was typed in it
        draft = {k: kept(form.get(k)) for k in ("url", "types", "description")}
        return await _refused(request, exc, query_url(f"/webhooks/{ident}", **draft))
    await flash(request, f"Saved subscription {ident}.")
    return Redirect("/webhooks", status_code=303)


@post("/webhooks/{ident:str}/{action:str}", include_in_schema=False, status_code=303)
async def webhook_action(request: AnyRequest, ident: FromPath[str], action: FromPath[str]) -> Response[Any]:
    hooks = services(request).webhooks
    if action in ("enable", "disable"):
        await hooks.set_enabled(ident, action == "enable")
        await flash(request, f"{'Enabled' if action == 'enable' else 'Disabled'} subscription {ident}.")
    elif action == "delete":
        await hooks.delete(ident)
        await flash(request, f"Deleted subscription {ident}.")
    elif action == "rotate-secret":
        return _secret_page(request, await hooks.rotate_secret(ident), rotated=True)
    else:
        await flash(request, f"error:Unknown action “{action}”.")
    return Redirect("/webhooks", status_code=303)


ROUTES = [webhooks_page, create_webhook, webhook_page, update_webhook, webhook_action]
