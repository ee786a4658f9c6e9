"""Consumers for the multi-process tests, run with `eventflow consume --module tests.integration.sample_consumers`.

Each delivery is counted in Redis (`<prefix>:test:seen` hash: entry id -> deliveries) so the test can
check exactly-once processing across processes. SAMPLE_SLEEP_S makes handlers slow (to kill a worker
mid-batch); SAMPLE_LEASE_S sets the lease.
"""

from __future__ import annotations

import asyncio
import os

from redis.asyncio import Redis

from app.settings import Settings
from consumers.base import Consumer, Delivery


def counter(settings: Settings, redis: Redis) -> Consumer:
    sleep_s = float(os.environ.get("SAMPLE_SLEEP_S", "0"))
    key = f"{settings.prefix}:test:seen"

    async def handle(delivery: Delivery) -> None:
        if sleep_s:
            await asyncio.sleep(sleep_s)
        await redis.hincrby(key, delivery.entry_id, 1)

    return Consumer(
        name="counter", handler=handle, batch_size=int(os.environ.get("SAMPLE_BATCH", "100")),
        concurrency=int(os.environ.get("SAMPLE_CONCURRENCY", "16")),
        lease_s=float(os.environ.get("SAMPLE_LEASE_S", "30")),
    )


CONSUMERS = [counter]
