"""The dispatcher's Redis side: consumer groups, reclaiming, retry schedule, acks and dead letters.

Consumer groups on the log are the dispatcher. Each group also has a replay stream (per partition)
holding events queued for redelivery to that group only. A failed delivery stays in the group's
pending list (PEL) while it waits for its backoff in a sorted set (the retry schedule); when due it
is claimed atomically by one worker (claim_due.lua). Entries idle past the lease that are not
scheduled for a retry belong to a dead or stuck worker and are reclaimed with XPENDING + XCLAIM.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from redis import exceptions as rx
from redis.asyncio import Redis

from app.connections import execute_packed, pairs, transaction
from app.keys import Keys
from app.scripts import SCRIPT_VALUES_MAX, Scripts
from app.settings import Settings

LOG, REPLAY = "l", "r"


class Pending(msgspec.Struct, kw_only=True):
    """One delivery in hand: where it was read from, and the log entry it stands for."""

    kind: str  # LOG or REPLAY
    stream_id: str  # its id in the stream it was read from
    entry_id: str  # its id in the log (the same for LOG)
    partition: int
    fields: dict[bytes, bytes]
    deliveries: int = 1
    # Left pending by a worker that stopped before finishing it (read again as its own at start-up,
    # or taken over after the lease): its last attempt may have killed that worker.
    recovered: bool = False
    # Set by the consumer loop for a recovered delivery whose last attempt began and never ended:
    # None (no suspect), else whether that attempt ran alone in its process.
    suspect: bool | None = None

    @property
    def member(self) -> str:
        """Its name in the retry schedule."""
        return f"{self.kind}:{self.stream_id}"


class Attempt(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One delivery attempt of one event in one group (kept only for events that ever failed)."""

    attempt: int
    # started (recorded as every attempt after the first begins, so one that kills its worker is
    # still counted) | failed (will retry) | dead-lettered | succeeded | invalid | replayed
    outcome: str
    at_ms: int
    consumer: str = ""
    duration_ms: float | None = None
    error_type: str | None = None
    error: str | None = None
    next_at_ms: int | None = None
    span_id: str | None = None
    alone: bool | None = None  # a start: whether no other handler of its process ran meanwhile


_RECLAIM_PAGES = 10  # pending-list pages one reclaim_idle call reads at most, per stream


