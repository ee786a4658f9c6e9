"""A consumer whose handler kills its own process on one event (`eventflow consume --module
tests.integration.crash_consumers`): a poison pill, like a handler that runs out of memory or calls a
library that aborts. Each run of the handler is counted in Redis (`<prefix>:test:runs` hash: entry id ->
runs) before it acts, so the test sees every attempt, including the ones that killed the worker.
"""

from __future__ import annotations

import os

from redis.asyncio import Redis

from app.settings import Settings
from consumers.base import Consumer, Delivery


def crasher(settings: Settings, redis: Redis) -> Consumer:
    key = f"{settings.prefix}:test:runs"

    async def handle(delivery: Delivery) -> None:
        await redis.hincrby(key, delivery.entry_id, 1)
        if delivery.data == "poison":
            os._exit(3)  # no cleanup, no ack: what an OOM kill or an abort in C code looks like

    return Consumer(name="crasher", handler=handle, max_attempts=3, batch_size=10, concurrency=4,
                    lease_s=float(os.environ.get("SAMPLE_LEASE_S", "2")),
                    ordered=os.environ.get("SAMPLE_ORDERED") == "1")


CONSUMERS = [crasher]
