"""Retention: archive, then trim, the oldest entries of the log, never one a consumer group still needs.

The policy is an age (`EVENTFLOW_RETENTION_S`) and/or a size (`EVENTFLOW_RETENTION_MAX_ENTRIES` per
partition). A pass, per partition, under a lease so that one process at a time does it:

  1. read entries from the head while the policy wants them gone and they are before the safe point
     (the minimum over the log's consumer groups of the oldest pending entry and the entry after the
     last one delivered: `group_points`);
  2. write them to the archive (app/archive.py: an hour file at a time, fsynced) BEFORE trimming;
  3. after each file, trim.lua trims the log to the entry after the last one archived (clamped to the
     safe point, recomputed atomically) and prunes the type and source index runs that end before it;
  4. trim each group's replay stream of what that group acknowledged.

Event-id lookup keys expire by themselves (the idempotency window). `status()` says which group
holds trimming back and by how much; queries and `eventflow archive replay` read the archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.archive import Archive, Key, encode_line, entry_key, hour_of, merge_pages
from app.archive import bounds as archive_bounds
from app.connections import is_unavailable, redis_errors
from app.errors import ConfigError, NotFound
from app.events import Record
from app.ids import is_entry_id, made_entry
from app.keys import Keys
from app.metrics import default_metrics
from app.scripts import source
from app.settings import Settings
from app.store import EventLog, Page, Query

log = logging.getLogger("eventflow.retention")

CHUNK = 1000  # entries read per XRANGE
MAX_LINES = 50_000  # entries per archive write (a busy hour is written in several members)
LEASE_MS = 120_000  # renewed after every write; another process takes over if this one dies
REPLAY_CHUNK = 500

Progress = Callable[[int, int], None]  # (archived so far, trimmed so far)


class GroupPoint(msgspec.Struct, kw_only=True):
    """Where one consumer group stands on one partition's log, for retention."""

    group: str
    safe_point: str  # entries before it are delivered and acknowledged by this group
    pending: int
    lag: int | None


class PartitionReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    partition: int
    archived: int = 0
    trimmed: int = 0
    replay_trimmed: int = 0
    first_entry: str | None = None  # the log's first entry after the pass
    held_by: str | None = None  # the group whose safe point stopped the pass short of the policy
    files: list[str] = []
    skipped: str | None = None


class PassReport(msgspec.Struct, kw_only=True):
    archived: int
    trimmed: int
    took_s: float
    partitions: list[PartitionReport]


class Holdback(msgspec.Struct, kw_only=True):
    """A group that keeps entries in the log longer than the policy wants (it has not processed them)."""

    partition: int
    group: str
    safe_point: str
    pending: int
    lag: int | None
    overdue_s: float  # how much older than the age limit the oldest kept entry is (0: no age limit)
    excess_entries: int  # entries beyond the size limit (0: no size limit)


class PartitionState(msgspec.Struct, kw_only=True):
    partition: int
    length: int
    first_entry: str | None
    groups: list[GroupPoint]


class RetentionStatus(msgspec.Struct, kw_only=True):
    enabled: bool
    retention_s: int
    max_entries: int
    archive_path: str
    partitions: list[PartitionState]
    held_back: list[Holdback]


def enabled(settings: Settings) -> bool:
    return settings.retention_s > 0 or settings.retention_max_entries > 0


