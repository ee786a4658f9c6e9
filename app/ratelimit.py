"""Per-producer rate limits (EVENTFLOW_PRODUCER_RATE_LIMIT events per second, 0: off).

One GCRA script call per ingest request (app/lua/rate_limit.lua): atomic in Redis, so every web
process shares each producer's allowance, timed by the server's clock. A producer may send a burst of
one second's worth at once; beyond the limit it gets 429 with Retry-After. A batch counts as its
number of events. With the limit off, ingest never builds a `RateLimit` and pays nothing.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from app.connections import redis_errors
from app.errors import TooManyRequests
from app.keys import Keys
from app.scripts import source
from app.settings import Settings

BURST_S = 1.0  # how much of the allowance may arrive at once


class RateLimit:
    """The shared limit of `settings.producer_rate_limit` events per second per producer."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self._script = redis.register_script(source("rate_limit"))
        self._interval_us = 1e6 / settings.producer_rate_limit
        self._tolerance_us = BURST_S * 1e6

    async def take(self, producer: str, events: int) -> None:
        """Count `events` against the producer's allowance, or raise TooManyRequests (nothing counted)."""
        async with redis_errors(self.settings):
            wait_us = int(await self._script(keys=[self.keys.rate_limit(producer)],
                                             args=[repr(self._interval_us), repr(self._tolerance_us), events]))
        if wait_us > 0:
            retry_after_s = max(1, math.ceil(wait_us / 1e6))
            raise TooManyRequests(
                f"producer {producer!r} is over its rate limit of {self.settings.producer_rate_limit:g} events "
                f"per second (EVENTFLOW_PRODUCER_RATE_LIMIT); retry in {retry_after_s} s",
                retry_after_s=retry_after_s,
            )


def from_settings(redis: Redis, settings: Settings) -> RateLimit | None:
    """The limit, or None when EVENTFLOW_PRODUCER_RATE_LIMIT is 0 (off)."""
    return RateLimit(redis, settings) if settings.producer_rate_limit > 0 else None
