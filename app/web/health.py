"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get

from app.errors import Unavailable
from app.web.api import _json, services


@get("/healthz", summary="The process is alive", include_in_schema=True)
async def healthz() -> Response[bytes]:
    return _json({"status": "ok"})


@get("/readyz", summary="Redis answers: the process can take events")
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = services(request)
    try:
        await asyncio.wait_for(svc.redis.ping(), svc.settings.redis_timeout_s)
    except Exception:  # noqa: BLE001 - any failure to answer means "not ready"
        raise Unavailable("the event store (Redis) does not answer", svc.settings.retry_after_s) from None
    return _json({"status": "ready"})


ROUTES = [healthz, readyz]
