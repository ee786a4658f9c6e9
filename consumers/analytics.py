"""The analytics consumer: per-minute event counts by type and source (`app.stats`), for GET /v1/stats.

The handler only counts in memory; `StatsWriter` flushes once a second in one transaction. A crash
loses at most that second of counts; a graceful stop flushes on close (details in `app.stats`).
"""

from __future__ import annotations

from redis.asyncio import Redis

from app.settings import Settings
from app.stats import StatsWriter
from consumers.base import Consumer, Delivery


def build(settings: Settings, redis: Redis) -> Consumer:
    """The built-in `analytics` consumer."""
    writer = StatsWriter(redis, settings)

    async def count(delivery: Delivery) -> None:
        if delivery.replay:
            # Replays deliver events this group has already seen (a history replay) or that were
            # dead-lettered before the handler ran (invalid entries): counting them would count twice.
            return
        fields = delivery.pending.fields
        at_ms = int(delivery.entry_id.partition("-")[0])
        writer.add(fields.get(b"type", b"").decode(errors="replace"),
                   fields.get(b"source", b"").decode(errors="replace"), at_ms)

    return Consumer(
        name="analytics",
        handler=count,
        description="per-minute event counts by type and source (GET /v1/stats)",
        concurrency=1,  # the handler never waits: lanes would only add overhead
        batch_size=500,
        close=writer.close,
    )
