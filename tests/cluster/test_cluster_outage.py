"""One stopped primary makes only its own partitions unavailable: ingest for them answers 503 with
Retry-After in bounded time, ingest for the others goes on, and everything resumes when it is back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest

from app.connections import connect
from app.embedded import EmbeddedCluster, EmbeddedServer
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from tests.integration.helpers import assert_problem

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
TIMEOUT_S = 1.0


def node_port(cluster_client: Any, key: str) -> int:
    return int(cluster_client.get_node_from_key(key).port)


class Layout:
    """A prefix whose metadata (producer keys, type registry) sits on one node, a primary holding only
    partitions (the one to stop), and a partition key for every partition with the port of its node."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.victim = 0
        self.partition_keys: dict[str, int] = {}  # partition key -> port of its partition's node

    @classmethod
    async def choose(cls, settings: Settings) -> Layout:
        redis = connect(settings)
        try:
            await redis.initialize()  # type: ignore[attr-defined]
            for _ in range(1000):
                out = cls(settings.replace(prefix=f"t{uuid.uuid4().hex[:10]}", redis_timeout_s=TIMEOUT_S))
                k = out.keys
                meta = {node_port(redis, key) for key in (k.producers, k.producer_keys, k.producers_changed,
                                                          k.types_changed, k.event_types)}
                if len(meta) == 1:
                    break
            else:
                raise AssertionError("no prefix keeps the metadata on one node")
            homes = {p: node_port(redis, k.stream(p)) for p in range(k.partitions)}
            out.victim = next(port for port in sorted(set(homes.values())) if port not in meta)
            n = 0
            while len(out.partition_keys) < k.partitions:
                partition = k.partition_of(f"k{n}")
                if partition not in out.partition_keys.values():
                    out.partition_keys[f"k{n}"] = partition
                n += 1
            out.partition_keys = {key: homes[p] for key, p in out.partition_keys.items()}
            return out
        finally:
            await redis.aclose()


@pytest.fixture
async def paused(redis_cluster: EmbeddedCluster) -> AsyncIterator[Callable[[int], EmbeddedServer]]:
    stopped: list[EmbeddedServer] = []

    def pause(port: int) -> EmbeddedServer:
        node = redis_cluster.node_of(port)
        redis_cluster.pause(node)
        stopped.append(node)
        return node

    yield pause
    for node in stopped:
        redis_cluster.resume(node)


async def post(c: httpx.AsyncClient, auth: dict[str, str], partition_key: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    resp = await c.post("/v1/events", json={"type": "t", "partitionkey": partition_key}, headers=auth)
    return resp, time.monotonic() - started


async def test_a_stopped_primary_makes_only_its_partitions_unavailable_until_it_returns(
    settings: Settings, make_client: MakeClient, paused: Callable[[int], EmbeddedServer],
    redis_cluster: EmbeddedCluster,
) -> None:
    layout = await Layout.choose(settings)
    chosen, victim = layout.settings, layout.victim
    down = [k for k, port in layout.partition_keys.items() if port == victim]
    up = [k for k, port in layout.partition_keys.items() if port != victim]
    assert down and up
    redis = connect(chosen)
    try:
        auth = {"Authorization": f"Bearer {(await Services(redis, chosen).producers.create('billing')).key}"}
    finally:
        await redis.aclose()

    async with make_client(prefix=chosen.prefix, redis_timeout_s=TIMEOUT_S, auth_cache_s=60.0) as c:
        for key in down + up:  # every partition works; the producer's key is cached
            assert (await post(c, auth, key))[0].status_code == 202

        paused(victim)
        answers = await asyncio.gather(*(post(c, auth, k) for k in down + up))
        for resp, elapsed in answers[: len(down)]:
            assert_problem(resp, 503)
            assert resp.headers["retry-after"] == "1"
            assert elapsed < 3 * TIMEOUT_S + 1.0, elapsed  # waited for once, not retried
        for resp, _elapsed in answers[len(down):]:
            assert resp.status_code == 202, resp.text
        # Later requests for healthy partitions do not wait for the stopped node.
        for key in up:
            resp, elapsed = await post(c, auth, key)
            assert resp.status_code == 202, resp.text
            assert elapsed < TIMEOUT_S, elapsed

        redis_cluster.resume(redis_cluster.node_of(victim))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            results = [(await post(c, auth, k))[0].status_code for k in down]
            if set(results) == {202}:
                break
            await asyncio.sleep(0.2)
        assert set(results) == {202}
