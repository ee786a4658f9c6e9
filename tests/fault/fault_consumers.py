"""Consumers for the fault suite (`eventflow consume --module tests.fault.fault_consumers`).

The built-in `audit`, `notify` and `analytics` consumers with the timings a bounded test needs, read
from `FAULT_*` variables: notify's backoff, timeout and attempts; the audit writer's leadership lease;
and every consumer's delivery lease (`FAULT_LEASE_S`), which bounds how long an entry whose delivery
or acknowledgement a crash cut off waits before it is delivered again (30 s by default). Plus
`tally`, which counts each delivery per entry in `<prefix>:fault:tally`, so the suite can tell a
redelivery (at-least-once) from a lost event; `FAULT_TALLY_SLEEP_S` makes batches take time, so a
kill lands mid-batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable

from redis.asyncio import Redis

from app.settings import Settings
from consumers import analytics as analytics_consumer
from consumers import audit as audit_consumer
from consumers import notify as notify_consumer
from consumers.base import Backoff, Consumer, Delivery

Builder = Callable[[Settings, Redis], Consumer]


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def tally(settings: Settings, redis: Redis) -> Consumer:
    key = f"{settings.prefix}:fault:tally"
    sleep_s = _float("FAULT_TALLY_SLEEP_S", 0.0)

    async def handle(delivery: Delivery) -> None:
        if sleep_s:
            await asyncio.sleep(sleep_s)
        await redis.hincrby(key, delivery.entry_id, 1)

    return Consumer(name="tally", handler=handle, batch_size=50, concurrency=8, description="counts deliveries")


def audit(settings: Settings, redis: Redis) -> Consumer:
    # A shorter leadership lease: a standby takes over from a killed leader within seconds, not 10 s.
    audit_consumer.LEASE_MS = int(_float("FAULT_AUDIT_LEASE_MS", audit_consumer.LEASE_MS))
    return audit_consumer.build(settings, redis)


def notify(settings: Settings, redis: Redis) -> Consumer:
    backoff = Backoff(base_s=_float("FAULT_NOTIFY_BASE_S", 1.0), factor=2.0,
                      cap_s=_float("FAULT_NOTIFY_CAP_S", 300.0), jitter=0.0)
    return notify_consumer.make(settings, redis, timeout_s=_float("FAULT_NOTIFY_TIMEOUT_S", notify_consumer.TIMEOUT_S),
                                backoff=backoff, max_attempts=int(_float("FAULT_NOTIFY_ATTEMPTS", 5)))


def analytics(settings: Settings, redis: Redis) -> Consumer:
    return analytics_consumer.build(settings, redis)


def _with_lease(build: Builder) -> Builder:
    def wrapped(settings: Settings, redis: Redis) -> Consumer:
        return dataclasses.replace(build(settings, redis), lease_s=_float("FAULT_LEASE_S", 30.0))

    wrapped.__name__ = build.__name__  # `eventflow consume NAME` picks builders by name
    return wrapped


CONSUMERS = [_with_lease(b) for b in (audit, notify, analytics, tally)]
