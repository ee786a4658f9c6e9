"""Dead letters and replays: list, inspect, replay (to the failed group only) and discard; replay a
time range of the log (or of dead letters) to one group."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import WatchError

from app.connections import transaction
from app.errors import FieldProblem, InvalidEvent, NotFound
from app.events import Record
from app.ids import is_entry_id
from app.keys import Keys
from app.scripts import SCRIPT_VALUES_MAX, Scripts
from app.settings import Settings

_SCAN_CHUNK = 500


class DeadLetter(msgspec.Struct, kw_only=True):
    """A delivery that failed for good in one group, with the original event."""

    id: str  # "<partition>:<dead-letter entry id>"
    partition: int
    group: str
    reason: str  # permanent | max-attempts | invalid
    attempts: int
    error: str
    dead_at_ms: int
    entry_id: str  # the event's entry in the log
    event: dict[str, Any]


class Filter(msgspec.Struct, kw_only=True, omit_defaults=True):
    group: str | None = None
    type: str | None = None
    source: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, dl: DeadLetter) -> bool:
        ev = dl.event
        return (
            (self.group is None or dl.group == self.group)
            and (self.type is None or ev.get("type") == self.type)
            and (self.source is None or ev.get("source") == self.source)
        )


class DeadLetters:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.scripts = Scripts(redis)

    async def list(self, flt: Filter, limit: int = 100) -> list[DeadLetter]:
        """Newest first, across partitions, filtered (dead letters are few: a bounded scan)."""
        found: list[DeadLetter] = []
        for p in range(self.keys.partitions):
            found += [dl async for dl in self._scan(p, flt, limit)]
        found.sort(key=lambda d: (d.dead_at_ms, d.id), reverse=True)
        return found[:limit]

    async def count(self) -> dict[str, int]:
        """Dead letters per group."""
        out: dict[str, int] = {}
        for p in range(self.keys.partitions):
            async for dl in self._scan(p, Filter(), None):
                out[dl.group] = out.get(dl.group, 0) + 1
        return out

    async def _scan(self, partition: int, flt: Filter, limit: int | None) -> Any:
        key = self.keys.dead_letters(partition)
        bounds = _bounds(flt)
        if bounds is None:
            return
        hi, lo = bounds
        yielded = 0
        while True:
            chunk = await self.redis.xrevrange(key, hi, lo, count=_SCAN_CHUNK)
            for entry_id, fields in chunk:
                dl = _dead_letter(partition, entry_id.decode(), fields)
                if flt.matches(dl):
                    yield dl
                    yielded += 1
                    if limit is not None and yielded >= limit:
                        return
            if len(chunk) < _SCAN_CHUNK:
                return
            hi = "(" + chunk[-1][0].decode()

    async def get(self, ident: str) -> DeadLetter:
        partition, entry_id = _split(ident, self.keys.partitions)
        got = await self.redis.xrange(self.keys.dead_letters(partition), entry_id, entry_id)
        if not got:
            raise NotFound(f"no dead letter {ident!r}")
        return _dead_letter(partition, entry_id, got[0][1])

    async def replay(self, ids: list[str]) -> int:
        """Send dead letters back to the group they failed in (and only that group)."""
        total = 0
        selected = _by_partition(ids, self.keys.partitions)
        await self._refuse_retired(selected)
        for partition, entry_ids in selected.items():
            args = [self.keys.base(partition), _now_ms(), self.settings.attempts_ttl_s, SCRIPT_VALUES_MAX,
                    *entry_ids]
            replayed, wide = await self.scripts.replay_dead([self.keys.dead_letters(partition)], args)
            total += int(replayed)
            for entry_id in wide:
                total += await self._replay_wide(partition, entry_id.decode())
        return total

    async def _refuse_retired(self, selected: dict[int, list[str]]) -> None:
        """Refuse, before anything moves, dead letters of a group no longer on the log (retired with
        `eventflow groups delete`, which keeps them): replayed, they left the dead letters for a
        replay stream nothing reads, gone from every list while the answer said 'replayed'."""
        groups: dict[str, int] = {}
        for partition, entry_ids in selected.items():
            key = self.keys.dead_letters(partition)
            for start in range(0, len(entry_ids), _SCAN_CHUNK):
                pipe = self.redis.pipeline(transaction=False)
                for entry_id in entry_ids[start:start + _SCAN_CHUNK]:
                    pipe.xrange(key, entry_id, entry_id)
                for got in await pipe.execute():
                    if got and (group := got[0][1].get(b"_group")):
                        groups[_s(group)] = groups.get(_s(group), 0) + 1
        gone = [g for g in sorted(groups) if not await self._group_exists(g)]
        if gone:
            count = sum(groups[g] for g in gone)
            names = ", ".join(repr(g) for g in gone)
            raise NotFound(f"no consumer group {names} on the log (retired with `eventflow groups delete`?): "
                           f"{count} of the selected dead letters would go to a replay stream nothing reads. "
                           "Nothing was replayed; discard them, or run the group's consumer again first")

    async def _replay_wide(self, partition: int, entry_id: str) -> int:
        """replay_dead.lua's writes for a dead letter with more fields than a script call can pass to
        XADD, in MULTI/EXEC, watching the dead letters so a concurrent replay or discard never doubles it."""
        key = self.keys.dead_letters(partition)
        while True:
            try:
                async with transaction(self.redis) as pipe:
                    await pipe.watch(key)
                    got = await pipe.xrange(key, entry_id, entry_id)
                    fields = got[0][1] if got else {}
                    group, original = fields.get(b"_group"), fields.get(b"_entry")
                    if group is None or original is None:
                        return 0
                    keep = [x for k, v in fields.items() if k == b"_entry" or not k.startswith(b"_")
                            or k in (b"_v", b"_x") for x in (k, v)]
                    attempts = self.keys.attempts(partition, group.decode(), original.decode())
                    pipe.multi()
                    pipe.execute_command("XADD", self.keys.replay(partition, group.decode()), "*", *keep,
                                         "_replay", "dead-letter")
                    pipe.xdel(key, entry_id)
                    pipe.rpush(attempts, msgspec.json.encode({"attempt": 0, "outcome": "replayed", "at_ms": _now_ms()}))
                    pipe.expire(attempts, self.settings.attempts_ttl_s)
                    await pipe.execute()
                    return 1
            except WatchError:
                continue  # replayed or discarded meanwhile: look again

    async def discard(self, ids: list[str]) -> int:
        total = 0
        for partition, entry_ids in _by_partition(ids, self.keys.partitions).items():
            total += int(await self.redis.xdel(self.keys.dead_letters(partition), *entry_ids))
        return total

    async def matching_ids(self, flt: Filter) -> list[str]:
        out: list[str] = []
        for p in range(self.keys.partitions):
            out += [dl.id async for dl in self._scan(p, flt, None)]
        return out

    async def replay_history(
        self, group: str, since_ms: int, until_ms: int | None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Queue a time range of the log for redelivery to one group; returns how many were queued."""
        if not await self._group_exists(group):
            raise NotFound(f"no consumer group {group!r} on the log")
        queued = 0
        for p in range(self.keys.partitions):
            lo = f"{since_ms}-0"
            hi = f"({until_ms}-0" if until_ms is not None else "+"
            while True:
                chunk = await self.redis.xrange(self.keys.stream(p), lo, hi, count=_SCAN_CHUNK)
                if not chunk:
                    break
                pipe = self.redis.pipeline(transaction=False)
                for entry_id, fields in chunk:
                    copy = {k: v for k, v in fields.items() if not k.startswith(b"_") or k in (b"_v", b"_x")}
                    copy.update({b"_entry": entry_id, b"_replay": b"history"})
                    pipe.xadd(self.keys.replay(p, group), copy)
                await pipe.execute()
                queued += len(chunk)
                if progress is not None:
                    progress(queued)
                if len(chunk) < _SCAN_CHUNK:
                    break
                lo = "(" + chunk[-1][0].decode()
        return queued

    async def _group_exists(self, group: str) -> bool:
        for p in range(self.keys.partitions):
            if await self.redis.exists(self.keys.stream(p)):
                groups = await self.redis.xinfo_groups(self.keys.stream(p))
                if any(_s(g["name"]) == group for g in groups):
                    return True
        return False


