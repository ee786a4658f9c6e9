"""Analytics: per-minute event counts in Redis, written by the analytics consumer, read for GET /v1/stats.

Storage: one hash per minute (`Keys.stats_minute`), counting events by when EventFlow stored them
(their entry id), not by when the consumer saw them, so a consumer catching up fills the right minutes:

    n                        all events
    t:<type>                 by type
    s:<source>               by source
    x:["<source>","<type>"]  by source and type (a producer key sees only its own types)

Each hash expires `EVENTFLOW_STATS_RETENTION_S` after its minute ends (PEXPIREAT, so a late flush
never extends it); events older than that are not counted.

Writing (`StatsWriter`): the handler only adds to counters in memory; they are flushed every second
(or every 1,000 events) in one MULTI/EXEC, and on close. The consumer acknowledges events before
their counts are flushed, so counting is at most once: a worker killed without a graceful stop loses
at most the last unflushed second of counts. Counts can also come out high in two rare cases: a flush
whose reply is lost to a connection failure after Redis applied it is retried, and an acknowledgement
that fails makes the batch be delivered and counted again. For charts of event rates that is the right
trade; exact counting would cost a write per event.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.connections import redis_errors, transaction
from app.errors import FieldProblem, InvalidEvent
from app.keys import Keys
from app.settings import Settings

log = logging.getLogger("eventflow.stats")

MINUTE_MS = 60_000
MAX_MINUTES = 7 * 24 * 60  # the longest range one request may ask for
MAX_SERIES = 20  # series per chart; the rest are summed as OTHER
OTHER = "(other)"
DEAD_LETTER_SCAN = 1000  # newest dead letters read per partition to count them by group
CACHE_S = 1.0  # many open dashboards asking the same question cost one read per second
TYPE_WINDOW_S = 86_400  # the Types page counts one day: 1,440 minute hashes (a week would cost 7x)
TYPE_CACHE_S = 30.0  # counts move by the minute; a day's read is worth keeping a little longer

TOTAL = "n"
_encode = msgspec.json.Encoder().encode
_decode_pair = msgspec.json.Decoder(tuple[str, str]).decode


def type_field(event_type: str) -> str:
    return "t:" + event_type


def source_field(source: str) -> str:
    return "s:" + source


def pair_field(source: str, event_type: str) -> str:
    return "x:" + _encode((source, event_type)).decode()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- writing -------------------------------------------------------------------------------------


class StatsWriter:
    """Counts events in memory and flushes them to the per-minute hashes (see the module docstring)."""

    def __init__(self, redis: Redis, settings: Settings, *, flush_s: float = 1.0, flush_events: int = 1000) -> None:
        self.redis = redis
        self.keys = Keys(settings.prefix, settings.partitions)
        self.retention_ms = settings.stats_retention_s * 1000
        self.flush_s = flush_s
        self.flush_events = flush_events
        self._counts: dict[int, collections.Counter[str]] = {}
        self._added = 0  # events counted since the last flush
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._failing = False
        self._closing = False

    def add(self, event_type: str, source: str, at_ms: int) -> None:
        """Count one event stored at `at_ms` (call from the event loop: it starts the flusher)."""
        minute = at_ms // MINUTE_MS
        if (minute + 1) * MINUTE_MS + self.retention_ms <= now_ms():
            return  # its minute has already expired
        counts = self._counts.get(minute)
        if counts is None:
            counts = self._counts[minute] = collections.Counter()
        counts.update((TOTAL, type_field(event_type), source_field(source), pair_field(source, event_type)))
        self._added += 1
        if (self._flusher is None or self._flusher.done()) and not self._closing:
            self._flusher = asyncio.create_task(self._flush_forever())
        if self._added >= self.flush_events:
            self._wake.set()

    async def flush(self) -> int:
        """Write the counts so far in one MULTI/EXEC; on failure keep them for the next flush."""
        counts, added = self._counts, self._added
        if not counts:
            return 0
        self._counts, self._added = {}, 0
        pipe = transaction(self.redis)
        for minute, fields in counts.items():
            key = self.keys.stats_minute(minute)
            for name, n in fields.items():
                pipe.hincrby(key, name, n)
            pipe.pexpireat(key, (minute + 1) * MINUTE_MS + self.retention_ms)
        try:
            await pipe.execute()
        except BaseException:
            self._merge_back(counts, added)
            raise
        return added

    def _merge_back(self, counts: dict[int, collections.Counter[str]], added: int) -> None:
        for minute, fields in counts.items():
            self._counts.setdefault(minute, collections.Counter()).update(fields)
        self._added += added

    async def _flush_forever(self) -> None:
        # Stopped by a flag, not by cancelling: on Python 3.11 `wait_for` can swallow a cancellation
        # that arrives as the event is set, and the task would then never end.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            try:
                await self.flush()
                if self._failing:
                    log.info("stats flush works again")
                self._failing = False
            except Exception as exc:  # noqa: BLE001 - counts are kept and flushed on the next tick
                if not self._failing:
                    log.warning("stats flush failed, counts kept in memory: %s: %s", type(exc).__name__, exc)
                self._failing = True

    async def close(self) -> None:
        """Stop the flusher and flush what is left (a graceful stop loses no counts)."""
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher  # ends after at most one more flush (bounded by the Redis timeout)
            self._flusher = None
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - shutting down: report what is lost, do not hide the rest
            log.error("stats flush at shutdown failed; %d event(s) not counted: %s", self._added, exc)


# -- reading -------------------------------------------------------------------------------------


class DeadLetters(msgspec.Struct):
    """Dead letters waiting now, by the group they failed in; `exact` is False when the dead-letter
    stream held more than could be scanned (then counts cover the newest ones and `total` is exact)."""

    total: int
    by_group: dict[str, int]
    exact: bool


class Series(msgspec.Struct):
    """Event counts per bucket for the dashboard's charts: `times[i]` (ms, bucket start) has
    `total[i]` events; `by_type`/`by_source` hold the top series, the rest summed as "(other)"."""

    since: int
    until: int
    bucket_s: int
    source: str | None  # the producer this view is limited to (None: everything)
    times: list[int]
    total: list[int]
    by_type: dict[str, list[int]]
    by_source: dict[str, list[int]]
    dead_letters: DeadLetters


class TypeCount(msgspec.Struct, kw_only=True):
    """Events of one type stored within a window, and the start of the newest minute that had one."""

    type: str
    count: int
    last_minute_ms: int


class Stats:
    """The read side: series over a time range, limited to one source for producer keys."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self._cache: dict[tuple[Any, ...], tuple[float, Series]] = {}
        self._types: tuple[float, list[TypeCount]] | None = None

    async def series(self, since_ms: int | None, until_ms: int | None, bucket_s: int, scope: str | None) -> Series:
        """Counts from `since_ms` (default: an hour before `until_ms`) to `until_ms` (default: now)."""
        until_ms = now_ms() if until_ms is None else until_ms
        since_ms = until_ms - 3_600_000 if since_ms is None else since_ms
        _check_range(since_ms, until_ms, bucket_s)
        bucket_ms = bucket_s * 1000
        first = since_ms // bucket_ms * bucket_ms
        end = ((until_ms - 1) // bucket_ms + 1) * bucket_ms
        key = (scope, first, end, bucket_s)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        async with redis_errors(self.settings):
            minutes = list(range(first // MINUTE_MS, end // MINUTE_MS))
            hashes = await self._read_minutes(minutes)
            dead = await self.dead_letters(scope)
        result = _aggregate(minutes, hashes, first, end, bucket_s, scope, dead)
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + CACHE_S, result)
        return result

    @property
    def type_window_s(self) -> int:
        """How far back `type_counts` counts: TYPE_WINDOW_S, or the stats retention when shorter."""
        return min(TYPE_WINDOW_S, self.settings.stats_retention_s)

    async def type_counts(self) -> list[TypeCount]:
        """Every event type counted over the last `type_window_s`, most events first. Unlike `series`,
        no type is folded into "(other)". Cached for TYPE_CACHE_S."""
        if self._types is not None and self._types[0] > time.monotonic():
            return self._types[1]
        newest = now_ms() // MINUTE_MS
        minutes = list(range(newest - max(1, self.type_window_s // 60) + 1, newest + 1))
        async with redis_errors(self.settings):
            hashes = await self._read_minutes(minutes)
        counts: collections.Counter[str] = collections.Counter()
        last: dict[str, int] = {}
        for minute, fields in zip(minutes, hashes, strict=True):  # oldest first: the last write wins
            for name, n in fields.items():
                if name.startswith(b"t:"):
                    event_type = name[2:].decode(errors="replace")
                    counts[event_type] += int(n)
                    last[event_type] = minute * MINUTE_MS
        result = [TypeCount(type=t, count=n, last_minute_ms=last[t]) for t, n in counts.items()]
        result.sort(key=lambda c: (-c.count, c.type))
        self._types = (time.monotonic() + TYPE_CACHE_S, result)
        return result

    async def _read_minutes(self, minutes: list[int]) -> list[dict[bytes, bytes]]:
        pipe = self.redis.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(self.keys.stats_minute(minute))
        return list(await pipe.execute())

    async def dead_letters(self, scope: str | None) -> DeadLetters:
        """Dead letters by group, from each partition's dead-letter stream (newest DEAD_LETTER_SCAN)."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.xlen(self.keys.dead_letters(p))
            pipe.xrevrange(self.keys.dead_letters(p), count=DEAD_LETTER_SCAN)
        replies = await pipe.execute()
        by_group: collections.Counter[str] = collections.Counter()
        total, exact = 0, True
        for length, entries in zip(replies[::2], replies[1::2], strict=True):
            exact = exact and length <= len(entries)
            for _id, fields in entries:
                if scope is not None and fields.get(b"source", b"").decode() != scope:
                    continue
                by_group[fields.get(b"_group", b"?").decode()] += 1
            total += length if scope is None else 0
        if scope is not None:
            total = sum(by_group.values())  # only what the scan saw can be told apart by source
        return DeadLetters(total=total, by_group=dict(sorted(by_group.items())), exact=exact)


def _check_range(since_ms: int, until_ms: int, bucket_s: int) -> None:
    problems = []
    if bucket_s < 60 or bucket_s % 60 or bucket_s > 86_400:
        problems.append(FieldProblem("/bucket", "seconds per bucket: a multiple of 60, at most 86400"))
    if until_ms <= since_ms:
        problems.append(FieldProblem("/until", "must be after since"))
    elif (until_ms - since_ms) // MINUTE_MS > MAX_MINUTES:
        problems.append(FieldProblem("/since", f"a range spans at most {MAX_MINUTES // 1440} days"))
    if problems:
        raise InvalidEvent(problems)


def _aggregate(
    minutes: list[int], hashes: list[dict[bytes, bytes]], first: int, end: int, bucket_s: int,
    scope: str | None, dead: DeadLetters,
) -> Series:
    bucket_ms = bucket_s * 1000
    size = (end - first) // bucket_ms
    total = [0] * size
    by_type: dict[str, list[int]] = {}
    by_source: dict[str, list[int]] = {}
    for minute, fields in zip(minutes, hashes, strict=True):
        i = (minute * MINUTE_MS - first) // bucket_ms
        for raw_name, raw_count in fields.items():
            name, count = raw_name.decode(), int(raw_count)
            kind, _, rest = name.partition(":")
            if scope is None:
                target = {"t": by_type, "s": by_source}.get(kind)
                if name == TOTAL:
                    total[i] += count
                elif target is not None:
                    target.setdefault(rest, [0] * size)[i] += count
            elif kind == "x":
                source, event_type = _decode_pair(rest)
                if source == scope:
                    total[i] += count
                    by_type.setdefault(event_type, [0] * size)[i] += count
                    by_source.setdefault(source, [0] * size)[i] += count
    return Series(
        since=first, until=end, bucket_s=bucket_s, source=scope,
        times=[first + n * bucket_ms for n in range(size)], total=total,
        by_type=_top(by_type.items()), by_source=_top(by_source.items()), dead_letters=dead,
    )


def _top(series: Iterable[tuple[str, list[int]]]) -> dict[str, list[int]]:
    """The MAX_SERIES largest series by their sum, largest first; the others summed as OTHER."""
    ranked = sorted(series, key=lambda item: (-sum(item[1]), item[0]))
    out = dict(ranked[:MAX_SERIES])
    if len(ranked) > MAX_SERIES:
        out[OTHER] = [sum(col) for col in zip(*(values for _, values in ranked[MAX_SERIES:]), strict=True)]
    return out
