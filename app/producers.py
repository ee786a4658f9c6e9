"""Producers: registered event sources and their API keys.

A producer's name is its CloudEvents `source`. Its key is shown once, at creation or rotation; only
its SHA-256 is stored (keys carry 256 bits of entropy, so a slow hash adds nothing). A producer may be
limited to some event types (exact names or glob patterns): its key is then refused (403) for others. Web processes
cache lookups for `EVENTFLOW_AUTH_CACHE_S` and drop the cache within 0.1 s of a change anywhere.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.connections import redis_errors, transaction
from app.errors import Conflict, FieldProblem, Forbidden, InvalidEvent, NotFound, Unauthorized
from app.keys import Keys
from app.settings import Settings

log = logging.getLogger("eventflow.producers")

CHANGE_CHECK_S = 0.1  # how stale a cached key lookup may be after a rotation or revocation elsewhere

KEY_PREFIX = "efk_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$")
MAX_DESCRIPTION = 500  # characters, as a webhook subscription's; the dashboard's field says the same


class Producer(msgspec.Struct, kw_only=True):
    """A registered producer (what is stored; never the key itself)."""

    name: str
    key_hash: str
    created_ms: int
    revoked_ms: int | None = None
    description: str = ""
    types: list[str] = []  # event types (globs) this producer may send; empty: any

    @property
    def active(self) -> bool:
        return self.revoked_ms is None


class ProducerView(msgspec.Struct, kw_only=True):
    """A producer as the API and CLI show it, with its activity."""

    name: str
    created_ms: int
    revoked_ms: int | None
    description: str
    types: list[str] = []
    events: int = 0
    last_seen_ms: int | None = None


class Issued(msgspec.Struct):
    """A newly created or rotated producer with its key (the only time the key is shown)."""

    name: str
    key: str


async def _shared(inflight: dict[str, asyncio.Future[Any]], key: str, fetch: Callable[[], Awaitable[Any]]) -> Any:
    """`fetch()` once per key at a time: callers that ask while it runs get its result (or error)."""
    pending = inflight.get(key)
    if pending is not None:
        return await asyncio.shield(pending)
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    inflight[key] = future
    try:
        value = await fetch()
        future.set_result(value)
        return value
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # mark retrieved: waiters re-raise it, nobody must log it twice
        raise
    finally:
        del inflight[key]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_types(types: Sequence[str]) -> list[str]:
    """Event type patterns a producer is limited to: 1-200 characters without spaces, at most 50."""
    if len(types) > 50 or any(not t or len(t) > 200 or any(c.isspace() for c in t) for t in types):
        raise InvalidEvent([FieldProblem("/types", "at most 50 event types or glob patterns, each 1-200 "
                                                   "characters without spaces")])
    return list(dict.fromkeys(types))


def _matcher(types: Sequence[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{fnmatch.translate(t)})" for t in types)) if types else None


def check_description(description: str, pointer: str = "/description") -> str:
    """Free text shown on the dashboard: capped, so no one stores a megabyte in the producers hash
    that every Producers page then reads and shows. The CLI names its option (`--description`)."""
    if len(description) > MAX_DESCRIPTION:
        raise InvalidEvent([FieldProblem(pointer, f"at most {MAX_DESCRIPTION} characters")])
    return description


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidEvent([FieldProblem(
            "/name", "1-200 characters: letters, digits and . _ : / @ - (it becomes the events' source)"
        )])


class Producers:
    """Create, rotate, revoke, list and authenticate producers."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self._cache: dict[str, tuple[float, str]] = {}
        # Lookups under way, by key hash and by producer name: a burst of requests that finds the
        # cache cold (a new key, or after EVENTFLOW_AUTH_CACHE_S) shares one Redis read.
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._limits_inflight: dict[str, asyncio.Future[Any]] = {}
        self._generation = 0  # bumped by forget(): a lookup that raced a change is not cached
        self._checking, self._checked_at, self._seen_change = False, 0.0, b""
        self._tasks: set[asyncio.Task[None]] = set()
        self._limits: dict[str, tuple[float, re.Pattern[str] | None]] = {}  # name -> (expiry, allowed types)

    async def create(self, name: str, description: str = "", types: Sequence[str] = ()) -> Issued:
        check_name(name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = Producer(name=name, key_hash=hash_key(key), created_ms=_now_ms(),
                          description=check_description(description), types=check_types(types))
        async with redis_errors(self.settings):
            if not await self.redis.hsetnx(self.keys.producers, name, msgspec.json.encode(record)):
                raise Conflict(f"producer {name!r} already exists (rotate its key or revoke it)")
            await self.redis.hset(self.keys.producer_keys, record.key_hash, name)
        return Issued(name, key)

    async def rotate(self, name: str) -> Issued:
        record = await self._get(name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        new = msgspec.structs.replace(record, key_hash=hash_key(key), revoked_ms=None)
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            pipe.hdel(self.keys.producer_keys, record.key_hash)
            pipe.hset(self.keys.producer_keys, new.key_hash, name)
            pipe.hset(self.keys.producers, name, msgspec.json.encode(new))
            pipe.xadd(self.keys.producers_changed, {"producer": name}, maxlen=1000, approximate=True)
            await pipe.execute()
        return Issued(name, key)

    async def revoke(self, name: str) -> ProducerView:
        record = await self._get(name)
        revoked = msgspec.structs.replace(record, revoked_ms=record.revoked_ms or _now_ms())
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            pipe.hdel(self.keys.producer_keys, record.key_hash)
            pipe.hset(self.keys.producers, name, msgspec.json.encode(revoked))
            pipe.xadd(self.keys.producers_changed, {"producer": name}, maxlen=1000, approximate=True)
            await pipe.execute()
        self._cache.clear()
        return (await self._views([revoked]))[0]

    async def limit_types(self, name: str, types: Sequence[str]) -> ProducerView:
        """Limit the producer's key to these event types (globs); none: any type. Takes effect in
        every web process within CHANGE_CHECK_S."""
        record = msgspec.structs.replace(await self._get(name), types=check_types(types))
        async with redis_errors(self.settings):
            pipe = transaction(self.redis)
            pipe.hset(self.keys.producers, name, msgspec.json.encode(record))
            pipe.xadd(self.keys.producers_changed, {"producer": name}, maxlen=1000, approximate=True)
            await pipe.execute()
        self.forget()
        return (await self._views([record]))[0]

    async def check_types(self, source: str, types: Sequence[str]) -> None:
        """Forbidden unless the producer may send every one of these event types."""
        allowed = await self._allowed(source)
        if allowed is None:
            return
        for n, event_type in enumerate(types):
            if allowed.match(event_type) is None:
                where = f"/events/{n}/type" if len(types) > 1 else "/type"
                raise Forbidden(f"{where}: producer {source!r} may not send events of type {event_type!r}")

    async def _allowed(self, name: str) -> re.Pattern[str] | None:
        """The producer's type limit (None: any), cached like key lookups and dropped with them."""
        now = time.monotonic()
        cached = self._limits.get(name)
        if cached is not None and cached[0] > now:
            self._check_changes()
            return cached[1]
        return await _shared(self._limits_inflight, name, lambda: self._fetch_allowed(name))

    async def _fetch_allowed(self, name: str) -> re.Pattern[str] | None:
        generation = self._generation
        async with redis_errors(self.settings):
            raw = await self.redis.hget(self.keys.producers, name)
        # No record: a source that ingest was called for directly (the CLI, tests), not through a key.
        allowed = _matcher(msgspec.json.decode(raw, type=Producer).types) if raw is not None else None
        if generation == self._generation:  # no change arrived meanwhile
            if len(self._limits) > 10_000:
                self._limits.clear()
            self._limits[name] = (time.monotonic() + self.settings.auth_cache_s, allowed)
        return allowed

    async def list(self) -> list[ProducerView]:
        async with redis_errors(self.settings):
            raw = await self.redis.hgetall(self.keys.producers)
        records = sorted((msgspec.json.decode(v, type=Producer) for v in raw.values()), key=lambda p: p.name)
        return await self._views(records)

    async def get(self, name: str) -> ProducerView:
        return (await self._views([await self._get(name)]))[0]

    async def _get(self, name: str) -> Producer:
        async with redis_errors(self.settings):
            raw = await self.redis.hget(self.keys.producers, name)
        if raw is None:
            raise NotFound(f"no producer named {name!r}")
        return msgspec.json.decode(raw, type=Producer)

    async def _views(self, records: list[Producer]) -> list[ProducerView]:
        async with redis_errors(self.settings):
            pipe = self.redis.pipeline(transaction=False)
            for record in records:
                pipe.hgetall(self.keys.producer_stats(record.name))
            stats: list[dict[bytes, bytes]] = await pipe.execute()
        return [
            ProducerView(
                name=r.name, created_ms=r.created_ms, revoked_ms=r.revoked_ms, description=r.description, types=r.types,
                events=int(s.get(b"events", 0)), last_seen_ms=_int_or_none(s.get(b"last_seen_ms")),
            )
            for r, s in zip(records, stats, strict=True)
        ]

    async def authenticate(self, authorization: str | None) -> str:
        """The producer name for an `Authorization: Bearer <key>` header, or Unauthorized."""
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise Unauthorized("send the producer key as `Authorization: Bearer <key>`")
        # Looking up the key's SHA-256 leaks, at most, timing about a hash of the key, never about
        # the key itself: no byte-by-byte comparison of secrets happens here.
        digest = hash_key(authorization[7:].strip())
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            self._check_changes()
            return cached[1]
        name = await self._lookup(digest)
        if name is None:
            raise Unauthorized("unknown or revoked producer key")
        return name

    async def _lookup(self, digest: str) -> str | None:
        """One Redis lookup per key at a time: a burst of requests with a new key shares it."""
        return await _shared(self._inflight, digest, lambda: self._fetch_name(digest))

    async def _fetch_name(self, digest: str) -> str | None:
        generation = self._generation
        async with redis_errors(self.settings):
            raw = await self.redis.hget(self.keys.producer_keys, digest)
        name = raw.decode() if raw is not None else None
        if name is not None and generation == self._generation:  # no change arrived meanwhile
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + self.settings.auth_cache_s, name)
        return name

    def forget(self, _name: Any = None) -> None:
        """Drop cached lookups (called when any producer changes)."""
        self._cache.clear()
        self._limits.clear()
        self._generation += 1

    def _check_changes(self) -> None:
        """At most every CHANGE_CHECK_S, look (in the background) whether any process rotated or
        revoked a key since; if so drop the cache. So a change reaches every busy web process within
        about 0.1 s, and an idle one costs nothing. (Not pub/sub: redis-py's asyncio readers can
        swallow a task cancellation on Python 3.11, which hangs shutdown.)"""
        now = time.monotonic()
        if self._checking or now - self._checked_at < CHANGE_CHECK_S:
            return
        self._checking, self._checked_at = True, now
        task = asyncio.get_running_loop().create_task(self._look_for_changes())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Let a background change check finish (it holds a connection) before the client closes."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _look_for_changes(self) -> None:
        try:
            top = await self.redis.xrevrange(self.keys.producers_changed, count=1)
            latest = top[0][0] if top else None
            if latest != self._seen_change:
                self._seen_change = latest
                self.forget()
        except Exception as exc:  # noqa: BLE001 - the cache TTL bounds staleness; the next hit looks again
            log.debug("could not look for producer changes: %s", exc)
        finally:
            self._checking = False

def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _int_or_none(value: bytes | None) -> int | None:
    return int(value) if value is not None else None