def _dead_letter(partition: int, entry_id: str, fields: dict[bytes, bytes]) -> DeadLetter:
    original = fields.get(b"_entry", b"").decode()
    record = Record.from_entry(original, partition, fields)
    return DeadLetter(
        id=f"{partition}:{entry_id}", partition=partition, group=fields.get(b"_group", b"").decode(),
        reason=fields.get(b"_reason", b"").decode(), attempts=int(fields.get(b"_attempts", b"0") or 0),
        error=fields.get(b"_error", b"").decode(errors="replace"),
        dead_at_ms=int(fields.get(b"_dead_ms", b"0") or 0), entry_id=original, event=record.event,
    )


def _bounds(flt: Filter) -> tuple[str, str] | None:
    """XREVRANGE bounds for the filter's time range, None when no entry id can fall in it. Redis refuses
    ids below 0 or above 2^64-1 and an exclusive "(0-0" (a 500 before), so clamp to what it accepts."""
    until, since = flt.until_ms, flt.since_ms
    if (until is not None and until <= 0) or (since is not None and since > _MAX_MS):
        return None
    hi = f"({until}-0" if until is not None and until <= _MAX_MS else "+"
    lo = f"{since}-0" if since is not None and since > 0 else "-"
    return hi, lo


_MAX_MS = 2**64 - 1


def _split(ident: str, partitions: int, pointer: str = "/id") -> tuple[int, str]:
    # Checked here: Redis answers a malformed entry id with an error (a 500 before), and a partition
    # beyond EVENTFLOW_PARTITIONS has no key at all.
    partition, sep, entry_id = ident.rpartition(":")
    number = 0 if not sep else int(partition) if partition.isascii() and partition.isdigit() else -1
    if not 0 <= number < partitions or not is_entry_id(entry_id):
        raise InvalidEvent([FieldProblem(pointer, "a dead-letter id looks like <partition>:<entry id>")])
    return number, entry_id


def _by_partition(ids: list[str], partitions: int) -> dict[int, list[str]]:
    """The ids' entry ids per partition; a malformed id refuses them all, each named as `/ids/<n>`."""
    out: dict[int, list[str]] = {}
    problems: list[FieldProblem] = []
    for n, ident in enumerate(ids):
        try:
            partition, entry_id = _split(ident, partitions, f"/ids/{n}")
        except InvalidEvent as exc:
            problems += exc.problems
            continue
        out.setdefault(partition, []).append(entry_id)
    if problems:
        raise InvalidEvent(problems)
    return out


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
