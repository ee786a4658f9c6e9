"""The log: the only module that appends to and reads from the event streams.

Appends issued by concurrent requests in one event-loop tick are coalesced: each flush sends one
`append.lua` call per partition (plus the durability wait) in one pipeline, so under load the Redis
round trip is shared by every request in flight, the way a database's group commit works.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec
from redis import exceptions as rx
from redis.asyncio import Redis, RedisCluster

from app.connections import execute_packed, execute_waited, is_unavailable, pairs, redis_errors, unavailable
from app.errors import FieldProblem, InvalidEvent, NotFound, Unavailable
from app.events import Record
from app.ids import is_entry_id, made_entry
from app.keys import Keys
from app.metrics import default_metrics
from app.scripts import Scripts, source
from app.settings import Durability, Settings

log = logging.getLogger("eventflow.store")

FLUSHES_IN_FLIGHT = 2
_MAX_EVENTS_PER_CALL = 1000  # keeps one script call short, so Redis never stalls for long
_QUERY_BUDGET = 5000  # index entries one query script call may look at
_MAX_QUERY_CALLS = 20


class Prepared(NamedTuple):
    """An enriched event ready to append; `event_id` is "" when the append script makes one."""

    partition: int
    event_id: str
    source: str
    type: str
    fields: list[str]


class Appended(msgspec.Struct):
    """Where an event landed; `duplicate` when (source, id) was seen within the window."""

    id: str
    entry_id: str
    partition: int
    duplicate: bool = False


class _Waiter(NamedTuple):
    items: Sequence[Prepared]
    future: asyncio.Future[list[Appended]]
    source: str


class EventLog:
    """Append to and query the partitioned log."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.scripts = Scripts(redis)
        self._queue: list[_Waiter] = []
        self._scheduled = False
        self._in_flight = 0
        self._window_ms = str(settings.idempotency_window_s * 1000)
        self._salt = secrets.randbits(32)  # distinguishes made event ids across deployments
        self.cluster = isinstance(redis, RedisCluster)
        self.metrics = default_metrics()

    # -- append ---------------------------------------------------------------------------------
    async def append(self, items: Sequence[Prepared], source: str) -> list[Appended]:
        """Append events (all or none per partition); resolves once they are durable."""
        future: asyncio.Future[list[Appended]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiter(items, future, source))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        # A flush starts on the next loop tick, so appends issued in this tick share it. At most
        # FLUSHES_IN_FLIGHT run at once: Python prepares the next while Redis runs the last.
        if not self._scheduled and self._queue and self._in_flight < FLUSHES_IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        waiters, self._queue = self._queue, []
        self._in_flight += 1
        task = asyncio.ensure_future(self._flush_and_answer(waiters))
        task.add_done_callback(_log_crash)

    async def _flush_and_answer(self, waiters: list[_Waiter]) -> None:
        try:
            results = await self._flush(waiters)
        except BaseException as exc:
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for waiter, result in zip(waiters, results, strict=True):
                if waiter.future.done():
                    continue
                if isinstance(result, Exception):  # only its partitions failed (a cluster node is down)
                    waiter.future.set_exception(result)
                else:
                    waiter.future.set_result(result)
        finally:
            self._in_flight -= 1
            self._schedule()

    async def _flush(self, waiters: list[_Waiter]) -> list[list[Appended] | Exception]:
        calls = self._calls(waiters)
        started = time.perf_counter()
        async with redis_errors(self.settings):
            replies = await self._run_calls(calls, waiters)
        elapsed = time.perf_counter() - started
        by_item: dict[int, Appended] = {}
        failed: dict[int, Exception] = {}
        repeats: dict[str, int] = {}
        for (partition, items), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                failed.update((id(item), reply) for item in items)
                continue
            # append.lua: entry id and made event id ('' = the producer's) per event, then the
            # 1-based positions of the repeats.
            ids, repeat_positions = reply[: 2 * len(items)], reply[2 * len(items) :]
            for item, entry_id, made in zip(items, ids[0::2], ids[1::2], strict=True):
                by_item[id(item)] = Appended(item.event_id or made.decode(), entry_id.decode(), partition)
            for n in repeat_positions:
                appended = by_item[id(items[n - 1])]
                appended.duplicate = True
                repeats[items[n - 1].source] = repeats.get(items[n - 1].source, 0) + 1
        self._count(waiters, repeats, elapsed)
        if failed:
            return [self._outcome(w, by_item, failed) for w in waiters]
        return [[by_item[id(item)] for item in w.items] for w in waiters]

    def _outcome(
        self, waiter: _Waiter, by_item: dict[int, Appended], failed: dict[int, Exception]
    ) -> list[Appended] | Exception:
        """A waiter fails when any of its events' calls failed (the rest of its events may be in the
        log: the producer retries with the same event ids, and idempotency answers for those)."""
        for item in waiter.items:
            exc = failed.get(id(item))
            if exc is not None:
                return unavailable(exc, self.settings) if is_unavailable(exc) else exc
        return [by_item[id(item)] for item in waiter.items]

    def _count(self, waiters: list[_Waiter], repeats: dict[str, int], elapsed_s: float) -> None:
        """Metrics, once per flush (not per event): events per producer, repeats, round-trip time."""
        per_source: dict[str, int] = {}
        for waiter in waiters:
            per_source[waiter.source] = per_source.get(waiter.source, 0) + len(waiter.items)
        self.metrics.appended(per_source, repeats, elapsed_s, sum(per_source.values()))

    def _calls(self, waiters: list[_Waiter]) -> list[tuple[int, list[Prepared]]]:
        per_partition: dict[int, list[Prepared]] = {}
        for waiter in waiters:
            for item in waiter.items:
                per_partition.setdefault(item.partition, []).append(item)
        calls = []
        for partition, items in sorted(per_partition.items()):
            for start in range(0, len(items), _MAX_EVENTS_PER_CALL):
                calls.append((partition, items[start : start + _MAX_EVENTS_PER_CALL]))
        return calls

    async def _run_calls(self, calls: list[tuple[int, list[Prepared]]], waiters: list[_Waiter]) -> list[Any]:
        """Each call's reply, or the error that stopped it; an error stops only the calls sent to one
        node of a cluster (on one server every call shares the fate of the connection)."""
        pending = list(range(len(calls)))
        replies: list[Any] = [None] * len(calls)
        stats = self._producer_stats(waiters)
        if self.cluster and stats:
            # Counters, possibly on a node that holds no appended partition: never let them delay
            # (or fail) the answer when that node is down.
            _background(execute_packed(self.redis, stats))
            stats = []
        for _attempt in range(10):
            commands = [("EVALSHA", self.scripts.append.sha, 2, *self._append_args(*calls[i])) for i in pending]
            results = await self._execute(commands + stats)
            stats = []
            retry = []
            for i, result in zip(pending, results, strict=False):
                if isinstance(result, rx.NoScriptError):
                    retry.append(i)
                elif isinstance(result, Exception):
                    replies[i] = result
                elif result == [b"BEHIND"]:
                    await self._catch_up(calls[i][0])
                    retry.append(i)
                else:
                    replies[i] = result
            if not retry:
                return replies
            if any(isinstance(results[pending.index(i)], rx.NoScriptError) for i in retry):
                await self.redis.script_load(source("append"))
            pending = retry
        raise Unavailable("the log's index could not catch up with direct writes; try again")

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Run the commands; with a durability mode, a call whose node did not confirm it within the
        timeout (or failed) gets that error as its result."""
        wait = self._durability_wait()
        if wait is None:
            return await execute_packed(self.redis, commands)
        results, waits = await execute_waited(self.redis, commands, wait)
        return [self._durable(result, waited) for result, waited in zip(results, waits, strict=True)]

    def _append_args(self, partition: int, items: Sequence[Prepared]) -> list[Any]:
        # All the events in one MessagePack argument (see append.lua): packing ~18 arguments per
        # event was most of a flush's client time, and parsing them a good part of the server's.
        flat: list[Any] = []
        for item in items:
            flat.append(len(item.fields))
            flat += item.fields
        return [self.keys.stream(partition), self.keys.indexed(partition), self.keys.base(partition),
                self._window_ms, partition, self._salt, _msgpack(flat)]

    def _producer_stats(self, waiters: list[_Waiter]) -> list[tuple[Any, ...]]:
        counts: dict[str, int] = {}
        for waiter in waiters:
            counts[waiter.source] = counts.get(waiter.source, 0) + len(waiter.items)
        now_ms = str(time.time_ns() // 1_000_000)
        commands: list[tuple[Any, ...]] = []
        for name, count in counts.items():
            key = self.keys.producer_stats(name)
            commands += [("HINCRBY", key, "events", count), ("HSET", key, "last_seen_ms", now_ms)]
        return commands

    def _durability_wait(self) -> tuple[Any, ...] | None:
        """WAIT or WAITAOF, sent after the appends on the same connection to the node that holds
        them (execute_waited), so it waits for exactly those writes."""
        timeout = self.settings.durability_timeout_ms
        if self.settings.durability is Durability.FSYNC:
            return ("WAITAOF", 1, 0, timeout)
        if self.settings.durability is Durability.REPLICA:
            return ("WAIT", 1, timeout)
        return None

    def _durable(self, result: Any, waited: Any) -> Any:
        if isinstance(result, Exception) or (isinstance(result, list) and result[:1] == [b"BEHIND"]):
            return result  # BEHIND: nothing was appended, the call is sent again
        durability = self.settings.durability
        if isinstance(waited, Exception):
            # The server refused the wait (its AOF was turned off since start-up, say) or the
            # connection broke after the appends: written, not confirmed. A 503, never a 500.
            return Unavailable(
                f"the events were written but the server did not confirm them {durability.value} ({waited}); "
                "retry with the same event ids",
                retry_after_s=self.settings.retry_after_s,
            )
        if waited[0] >= 1 if durability is Durability.FSYNC else waited >= 1:
            return result
        return Unavailable(
            f"the events were written but not confirmed {durability.value} within "
            f"{self.settings.durability_timeout_ms} ms; retry with the same event ids",
            retry_after_s=self.settings.retry_after_s,
        )

    async def _catch_up(self, partition: int) -> None:
        """Index entries that producers XADDed directly (bounded chunks, never one long call)."""
        keys = [self.keys.stream(partition), self.keys.indexed(partition)]
        while await self.scripts.catch_up(keys, [self.keys.base(partition), self._window_ms, 1000]):
            pass

    async def catch_up(self) -> None:
        async with redis_errors(self.settings):
            for partition in range(self.keys.partitions):
                await self._catch_up(partition)

    # -- read -----------------------------------------------------------------------------------
    async def get(self, ident: str, source: str | None = None) -> Record:
        """One event by event id or by stream entry id; `source` picks its own event when two
        sources used the same event id."""
        await self.catch_up()
        async with redis_errors(self.settings):
            if is_entry_id(ident):
                found = await self._entry_any_partition(ident)
                if found is not None:
                    return found
            made = made_entry(ident)
            if made is not None and made[0] < self.keys.partitions:
                record = await self._entry(*made)
                if record is not None and record.event.get("id") == ident:
                    return record
            pipe = self.redis.pipeline(transaction=False)
            for partition in range(self.keys.partitions):
                pipe.get(self.keys.event_id(partition, ident))
                pipe.get(self.keys.source_event_id(partition, source or "", ident))
            values = await pipe.execute()
            for partition, (shared, own) in enumerate(zip(values[::2], values[1::2], strict=True)):
                # `own` exists only for a source whose id another source had used first (append.lua).
                value = own or (shared and shared.split(b" ", 1)[0])
                if value:
                    record = await self._entry(partition, value.decode())
                    if record is not None:
                        return record
        raise NotFound(f"no event with id {ident!r} (ids are looked up for the idempotency window; "
                       "older events can be found by entry id or by time)")

    async def _entry_any_partition(self, entry_id: str) -> Record | None:
        pipe = self.redis.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            pipe.xrange(self.keys.stream(partition), entry_id, entry_id)
        for partition, entries in enumerate(await pipe.execute()):
            if entries:
                return Record.from_entry(_s(entries[0][0]), partition, entries[0][1])
        return None

    async def _entry(self, partition: int, entry_id: str) -> Record | None:
        entries = await self.redis.xrange(self.keys.stream(partition), entry_id, entry_id)
        return Record.from_entry(_s(entries[0][0]), partition, entries[0][1]) if entries else None

    async def query(self, q: Query) -> Page:
        """Events filtered by time range, type and source, one page at a time, across partitions."""
        await self.catch_up()
        async with redis_errors(self.settings):
            per_partition = await asyncio.gather(
                *(self._query_partition(q, p) for p in range(self.keys.partitions))
            )
        return _merge(q, per_partition)

    async def _query_partition(self, q: Query, partition: int) -> tuple[list[Record], tuple[int, int] | None]:
        """Up to q.limit records of one partition, and how far the scan got when it stopped early."""
        hi, lo = q.bounds(partition)
        stream = self.keys.stream(partition)
        if q.type is None and q.source is None:
            if q.newest_first:
                raw = await self.redis.xrevrange(stream, hi, lo, count=q.limit)
            else:
                raw = await self.redis.xrange(stream, lo, hi, count=q.limit)
            return [Record.from_entry(_s(e), partition, f) for e, f in raw], None
        if q.type is not None:
            index, match = self.keys.type_index(partition, q.type), q.source or ""
        else:
            index, match = self.keys.source_index(partition, q.source or ""), ""
        records: list[Record] = []
        last = ""
        for _ in range(_MAX_QUERY_CALLS):
            reply = await self.scripts.query(
                [stream, index], [hi, lo, q.limit - len(records), match, "1" if q.newest_first else "0", _QUERY_BUDGET]
            )
            last = _s(reply[0])
            records += [Record.from_entry(_s(e), partition, pairs(f)) for e, f in reply[1:]]
            if not last or len(records) >= q.limit:
                return records, None
            if q.newest_first:
                hi = "(" + last
            else:
                lo = "(" + last
        return records, _entry_key(last)


class Query(msgspec.Struct, kw_only=True):
    """A page request; `cursor` continues after the last record of the previous page."""

    since_ms: int | None = None
    until_ms: int | None = None
    type: str | None = None
    source: str | None = None
    limit: int = 100
    newest_first: bool = True
    cursor: str | None = None

    def after(self) -> tuple[int, int, int] | None:
        if self.cursor is None:
            return None
        try:
            entry_id, _, partition = base64.urlsafe_b64decode(self.cursor.encode() + b"==").decode().partition("/")
            if not is_entry_id(entry_id):  # Redis answers an id beyond 2^64 with an error
                raise ValueError(entry_id)
            ms, seq = _entry_key(entry_id)
            return ms, seq, int(partition)
        except (ValueError, UnicodeDecodeError):
            raise InvalidEvent([FieldProblem("/cursor", "not a cursor returned by this API")]) from None

    def bounds(self, partition: int) -> tuple[str, str]:
        """(upper, lower) XRANGE bounds for one partition, honouring the time range and cursor.

        Redis refuses ids below 0 or beyond 2^64-1 and an exclusive "(0-0", so a time range is clamped
        to what it accepts, and one no entry id can fall in becomes `_EMPTY` (an upper bound below the
        lower one: XRANGE answers nothing)."""
        until, since = self.until_ms, self.since_ms
        if (until is not None and until <= 0) or (since is not None and since > _MAX_MS):
            return _EMPTY
        hi = f"({until}-0" if until is not None and until <= _MAX_MS else "+"
        lo = f"{since}-0" if since is not None and since > 0 else "-"
        after = self.after()
        if after is not None:
            ms, seq, cp = after
            # Records are ordered by (entry id, partition); ties across partitions are rare but real.
            if self.newest_first:
                inclusive = partition < cp
                hi = _tighter(hi, f"{'' if inclusive else '('}{ms}-{seq}", upper=True)
            else:
                inclusive = partition > cp
                lo = _tighter(lo, f"{'' if inclusive else '('}{ms}-{seq}", upper=False)
        return hi, lo


_MAX_MS = 2**64 - 1
_EMPTY = ("0-0", "0-1")  # (upper, lower): no entry id is both <= 0-0 and >= 0-1


class Page(msgspec.Struct):
    events: list[Record]
    next_cursor: str | None


def _merge(q: Query, per_partition: list[tuple[list[Record], tuple[int, int] | None]]) -> Page:
    def key(r: Record) -> tuple[int, int, int]:
        return (*_entry_key(r.entry_id), r.partition)

    streams = [records for records, _ in per_partition]
    merged = list(heapq.merge(*streams, key=key, reverse=q.newest_first))
    # A partition whose scan stopped early is only complete down to where it stopped.
    stops = [stop for _, stop in per_partition if stop is not None]
    if stops:
        bound = max(stops) if q.newest_first else min(stops)
        merged = [r for r in merged if (_entry_key(r.entry_id) >= bound) == q.newest_first]
    page = merged[: q.limit]
    more = len(merged) > q.limit or any(len(s) >= q.limit for s in streams) or bool(stops)
    cursor = None
    if page and more:
        last = page[-1]
        cursor = base64.urlsafe_b64encode(f"{last.entry_id}/{last.partition}".encode()).decode().rstrip("=")
    elif stops and not page:
        bound = max(stops) if q.newest_first else min(stops)
        cursor = base64.urlsafe_b64encode(f"{bound[0]}-{bound[1]}/0".encode()).decode().rstrip("=")
    return Page(page, cursor)


def _tighter(current: str, candidate: str, *, upper: bool) -> str:
    if current in ("+", "-"):
        return candidate
    cur, cand = _entry_key(current.lstrip("(")), _entry_key(candidate.lstrip("("))
    if cur == cand:
        return current if current.startswith("(") else candidate
    return candidate if (cand < cur) == upper else current


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


_msgpack = msgspec.msgpack.Encoder().encode  # fields are str: the script's cmsgpack reads no bin type


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("append flush crashed", exc_info=task.exception())


_BACKGROUND: set[asyncio.Future[Any]] = set()


def _background(work: Any) -> None:
    """Run a best-effort Redis call without waiting for it (its errors are only logged)."""
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _BACKGROUND.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.debug("producer stats not counted: %s", task.exception())
