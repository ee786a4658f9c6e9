"""The webhook subscriptions API (`/v1/webhooks`): operator token only; producer keys get 403."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, delete, get, patch, post
from litestar.params import FromPath

from app.errors import MalformedBody
from app.service import Services
from app.web.problems import field_problem
from app.webhooks import InvalidSubscription, SubscriptionIn, SubscriptionPatch, Webhooks

AnyRequest = Request[Any, Any, Any]
T = TypeVar("T")
_encode = msgspec.json.Encoder().encode


async def operator(request: AnyRequest) -> Webhooks:
    """The webhooks service, once the caller proved to hold the operator API token (401/403 otherwise)."""
    svc: Services = request.app.state.services
    await svc.require_operator(request.headers.get("authorization"))
    return Webhooks(svc.redis, svc.settings)


def _decode(body: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidSubscription([field_problem(str(exc))]) from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(_encode(body), status_code=status, media_type="application/json", headers=headers)


@post("/v1/webhooks", status_code=201, summary="Create a webhook subscription (the secret is shown only here)")
async def create_webhook(request: AnyRequest) -> Response[bytes]:
    webhooks = await operator(request)
    issued = await webhooks.create(_decode(await request.body(), SubscriptionIn))
    return _json(issued, 201, {"Location": f"/v1/webhooks/{issued.id}"})


@get("/v1/webhooks", summary="List webhook subscriptions with their last delivery")
async def list_webhooks(request: AnyRequest) -> Response[bytes]:
    webhooks = await operator(request)
    return _json({"webhooks": await webhooks.list()})


@get("/v1/webhooks/{ident:str}", summary="One webhook subscription")
async def get_webhook(request: AnyRequest, ident: FromPath[str]) -> Response[bytes]:
    webhooks = await operator(request)
    return _json(await webhooks.get(ident))


@patch("/v1/webhooks/{ident:str}", summary="Change a subscription's url, types, description or enabled flag")
async def update_webhook(request: AnyRequest, ident: FromPath[str]) -> Response[bytes]:
    webhooks = await operator(request)
    return _json(await webhooks.update(ident, _decode(await request.body(), SubscriptionPatch)))


@delete("/v1/webhooks/{ident:str}", status_code=204, summary="Delete a subscription")
async def delete_webhook(request: AnyRequest, ident: FromPath[str]) -> None:
    webhooks = await operator(request)
    await webhooks.delete(ident)


@post("/v1/webhooks/{ident:str}/rotate-secret", status_code=200,
      summary="Issue a new signing secret; the old one also signs deliveries for 24 hours")
async def rotate_webhook_secret(request: AnyRequest, ident: FromPath[str]) -> Response[bytes]:
    webhooks = await operator(request)
    return _json(await webhooks.rotate_secret(ident))


ROUTES = [create_webhook, list_webhooks, get_webhook, update_webhook, delete_webhook, rotate_webhook_secret]
