"""Growing from one node to a cluster the way docs/scaling.md says: `redis-cli --cluster import
--cluster-copy` moves every key, hash tags keep each partition whole on one node, and the log, its
indexes, consumer groups and pending deliveries arrive intact — EventFlow carries on from there."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from app.connections import connect
from app.dispatch import Dispatch
from app.embedded import EmbeddedCluster, EmbeddedServer
from app.events import parse_batch
from app.service import Services
from app.settings import Settings
from app.store import Query
from consumers.base import Consumer, Delivery
from consumers.runner import Runner
from tests.cluster.conftest import PARTITIONS
from tests.integration.helpers import wait_for


async def test_a_single_node_log_moves_into_a_cluster_and_consumers_carry_on(
    tmp_path: Path, redis_cluster: EmbeddedCluster
) -> None:
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:  # python3 run.py test installs redis-tools; say so rather than pass silently
        pytest.fail("redis-cli is not installed (apt-get install redis-tools)")
    single = EmbeddedServer(tmp_path / "single").start()
    try:
        before = Settings(redis_url=single.url, prefix="grown", partitions=PARTITIONS)
        redis = connect(before)
        events = [{"type": "order.created", "subject": f"order-{n}", "data": {"n": n}} for n in range(300)]
        await Services(redis, before).ingest(parse_batch(msgspec.json.encode(events), "application/json"),
                                             "shop", {})
        dispatch = Dispatch(redis, before)
        await dispatch.ensure_groups("billing")
        taken = sum([len((await dispatch.read("billing", "old-worker", p, 3, None)).entries)
                     for p in range(PARTITIONS)])  # delivered, never acknowledged: pending
        await redis.aclose()

        node = redis_cluster.nodes[0]
        done = await asyncio.to_thread(
            subprocess.run, [redis_cli, "--cluster", "import", f"127.0.0.1:{node.port}", "--cluster-from",
                             f"127.0.0.1:{single.port}", "--cluster-copy"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    finally:
        single.stop()

    after = before.replace(redis_url=redis_cluster.url)
    redis = connect(after)
    try:
        services = Services(redis, after)
        page = await services.log.query(Query(limit=1000))
        assert sorted(int(msgspec.json.decode(r.event["data"])["n"]) for r in page.events) == list(range(300))
        by_type = await services.log.query(Query(type="order.created", limit=1000))
        assert len(by_type.events) == 300
        pending = sum([(await redis.xpending(services.log.keys.stream(p), "billing"))["pending"]
                       for p in range(PARTITIONS)])
        assert pending == taken > 0

        seen: list[int] = []

        async def handler(delivery: Delivery) -> None:
            seen.append(delivery.data["n"])

        runner = Runner([Consumer("billing", handler, lease_s=1.5)], redis, after, "new-worker")
        task = asyncio.create_task(runner.run())
        try:  # everything: what was never read, and (after the lease) what the old worker held
            await wait_for(lambda: sorted(set(seen)) == list(range(300)), timeout_s=20)
        finally:
            runner.stop.set()
            await asyncio.wait_for(task, 15)
    finally:
        await redis.aclose()
