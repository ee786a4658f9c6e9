"""Property tests (hypothesis) for the event envelope, against the real app and the session's Valkey.

One app per test runs in the test's event loop (httpx's ASGI transport); hypothesis calls the test
body many times with the same app, which is why the function-scoped-fixture health check is off:
sharing the app is the point, and every example uses ids of its own. The example budget is small
(see `PROFILE`) so the whole folder stays within a few seconds in CI.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis

from app.keys import Keys
from app.settings import Settings
from app.web import create_app
from tests.conftest import running

settings.register_profile(
    "eventflow", max_examples=60, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROFILE = settings.get_profile("eventflow")


@pytest.fixture
async def api(settings: Settings, producer_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a running app, authenticated as the producer `billing`."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {producer_key}"}
    async with running(app), httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                               headers=headers) as client:
        yield client


@contextlib.asynccontextmanager
async def log_unchanged(redis: Redis, settings: Settings) -> AsyncIterator[None]:
    """Assert that the block leaves the log exactly as it found it (nothing half-written)."""
    stream = Keys(settings.prefix).stream(0)
    before = await redis.xlen(stream)
    last = await redis.xrevrange(stream, count=1)
    yield
    assert await redis.xlen(stream) == before
    assert await redis.xrevrange(stream, count=1) == last