class Claimed(msgspec.Struct):
    entries: list[Pending]
    lost: int = 0
    # An own read (`Dispatch.read(own=...)`): where the next one starts, per stream (log, replay), or
    # None when this one reached the end. It pages past scheduled retries, which it does not return.
    after: tuple[str, str] | None = None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Dispatch:
    """Group operations for the runners (consumers/) and the service layer (lifecycle, DLQ)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.scripts = Scripts(redis)
        self._reclaim_from: dict[tuple[str, str], str] = {}  # (stream, group) -> where reclaim_idle goes on

    def stream_key(self, kind: str, partition: int, group: str) -> str:
        return self.keys.stream(partition) if kind == LOG else self.keys.replay(partition, group)

    async def ensure_groups(self, group: str, start_at_beginning: bool = True,
                            partitions: Iterable[int] | None = None, log_start: str | None = None) -> None:
        """Create the group on every partition's (or these partitions') log and replay stream; idempotent.
        On the log it starts at the beginning or at the end, or after `log_start` when given."""
        log_start = log_start or ("0" if start_at_beginning else "$")
        for partition in range(self.keys.partitions) if partitions is None else partitions:
            for key, start in ((self.keys.stream(partition), log_start),
                               (self.keys.replay(partition, group), "0")):
                try:
                    await self.redis.xgroup_create(key, group, id=start, mkstream=True)
                except rx.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    async def read(
        self, group: str, consumer: str, partition: int, count: int, block_ms: int | None, *,
        own: tuple[str, str] | None = None,
    ) -> Claimed:
        """New entries, or (`own=(log id, replay id)`: at start-up, from ("0", "0")) this consumer's
        own pending ones after those ids, scheduled retries left out; `after` says where to go on."""
        log_key, replay_key = self.keys.stream(partition), self.keys.replay(partition, group)
        starts = own or (">", ">")
        block = ("BLOCK", block_ms) if block_ms is not None else ()
        # Sent raw (execute_packed): the worker reads all the time, and a client-level command cost
        # more than twice the round trip itself.
        command = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, *block,
                   "STREAMS", log_key, replay_key, *starts)
        [reply] = await execute_packed(self.redis, [command])
        if isinstance(reply, Exception):
            raise reply
        out = Claimed([])
        lost: list[tuple[str, str]] = []
        last = dict(zip((LOG, REPLAY), starts, strict=True))  # an own read goes on after these
        for stream, entries in reply.items() if isinstance(reply, dict) else reply or ():  # RESP3 | RESP2
            kind = LOG if _s(stream) == log_key else REPLAY
            for stream_id, flat in entries:
                if not flat:  # deleted or trimmed while pending
                    lost.append((kind, _s(stream_id)))
                    continue
                out.entries.append(_pending(kind, _s(stream_id), partition, pairs(flat)))
            if entries:
                last[kind] = _s(entries[-1][0])
        if own is not None:
            if (last[LOG], last[REPLAY]) != own:
                out.after = (last[LOG], last[REPLAY])
            if out.entries:
                out.entries = await self._not_scheduled(group, partition, out.entries)
        if lost:
            out.lost = len(lost)
            await self._ack_ids(group, partition, lost)
        return out

    async def claim_due(self, group: str, consumer: str, partition: int, count: int) -> Claimed:
        """Deliveries whose backoff has passed, claimed by this consumer."""
        keys = [self.keys.stream(partition), self.keys.replay(partition, group),
                self.keys.retry_schedule(partition, group)]
        reply = await self.scripts.claim_due(keys, [group, consumer, now_ms(), count])
        out = Claimed([])
        for member, claimed in reply:
            kind, stream_id = _s(member)[0], _s(member)[2:]
            if claimed == b"L":
                out.lost += 1
            elif claimed != b"N":
                fields = pairs(claimed[1])
                out.entries.append(_pending(kind, stream_id, partition, fields, deliveries=2))
        return out

    async def reclaim_idle(self, group: str, consumer: str, partition: int, lease_ms: int, count: int) -> Claimed:
        """Take over entries idle past the lease (their worker died or hangs), skipping scheduled retries.

        Scheduled retries stay pending (often idle past the lease: a backoff longer than it), so the
        pending list is paged, from where the last call stopped, until `count` others are found or
        `_RECLAIM_PAGES` pages were read: retries piled at its head never hide what is behind them."""
        out = Claimed([])
        for kind in (LOG, REPLAY):
            key = self.stream_key(kind, partition, group)
            idle: list[str] = []
            cursor = self._reclaim_from.get((key, group), "-")
            for _page in range(_RECLAIM_PAGES):
                pending = await self.redis.xpending_range(key, group, cursor, "+", count, idle=lease_ms)
                page = [_s(p["message_id"]) for p in pending]
                if page:
                    scores = await self.redis.zmscore(self.keys.retry_schedule(partition, group),
                                                      [f"{kind}:{i}" for i in page])
                    idle += [i for i, score in zip(page, scores, strict=True) if score is None]
                    cursor = "(" + page[-1]
                if len(page) < count:
                    cursor = "-"  # the end: next time from the start
                    break
                if len(idle) >= count:
                    break
            self._reclaim_from[(key, group)] = cursor
            if not idle:
                continue
            claimed = await self.redis.xclaim(key, group, consumer, lease_ms, idle)
            got = {_s(i): f for i, f in claimed if f}
            for stream_id in idle:
                if stream_id in got:
                    # Attempts are counted from the attempt records, not the pending list's delivery
                    # count: that one also counts entries a worker read ahead and never started.
                    out.entries.append(_pending(kind, stream_id, partition, got[stream_id], recovered=True))
                elif not await self.redis.xrange(key, stream_id, stream_id):
                    out.lost += 1
        return out

    async def renew(self, group: str, consumer: str, entries: Sequence[Pending]) -> None:
        """Reset the idle time of deliveries still being handled, so nobody reclaims them."""
        pipe = self.redis.pipeline(transaction=False)
        for (kind, partition), ids in _by_stream(entries).items():
            pipe.xclaim(self.stream_key(kind, partition, group), group, consumer, 0, ids, justid=True)
        await pipe.execute()

    async def take_over(self, group: str, consumer: str, partition: int) -> Claimed:
        """Make every pending delivery of this partition this consumer's own, however recently
        another one touched it (for an ordered consumer that just became the partition's only reader:
        the previous one is gone). The reader then reads them as its own, in order, so no entries are
        returned; only how many were lost: deleted or trimmed while pending, which XAUTOCLAIM drops
        from the pending list and names only in its third reply (Redis 7+)."""
        lost = 0
        for kind in (LOG, REPLAY):
            key, start = self.stream_key(kind, partition, group), "0-0"
            while True:
                start, _entries, *deleted = await self.redis.xautoclaim(key, group, consumer, 0, start, 1000)
                lost += len(deleted[0]) if deleted else 0
                if _s(start) == "0-0":
                    break
        return Claimed([], lost=lost)

    async def ack(self, group: str, entries: Sequence[Pending]) -> None:
        """Acknowledge handled deliveries (one XACK per stream)."""
        if not entries:
            return
        commands = [("XACK", self.stream_key(kind, partition, group), group, *ids)
                    for (kind, partition), ids in _by_stream(entries).items()]
        for reply in await execute_packed(self.redis, commands):
            if isinstance(reply, Exception):
                raise reply

    async def _ack_ids(self, group: str, partition: int, ids: Iterable[tuple[str, str]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for kind, stream_id in ids:
            pipe.xack(self.stream_key(kind, partition, group), group, stream_id)
        await pipe.execute()

    async def schedule_retry(self, group: str, entry: Pending, attempt: Attempt) -> None:
        """Record a failed attempt and schedule the next one; the entry stays pending meanwhile."""
        assert attempt.next_at_ms is not None
        pipe = transaction(self.redis)
        self._record(pipe, group, entry, attempt)
        pipe.zadd(self.keys.retry_schedule(entry.partition, group), {entry.member: attempt.next_at_ms})
        await pipe.execute()

    async def record(self, group: str, entry: Pending, attempt: Attempt) -> None:
        """Add an attempt record (a success after failures, a replay...)."""
        pipe = transaction(self.redis)
        self._record(pipe, group, entry, attempt)
        await pipe.execute()

    def _record(self, pipe: Any, group: str, entry: Pending, attempt: Attempt) -> None:
        key = self.keys.attempts(entry.partition, group, entry.entry_id)
        pipe.rpush(key, msgspec.json.encode(attempt))
        pipe.ltrim(key, -50, -1)
        pipe.expire(key, self.settings.attempts_ttl_s)

    async def dead_letter(self, group: str, entry: Pending, attempt: Attempt, reason: str) -> None:
        """Write the dead letter, record the attempt and ack, atomically (dead_letter.lua)."""
        p = entry.partition
        keys = [self.stream_key(entry.kind, p, group), self.keys.dead_letters(p),
                self.keys.retry_schedule(p, group), self.keys.attempts(p, group, entry.entry_id)]
        fields: list[Any] = []
        for name, value in entry.fields.items():
            if not name.startswith(b"_") or name in (b"_v", b"_x"):
                fields += (name, value)
        fields += ("_entry", entry.entry_id, "_group", group, "_reason", reason,
                   "_attempts", attempt.attempt, "_error", _error_text(attempt), "_dead_ms", attempt.at_ms)
        args = [group, entry.stream_id, entry.member, msgspec.json.encode(attempt), self.settings.attempts_ttl_s]
        if len(fields) <= SCRIPT_VALUES_MAX:
            await self.scripts.dead_letter(keys, [*args, *fields])
            return
        # A script call takes about 8,000 values (Lua's C stack: "too many results to unpack"), and an
        # entry written straight into the stream may have more fields: the same writes in MULTI/EXEC.
        stream, dead_letters, schedule, attempts = keys
        pipe = transaction(self.redis)
        pipe.execute_command("XADD", dead_letters, "*", *fields)
        pipe.rpush(attempts, args[3])
        pipe.ltrim(attempts, -50, -1)
        pipe.expire(attempts, self.settings.attempts_ttl_s)
        pipe.zrem(schedule, entry.member)
        pipe.xack(stream, group, entry.stream_id)
        await pipe.execute()

    async def last_attempt(self, group: str, entries: Sequence[Pending]) -> list[Attempt | None]:
        """The latest attempt record of each entry (None for events that never failed)."""
        pipe = self.redis.pipeline(transaction=False)
        for entry in entries:
            pipe.lindex(self.keys.attempts(entry.partition, group, entry.entry_id), -1)
        return [msgspec.json.decode(raw, type=Attempt) if raw else None for raw in await pipe.execute()]

    async def attempts(self, group: str, partition: int, entry_id: str) -> list[Attempt]:
        raw = await self.redis.lrange(self.keys.attempts(partition, group, entry_id), 0, -1)
        return [msgspec.json.decode(r, type=Attempt) for r in raw]

    async def _not_scheduled(self, group: str, partition: int, entries: list[Pending]) -> list[Pending]:
        scores = await self.redis.zmscore(self.keys.retry_schedule(partition, group), [e.member for e in entries])
        return [e for e, score in zip(entries, scores, strict=True) if score is None]


def is_missing_group(exc: BaseException) -> bool:
    """The group (or its whole stream) is gone: someone ran XGROUP DESTROY or DEL on it by hand."""
    return isinstance(exc, rx.ResponseError) and str(exc).startswith("NOGROUP")


def _pending(kind: str, stream_id: str, partition: int, fields: dict[bytes, bytes], deliveries: int = 1,
             recovered: bool = False) -> Pending:
    entry_id = stream_id if kind == LOG else _s(fields.get(b"_entry", stream_id.encode()))
    return Pending(kind=kind, stream_id=stream_id, entry_id=entry_id, partition=partition,
                   fields=fields, deliveries=2 if recovered else deliveries, recovered=recovered)


def _by_stream(entries: Iterable[Pending]) -> dict[tuple[str, int], list[str]]:
    out: dict[tuple[str, int], list[str]] = {}
    for entry in entries:
        out.setdefault((entry.kind, entry.partition), []).append(entry.stream_id)
    return out


def _error_text(attempt: Attempt) -> str:
    if attempt.error_type is None:
        return attempt.error or ""
    return f"{attempt.error_type}: {attempt.error or ''}"


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
