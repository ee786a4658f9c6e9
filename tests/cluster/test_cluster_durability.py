"""`fsync` durability on a cluster: a batch spread over every primary is answered only after each
primary that holds some of it has confirmed the fsync (WAITAOF goes to the node of the appends,
on the connection that sent them), and a primary that cannot confirm fails the request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
import redis as redis_sync

from app.embedded import EmbeddedCluster
from app.keys import Keys
from app.service import Services
from app.settings import Durability, Settings
from tests.integration.helpers import assert_problem

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def always(redis_cluster: EmbeddedCluster) -> Iterator[list[redis_sync.Redis]]:
    """Every primary fsyncs its AOF before answering a write, for this test."""
    nodes = [redis_sync.Redis(port=node.port) for node in redis_cluster.nodes]
    for node in nodes:
        node.config_set("appendfsync", "always")
    yield nodes
    for node in nodes:
        node.config_set("appendfsync", "everysec")
        node.close()


def _waitaof_calls(node: redis_sync.Redis) -> int:
    return int(node.info("commandstats").get("cmdstat_waitaof", {}).get("calls", 0))


async def test_a_batch_over_every_primary_waits_for_each_one_s_fsync(
    make_client: MakeClient, settings: Settings, services: Services, always: list[redis_sync.Redis]
) -> None:
    fsync = settings.replace(durability=Durability.FSYNC)
    key = (await services.producers.create("billing")).key
    keys = Keys(fsync.prefix, fsync.partitions)
    # One event per partition: with 16 partitions over 3 primaries, every primary gets some.
    events, by_partition = [], {}
    for n in range(1000):
        partition = keys.partition_of(f"k{n}")
        if partition not in by_partition:
            by_partition[partition] = f"k{n}"
            events.append({"type": "t", "partitionkey": f"k{n}", "data": n})
    assert len(by_partition) == fsync.partitions
    owners = {services.redis.get_node_from_key(keys.stream(p)).port for p in by_partition}
    assert len(owners) == len(always)
    before = [_waitaof_calls(node) for node in always]
    async with make_client(durability=Durability.FSYNC) as client:
        resp = await client.post("/v1/events/batch", json=events, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 202, resp.text
    assert len(resp.json()["events"]) == fsync.partitions
    after = [_waitaof_calls(node) for node in always]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


async def test_a_primary_that_cannot_confirm_the_fsync_fails_the_request(
    make_client: MakeClient, settings: Settings, services: Services, always: list[redis_sync.Redis]
) -> None:
    key = (await services.producers.create("billing")).key
    always[1].config_set("appendonly", "no")  # WAITAOF on it now answers with an error, never "done"
    try:
        keys = Keys(settings.prefix, settings.partitions)
        port = always[1].connection_pool.connection_kwargs["port"]
        pk = next(f"k{n}" for n in range(1000)
                  if services.redis.get_node_from_key(keys.stream(keys.partition_of(f"k{n}"))).port == port)
        async with make_client(durability=Durability.FSYNC) as client:
            resp = await client.post("/v1/events", json={"type": "t", "partitionkey": pk},
                                     headers={"Authorization": f"Bearer {key}"})
        problem = assert_problem(resp, 503)
        assert "not confirm" in problem["detail"] and resp.headers["retry-after"] == "1"
    finally:
        always[1].config_set("appendonly", "yes")