class Retention:
    """Retention passes, their status, and reads of the archive (queries, lookups, replays)."""

    def __init__(self, redis: Redis, settings: Settings, event_log: EventLog | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.event_log = event_log
        self.archive = Archive(settings.archive_path, settings.prefix, settings.partitions)
        self._trim = redis.register_script(source("trim"))
        self._lease = redis.register_script(source("lease"))

    # -- a pass ---------------------------------------------------------------------------------
    async def run_pass(self, progress: Progress | None = None) -> PassReport:
        """Archive and trim every partition once (see the module docstring)."""
        if not enabled(self.settings):
            raise ConfigError("no retention policy: set EVENTFLOW_RETENTION_S and/or EVENTFLOW_RETENTION_MAX_ENTRIES")
        started = time.monotonic()
        async with redis_errors(self.settings):
            if self.event_log is not None:
                await self.event_log.catch_up()  # index direct writes before their runs can be pruned
            reports = [await self._partition(p, progress) for p in range(self.keys.partitions)]
        return PassReport(archived=sum(r.archived for r in reports), trimmed=sum(r.trimmed for r in reports),
                          took_s=round(time.monotonic() - started, 3), partitions=reports)

    async def _partition(self, partition: int, progress: Progress | None) -> PartitionReport:
        lease, token = self.keys.retention_lease(partition), secrets.token_hex(8)
        if not await self._lease([lease], [token, "take", LEASE_MS]):
            return PartitionReport(partition=partition, skipped="another process is running retention here")
        try:
            report = PartitionReport(partition=partition)
            renew = lambda: self._lease([lease], [token, "renew", LEASE_MS])  # noqa: E731
            await _Pass(self, partition, report, progress, renew).run()
            report.replay_trimmed = await self._trim_replays(partition)
            first = await self.redis.xrange(self.keys.stream(partition), "-", "+", count=1)
            report.first_entry = first[0][0].decode() if first else None
            return report
        finally:
            with contextlib.suppress(Exception):  # it expires anyway
                await self._lease([lease], [token, "release", 0])

    async def _trim_replays(self, partition: int) -> int:
        """Replay streams are queues of copies: trim what their group acknowledged."""
        trimmed = 0
        for point in await self.group_points(partition):
            reply = await self._trim([self.keys.replay(partition, point.group)], [""])
            trimmed += int(reply[2])
        return trimmed

    async def group_points(self, partition: int) -> list[GroupPoint]:
        """Every group on a partition's log with its safe point (the same rule as trim.lua)."""
        stream = self.keys.stream(partition)
        if not await self.redis.exists(stream):
            return []
        groups = await self.redis.xinfo_groups(stream)
        pipe = self.redis.pipeline(transaction=False)
        for g in groups:
            pipe.xpending(stream, g["name"])
        out = []
        for g, pending in zip(groups, await pipe.execute(), strict=True):
            safe = _after(_s(g["last-delivered-id"]))
            if pending["pending"] and entry_key(_s(pending["min"])) < entry_key(safe):
                safe = _s(pending["min"])
            lag = g.get("lag")
            out.append(GroupPoint(group=_s(g["name"]), safe_point=safe, pending=int(pending["pending"]),
                                  lag=None if lag is None else int(lag)))
        return out

    # -- status ---------------------------------------------------------------------------------
    async def status(self) -> RetentionStatus:
        """Per partition: length, first entry, groups; and which groups hold trimming back, by how much."""
        s = self.settings
        cut_ms = _now_ms() - s.retention_s * 1000 if s.retention_s else None
        states, held = [], []
        async with redis_errors(s):
            for p in range(self.keys.partitions):
                stream = self.keys.stream(p)
                length = await self.redis.xlen(stream)
                first = await self.redis.xrange(stream, "-", "+", count=1)
                points = await self.group_points(p)
                head = first[0][0].decode() if first else None
                states.append(PartitionState(partition=p, length=length, first_entry=head, groups=points))
                if head is None or not enabled(s):
                    continue
                overdue_ms = max(0, cut_ms - entry_key(head)[0]) if cut_ms is not None else 0
                excess = max(0, length - s.retention_max_entries) if s.retention_max_entries else 0
                for point in points:
                    # A group holds trimming back when its safe point is the head: nothing more can go.
                    if (overdue_ms or excess) and entry_key(point.safe_point) <= entry_key(head):
                        held.append(Holdback(partition=p, group=point.group, safe_point=point.safe_point,
                                             pending=point.pending, lag=point.lag, overdue_s=overdue_ms / 1000,
                                             excess_entries=excess))
        return RetentionStatus(enabled=enabled(s), retention_s=s.retention_s, max_entries=s.retention_max_entries,
                               archive_path=str(self.archive.root), partitions=states, held_back=held)

    # -- reading the archive --------------------------------------------------------------------
    async def with_archive(self, q: Query, live: Page) -> Page:
        """The live page merged with archived events the query reaches (older than the log's head)."""
        if not self.archive.exists():
            return live
        async with redis_errors(self.settings):
            heads = await self.heads()
        if not _may_reach(q, live, heads):
            return live
        records, horizon = await asyncio.to_thread(self.archive.scan, q, heads)
        return merge_pages(q, live, records, horizon)

    async def heads(self) -> list[Key | None]:
        """Each partition's first live entry (None: the partition's log is empty)."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.xrange(self.keys.stream(p), "-", "+", count=1)
        return [entry_key(first[0][0].decode(), p) if first else None
                for p, first in enumerate(await pipe.execute())]

    async def find(self, ident: str) -> Record | None:
        """An archived event by entry id, or by event id: one EventFlow made encodes its entry; a
        producer's id is found through its lookup key while the idempotency window lasts."""
        if not self.archive.exists():
            return None
        candidates = [ident] if is_entry_id(ident) else []
        made = made_entry(ident)
        if made is not None:
            candidates.append(made[1])
        async with redis_errors(self.settings):
            pipe = self.redis.pipeline(transaction=False)
            for p in range(self.keys.partitions):
                pipe.get(self.keys.event_id(p, ident))
            candidates += [v.split(b" ", 1)[0].decode() for v in await pipe.execute() if v]
        for entry_id in candidates:
            record = await asyncio.to_thread(self.archive.find, entry_id)
            if record is not None and (entry_id == ident or record.event.get("id") == ident):
                return record
        return None

    async def replay(self, group: str, since_ms: int, until_ms: int | None,
                     progress: Callable[[int], None] | None = None) -> int:
        """Queue archived events of a time range for redelivery to one group (via its replay stream)."""
        async with redis_errors(self.settings):
            if not await self._group_exists(group):
                raise NotFound(f"no consumer group {group!r} on the log")
            heads = await self.heads()
            queued = 0
            for p in range(self.keys.partitions):
                for _hour, file in self.archive.hours(p, since_ms, until_ms):
                    entries = await asyncio.to_thread(self.archive.file_range, file, p, since_ms, until_ms, heads[p])
                    for start in range(0, len(entries), REPLAY_CHUNK):
                        pipe = self.redis.pipeline(transaction=False)
                        for entry_id, fields in entries[start : start + REPLAY_CHUNK]:
                            copy = {k: v for k, v in fields.items() if not k.startswith(b"_") or k in (b"_v", b"_x")}
                            copy.update({b"_entry": entry_id.encode(), b"_replay": b"archive"})
                            pipe.xadd(self.keys.replay(p, group), copy)
                        await pipe.execute()
                        queued += len(entries[start : start + REPLAY_CHUNK])
                        if progress is not None:
                            progress(queued)
        return queued

    async def _group_exists(self, group: str) -> bool:
        for p in range(self.keys.partitions):
            if any(point.group == group for point in await self.group_points(p)):
                return True
        return False


class _Pass:
    """One partition's archive-then-trim pass."""

    def __init__(self, retention: Retention, partition: int, report: PartitionReport, progress: Progress | None,
                 renew: Callable[[], Any]) -> None:
        self.r = retention
        self.p = partition
        self.report = report
        self.progress = progress
        self.renew = renew
        self.stream = retention.keys.stream(partition)
        self.lines: list[bytes] = []
        self.indexes: set[bytes] = set()
        self.hour: int | None = None
        self.last: str | None = None
        self.clamped = False

    async def run(self) -> None:
        s, keys = self.r.settings, self.r.keys
        cut_ms = _now_ms() - s.retention_s * 1000 if s.retention_s else None
        excess = 0
        if s.retention_max_entries:
            excess = max(0, await self.r.redis.xlen(self.stream) - s.retention_max_entries)
        points = await self.r.group_points(self.p)
        safe = min(points, key=lambda g: entry_key(g.safe_point)) if points else None
        taken, lo = 0, "-"
        while not self.clamped:
            chunk = await self.r.redis.xrange(self.stream, lo, "+", count=CHUNK)
            for raw_id, fields in chunk:
                entry_id = raw_id.decode()
                key = entry_key(entry_id)
                if not (taken < excess or (cut_ms is not None and key[0] < cut_ms)):
                    return await self._commit()  # the policy keeps the rest
                if safe is not None and key >= entry_key(safe.safe_point):
                    self.report.held_by = safe.group
                    return await self._commit()
                if self.hour is not None and (hour_of(key[0]) != self.hour or len(self.lines) >= MAX_LINES):
                    await self._commit()
                    if self.clamped:
                        return None
                self._add(entry_id, fields, keys)
                taken += 1
            if len(chunk) < CHUNK:
                break
            lo = "(" + chunk[-1][0].decode()
        return await self._commit()

    def _add(self, entry_id: str, fields: dict[bytes, bytes], keys: Keys) -> None:
        self.hour = hour_of(entry_key(entry_id)[0])
        self.lines.append(encode_line(entry_id, fields))
        self.last = entry_id
        # Index keys are built from the raw bytes, as append.lua does (surrogateescape keeps them).
        for name, index in ((b"type", keys.type_index), (b"source", keys.source_index)):
            if name in fields:
                self.indexes.add(index(self.p, fields[name].decode("utf-8", "surrogateescape"))
                                 .encode("utf-8", "surrogateescape"))

    async def _commit(self) -> None:
        if not self.lines or self.hour is None or self.last is None:
            return
        lines, indexes, self.lines, self.indexes = self.lines, self.indexes, [], set()
        path = await asyncio.to_thread(self.r.archive.write, self.p, self.hour, lines)
        wanted = _after(self.last)
        point, holder, trimmed = await self.r._trim([self.stream, *sorted(indexes)], [wanted])
        await self.renew()
        self.report.archived += len(lines)
        self.report.trimmed += int(trimmed)
        if str(path) not in self.report.files:
            self.report.files.append(str(path))
        if _s(point) != wanted:  # a group appeared or was rewound since the pass looked: stop here
            self.clamped = True
            self.report.held_by = _s(holder) or None
        if self.progress is not None:
            self.progress(self.report.archived, self.report.trimmed)


async def run_forever(redis: Redis, settings: Settings, stop: asyncio.Event) -> None:
    """The worker's background loop: a pass every EVENTFLOW_RETENTION_INTERVAL_S until `stop`."""
    retention = Retention(redis, settings, EventLog(redis, settings))
    held: dict[str, Holdback] = {}
    delay_s = settings.retention_interval_s
    while not stop.is_set():
        try:
            report = await retention.run_pass()
            delay_s = settings.retention_interval_s
            if report.archived or report.trimmed:
                log.info("retention: archived %d and trimmed %d entries in %.2f s", report.archived, report.trimmed,
                         report.took_s)
            held = await _export_holdbacks(retention, held)
        except Exception as exc:
            if not is_unavailable(exc) and not isinstance(exc, OSError):
                log.exception("retention pass failed")
            else:
                log.warning("retention pass failed: %s", exc)
            delay_s = min(delay_s * 2, 600.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay_s)


async def _export_holdbacks(retention: Retention, before: dict[str, Holdback]) -> dict[str, Holdback]:
    """Log a group that starts holding trimming back, and set the retention gauges of every group."""
    now: dict[str, Holdback] = {}
    for h in (await retention.status()).held_back:
        if h.group not in now or h.overdue_s > now[h.group].overdue_s:
            now[h.group] = h
    for group in now.keys() - before.keys():
        h = now[group]
        log.warning("retention: consumer group %s holds back trimming (%d pending, lag %s, %.0f s past the age "
                    "limit, %d entries over the size limit)", group, h.pending, h.lag, h.overdue_s, h.excess_entries)
    metrics = default_metrics()
    for group in now.keys() | before.keys():
        held = now.get(group)
        metrics.retention_held_back.labels(group).set(held.overdue_s if held else 0)
        metrics.retention_excess.labels(group).set(held.excess_entries if held else 0)
    return now


def _may_reach(q: Query, live: Page, heads: list[Key | None]) -> bool:
    """False when no archived event can belong on this page (the common case: a page of recent events)."""
    live_edge = Query(cursor=live.next_cursor).after() if live.next_cursor else None
    for partition, head in enumerate(heads):
        if head is None:
            return True
        lo, _hi = archive_bounds(q, partition, None)
        if lo is not None and lo[:2] >= head[:2]:
            continue  # the query starts after everything archived here
        if q.newest_first and live_edge is not None and head[:2] <= live_edge[:2]:
            continue  # the page ends in the live log, above everything archived here
        return True
    return False


def _after(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
