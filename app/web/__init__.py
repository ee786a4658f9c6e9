"""The web process: `create_app(settings)` wires routes, services and error handling."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from redis.asyncio import Redis

from app.connections import connect
from app.logs import configure_logging
from app.metrics import default_metrics
from app.service import Services
from app.settings import Settings
from app.web import api, apidocs, dashboard, errortrack, health, operations, webhooks
from app.web import metrics as metrics_web
from app.web import retention as retention_api
from app.web import stats as stats_api
from app.web import types as types_api
from app.web.dashboard.render import event_row_fields
from app.web.ingest import IngestFastPath
from app.web.problems import EXCEPTION_HANDLERS
from app.web.security import security_headers

# How long the event loop's thread may hold the GIL before another thread that wants it gets it
# (Python's default: 5 ms). granian's own threads need the GIL to hand each request to the loop and
# to take its answer; under load the loop thread seldom lets go of it by itself, so requests waited
# in bursts. At 0.1 ms single-event POSTs under wrk went up 6-10% (ops.bench, 4-5 alternating rounds).
GIL_SWITCH_INTERVAL_S = 0.0001


def create_app(settings: Settings, *, redis: Redis | None = None) -> Litestar:
    """Build the Litestar app; pass `redis` to share a client (tests), else one is made from REDIS_URL."""
    web_metrics = metrics_web.WebMetrics(settings, default_metrics(settings.metrics_dir))

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = redis if redis is not None else connect(settings)
        app.state.services = Services(client, settings)
        try:
            await app.state.services.start()
        except BaseException:
            if redis is None:
                await client.aclose()  # a refused start-up (e.g. durability check) must not leak it
            raise
        app.state.services.live.render = event_row_fields  # the feed sends each row's fields
        await app.state.services.live.start()
        if redis is None:  # the app owns the process (tests share one, and pass a client)
            # Everything built so far (modules, routes, templates, services) lives as long as the
            # process: keep the cyclic GC from walking it again on every full collection. With 1,000
            # live viewers the slowest delivery fell from ~215 ms to ~160 ms (ops.bench.live, 4 runs).
            gc.freeze()
        try:
            yield
        finally:
            await app.state.services.live.stop()
            await app.state.services.producers.close()
            if redis is None:
                await client.aclose()

    return Litestar(
        route_handlers=[*api.ROUTES, *health.ROUTES, *operations.ROUTES, *webhooks.ROUTES, *stats_api.ROUTES,
                        *dashboard.routers(), *metrics_web.ROUTES, *errortrack.ROUTES,
                        *types_api.ROUTES, *retention_api.ROUTES, apidocs.assets()],
        middleware=[IngestFastPath, web_metrics.middleware(), security_headers(settings)],
        lifespan=[lifespan, metrics_web.lifespan(web_metrics)],
        exception_handlers={**EXCEPTION_HANDLERS, HTTPException: dashboard.unrouted_error},
        before_request=api.single_parameters,
        request_max_body_size=settings.max_body_bytes,
        state=State({"settings": settings, "web_metrics": web_metrics}),
        openapi_config=apidocs.openapi_config(),
        debug=False,
        logging_config=None,  # Litestar's default would replace the root handlers (app/logs.py's JSON)
    )


def create_app_from_env() -> IngestFastPath:
    """Entry point for granian (`--factory app.web:create_app_from_env`): the Litestar app behind
    the ingest fast path, which answers producers before any of Litestar's per-request layers."""
    settings = Settings.from_env(os.environ)
    configure_logging(settings)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    app = create_app(settings)
    return IngestFastPath(app, litestar=app)
