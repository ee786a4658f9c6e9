"""The web process: `create_app(settings)` wires routes, services and error handling."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from redis.asyncio import Redis

from app import __version__
from app.connections import connect
from app.logs import configure_logging
from app.service import Services
from app.settings import Settings
from app.web import api, health, operations
from app.web.problems import EXCEPTION_HANDLERS


def create_app(settings: Settings, *, redis: Redis | None = None) -> Litestar:
    """Build the Litestar app; pass `redis` to share a client (tests), else one is made from REDIS_URL."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = redis if redis is not None else connect(settings)
        app.state.services = Services(client, settings)
        await app.state.services.start()
        try:
            yield
        finally:
            if redis is None:
                await client.aclose()

    return Litestar(
        route_handlers=[*api.ROUTES, *health.ROUTES, *operations.ROUTES],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        state=State({"settings": settings}),
        openapi_config=OpenAPIConfig(title="EventFlow", version=__version__, path="/schema"),
        debug=False,
    )


def create_app_from_env() -> Litestar:
    """Entry point for granian (`--factory app.web:create_app_from_env`)."""
    settings = Settings.from_env(os.environ)
    configure_logging(settings)
    return create_app(settings)
