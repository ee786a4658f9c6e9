"""Producers: registered event sources and their API keys.

A producer's name is its CloudEvents `source`. Its key is shown once, at creation or rotation; only
its SHA-256 is stored (keys carry 256 bits of entropy, so a slow hash adds nothing). Web processes
cache lookups for `EVENTFLOW_AUTH_CACHE_S` and drop the cache when a producer changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.connections import redis_errors
from app.errors import Conflict, FieldProblem, InvalidEvent, NotFound, Unauthorized
from app.keys import Keys
from app.settings import Settings

log = logging.getLogger("eventflow.producers")

KEY_PREFIX = "efk_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$")


class Producer(msgspec.Struct, kw_only=True):
    """A registered producer (what is stored; never the key itself)."""

    name: str
    key_hash: str
    created_ms: int
    revoked_ms: int | None = None
    description: str = ""

    @property
    def active(self) -> bool:
        return self.revoked_ms is None


class ProducerView(msgspec.Struct, kw_only=True):
    """A producer as the API and CLI show it, with its activity."""

    name: str
    created_ms: int
    revoked_ms: int | None
    description: str
    events: int = 0
    last_seen_ms: int | None = None


class Issued(msgspec.Struct):
    """A newly created or rotated producer with its key (the only time the key is shown)."""

    name: str
    key: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


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

    async def create(self, name: str, description: str = "") -> Issued:
        check_name(name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = Producer(name=name, key_hash=hash_key(key), created_ms=_now_ms(), description=description)
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
            pipe = self.redis.pipeline(transaction=True)
            pipe.hdel(self.keys.producer_keys, record.key_hash)
            pipe.hset(self.keys.producer_keys, new.key_hash, name)
            pipe.hset(self.keys.producers, name, msgspec.json.encode(new))
            pipe.publish(self.keys.producers_changed, name)
            await pipe.execute()
        return Issued(name, key)

    async def revoke(self, name: str) -> ProducerView:
        record = await self._get(name)
        revoked = msgspec.structs.replace(record, revoked_ms=record.revoked_ms or _now_ms())
        async with redis_errors(self.settings):
            pipe = self.redis.pipeline(transaction=True)
            pipe.hdel(self.keys.producer_keys, record.key_hash)
            pipe.hset(self.keys.producers, name, msgspec.json.encode(revoked))
            pipe.publish(self.keys.producers_changed, name)
            await pipe.execute()
        self._cache.clear()
        return (await self._views([revoked]))[0]

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
                name=r.name, created_ms=r.created_ms, revoked_ms=r.revoked_ms, description=r.description,
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
            return cached[1]
        async with redis_errors(self.settings):
            name = await self.redis.hget(self.keys.producer_keys, digest)
        if name is None:
            raise Unauthorized("unknown or revoked producer key")
        producer = name.decode()
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self.settings.auth_cache_s, producer)
        return producer

    def forget(self, _name: Any = None) -> None:
        """Drop cached lookups (called when any producer changes)."""
        self._cache.clear()

    async def watch(self) -> None:
        """Drop the cache whenever any process rotates or revokes a key, so that takes effect at once
        everywhere. Runs until cancelled; while Redis is away the cache is dropped on reconnect."""
        delay_s = 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.producers_changed)
                self.forget()  # changes made while we were not subscribed
                delay_s = 0.1
                async for _message in pubsub.listen():
                    self.forget()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; the cache TTL bounds staleness meanwhile
                log.debug("producer change feed interrupted: %s", exc)
                await asyncio.sleep(delay_s)
                delay_s = min(5.0, delay_s * 2)
            finally:
                await pubsub.aclose()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _int_or_none(value: bytes | None) -> int | None:
    return int(value) if value is not None else None
