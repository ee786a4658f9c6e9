"""The operator's overview: consumer groups with their backlog, dead-letter counts and recent errors,
read through the other service objects and cached for a moment, so that many open dashboards cost
one set of Redis reads per second per process."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import msgspec

from app.deadletters import DeadLetter, DeadLetters, Filter
from app.lifecycle import Lifecycle

T = TypeVar("T")

RECENT_ERRORS = 5


class GroupStatus(msgspec.Struct, kw_only=True):
    """A consumer group as the dashboard shows it (summed over partitions)."""

    name: str
    pending: int
    lag: int | None
    dead_letters: int
    consumers: list[dict[str, Any]]
    spec: dict[str, Any] | None = None
    delivered: int | None = None  # log entries delivered so far (XINFO GROUPS entries-read, summed)

    @property
    def members(self) -> list[str]:
        """Distinct consumer names (one per worker process, across partitions)."""
        return sorted({c["name"] for c in self.consumers})


class Overview(msgspec.Struct, kw_only=True):
    groups: list[GroupStatus]
    recent_errors: list[DeadLetter]
    pending: int
    lag: int | None
    dead_letters: int


async def group_statuses(lifecycle: Lifecycle, dead_letters: DeadLetters) -> list[GroupStatus]:
    groups, dead, delivered = await asyncio.gather(
        lifecycle.groups(), dead_letters.count(), entries_read(lifecycle))
    return [
        GroupStatus(name=g.name, pending=g.pending, lag=g.lag, dead_letters=dead.get(g.name, 0),
                    consumers=g.consumers, spec=g.spec, delivered=delivered.get(g.name))
        for g in groups
    ]


async def entries_read(lifecycle: Lifecycle) -> dict[str, int]:
    """How many log entries each group has been handed so far, summed over partitions."""
    redis, keys = lifecycle.redis, lifecycle.keys
    out: dict[str, int] = {}
    for p in range(keys.partitions):
        if not await redis.exists(keys.stream(p)):
            continue
        for g in await redis.xinfo_groups(keys.stream(p)):
            name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
            out[name] = out.get(name, 0) + int(g.get("entries-read") or 0)
    return out


class Throughput:
    """Deliveries per minute per group: the change in `delivered` over the last few minutes, from
    samples taken whenever the groups are read (every second while a dashboard is open)."""

    def __init__(self, window_s: float = 300.0, min_span_s: float = 5.0) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def add(self, groups: list[GroupStatus], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, {g.name: g.delivered for g in groups if g.delivered is not None}))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def per_minute(self) -> dict[str, float]:
        if len(self._samples) < 2:
            return {}
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 - t0 < self.min_span_s:
            return {}
        return {name: round(max(0, n - first[name]) * 60 / (t1 - t0), 1) for name, n in last.items() if name in first}


async def build(groups: list[GroupStatus], dead_letters: DeadLetters) -> Overview:
    recent = await dead_letters.list(Filter(), RECENT_ERRORS)
    lags = [g.lag for g in groups]
    return Overview(
        groups=groups, recent_errors=recent, pending=sum(g.pending for g in groups),
        lag=None if None in lags else sum(lag for lag in lags if lag is not None),
        dead_letters=sum(g.dead_letters for g in groups),
    )


class Cached(Generic[T]):
    """A value recomputed at most once per `ttl_s`; concurrent callers share one computation."""

    def __init__(self, compute: Callable[[], Awaitable[T]], ttl_s: float = 1.0) -> None:
        self._compute = compute
        self._ttl_s = ttl_s
        self._value: T | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> T:
        if self._value is not None and time.monotonic() < self._expires:
            return self._value
        async with self._lock:
            if self._value is None or time.monotonic() >= self._expires:
                self._value = await self._compute()
                self._expires = time.monotonic() + self._ttl_s
            return self._value
