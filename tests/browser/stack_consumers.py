"""Consumers for the browser tests (`eventflow consume --module tests.browser.stack_consumers`).

`recorder` always succeeds, but not while `<prefix>:test:hold` exists (so a test can watch an event
sit in progress for as long as it looks); `flaky` refuses every event for good while
`<prefix>:test:broken` exists (so a test can make it fail, then fix it and replay); `analytics` is
the built-in one that keeps the per-minute counts behind the overview's chart.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from app.settings import Settings
from consumers import analytics as builtin_analytics
from consumers.base import Consumer, Delivery, Permanent


def recorder(settings: Settings, redis: Redis) -> Consumer:
    hold_key = f"{settings.prefix}:test:hold"

    async def handle(delivery: Delivery) -> None:
        while await redis.exists(hold_key):
            await asyncio.sleep(0.05)

    return Consumer(name="recorder", handler=handle, description="Records every event (a test consumer)")


def flaky(settings: Settings, redis: Redis) -> Consumer:
    broken_key = f"{settings.prefix}:test:broken"

    async def handle(delivery: Delivery) -> None:
        if await redis.exists(broken_key):
            raise Permanent("payments API refused the request: 503 Service Unavailable")

    return Consumer(name="flaky", handler=handle, types=("*",), max_attempts=3,
                    description="Calls a payments API that a test can break")


def analytics(settings: Settings, redis: Redis) -> Consumer:
    return builtin_analytics.build(settings, redis)


CONSUMERS = [recorder, flaky, analytics]
