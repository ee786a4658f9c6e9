"""The audit consumer: every event once in the hash-chained audit log (`app.audit`).

One writer. The log is a set of local files, so exactly one process may write it. That process holds
a leadership lease in Redis (`SET NX PX`, renewed every third of its TTL with a compare-and-renew);
it stops writing as soon as it cannot be sure the lease is still its own, and an `flock` on the log
folder backs this up between processes that share a disk.

Other processes running the audit consumer are standbys. The consumer group hands them events too;
raising `Retry` there would bounce an event between standbys (whoever polls the retry schedule first
takes it) until it ran out of attempts. A standby *parks* the event instead: it puts the entry in a
Redis hash and waits, keeping the delivery (the runner renews its lease meanwhile); the leader
drains the hash a few times a second, writes the entries like its own and deletes them from the
hash, and the standby's handler then returns so the event is acknowledged. A standby holds at most
one batch this way. If the leader dies, its lease expires, a standby takes it and drains what is
parked, its own entries included. Parked entries of a standby that died stay in the hash and are
written anyway; their redelivery later is skipped as a duplicate.

What a crash costs: see `app.audit` (nothing is lost or doubled; an unacknowledged event is
delivered again and recognised). A new leader on another machine starts or continues the log in
*its* `EVENTFLOW_AUDIT_PATH`: put that on one persistent volume and run the audit consumer in one
process group (standbys only take over from a leader that died).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import Any, cast

import msgspec
from redis import exceptions as rx
from redis.asyncio import Redis

from app.audit import AuditWriter
from app.connections import transaction
from app.keys import Keys
from app.settings import Settings
from consumers.base import Backoff, Consumer, Delivery

log = logging.getLogger("eventflow.consumers.audit")

LEASE_MS = 10_000  # the leader's lease; a standby takes over at most this long after the leader died
TICK_S = 0.2  # how often the leader drains parked entries and a standby looks whether they were written
ACQUIRE_EVERY_S = 0.5  # a standby tries to take the lease at most this often


class Lease:
    """A leadership lease in Redis: `SET key holder NX PX` to take it, compare-and-renew to keep it.

    `held()` answers locally: the lease counts as ours until a safety margin before its TTL, timed
    from when the request that took or renewed it was sent, so a process cut off from Redis stops
    writing before anyone else can take over."""

    def __init__(self, redis: Redis, key: str, ttl_ms: int, holder: str) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.holder = holder.encode()
        self._valid_until = 0.0
        self._renewed_at = 0.0
        self._tried_at = -1e9

    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    def renew_due(self) -> bool:
        return time.monotonic() >= self._renewed_at + self.ttl_ms / 3000

    async def acquire(self, *, throttle_s: float = 0.0) -> bool:
        """Take the lease if it is free, or renew it if it is ours; True when it is ours."""
        started = time.monotonic()
        if not self.held() and started - self._tried_at < throttle_s:
            return False
        self._tried_at = started
        if self.held():
            ok = await self._renew()
        else:
            ok = bool(await self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms)) or await self._renew()
        if ok:
            if not self.held():
                log.info("took the audit writer lease (%s)", self.holder.decode())
            self._valid_until = started + self.ttl_ms * 0.8 / 1000
            self._renewed_at = started
        elif self.held():
            log.warning("lost the audit writer lease to another process")
            self._valid_until = 0.0
        return ok

    async def _renew(self) -> bool:
        """PEXPIRE the key only while it still names us (WATCH/MULTI: no Lua needed for this)."""
        return await self._if_ours(lambda pipe: pipe.pexpire(self.key, self.ttl_ms))

    async def release(self) -> None:
        """Give the lease up at once (graceful shutdown), so a standby need not wait for the TTL."""
        self._valid_until = 0.0
        with contextlib.suppress(rx.RedisError):
            await self._if_ours(lambda pipe: pipe.delete(self.key))

    async def _if_ours(self, command: Any) -> bool:
        async with transaction(self.redis) as pipe:  # WATCH works on a cluster too (one key)
            try:
                await pipe.watch(self.key)
                if await pipe.get(self.key) != self.holder:
                    return False
                pipe.multi()
                command(pipe)
                await pipe.execute()
            except rx.WatchError:
                return False
        return True


class Parked(msgspec.Struct, array_like=True):
    """An entry a standby hands to the leader (fields as str -> bytes: msgpack keeps bytes as is)."""

    partition: int
    entry_id: str
    fields: dict[str, bytes]


class AuditConsumer:
    """The audit handler's state in one process: the writer, the lease and the parked entries."""

    def __init__(self, settings: Settings, redis: Redis, *, holder: str | None = None) -> None:
        self.redis = redis
        self.keys = Keys(settings.prefix, settings.partitions)
        self.writer = AuditWriter(settings.audit_path, settings.audit_rotate_bytes)
        holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = Lease(redis, self.keys.audit_leader, LEASE_MS, holder)
        self._waiting: dict[str, asyncio.Future[None]] = {}  # parked here, not yet written
        self._ticker: asyncio.Task[None] | None = None
        self._failing = False
        self._acquiring = asyncio.Lock()
        self._closed = False

    async def handle(self, delivery: Delivery) -> None:
        if self._ticker is None or self._ticker.done():
            self._closed = False
            self._ticker = asyncio.create_task(self._tick_forever())
        if self.lease.held() or await self._acquire():
            await self.writer.write(delivery.partition, delivery.entry_id, delivery.pending.fields)
        else:
            await self._park(delivery)

    async def _acquire(self) -> bool:
        """Try to take the lease; concurrent handlers wait for one attempt instead of each parking."""
        async with self._acquiring:
            return self.lease.held() or await self.lease.acquire(throttle_s=ACQUIRE_EVERY_S)

    async def _park(self, delivery: Delivery) -> None:
        """Hand the entry to the leader and wait until it is written (see the module docstring)."""
        field = f"{delivery.partition}:{delivery.entry_id}"
        parked = Parked(delivery.partition, delivery.entry_id,
                        {k.decode(): v for k, v in delivery.pending.fields.items()})
        await self.redis.hset(self.keys.audit_parked, field, msgspec.msgpack.encode(parked))
        # Registered only once the field is in the hash: a look at the hash begun before would see
        # it missing and take it for written.
        waiter = self._waiting.get(field)
        if waiter is None:
            waiter = self._waiting[field] = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)

    async def _tick_forever(self) -> None:
        while not self._closed:  # the flag too: a cancellation swallowed on the way must not keep it alive
            try:
                await self._tick()
                if self._failing:
                    log.info("audit consumer background work recovered")
                self._failing = False
            except Exception as exc:  # noqa: BLE001 - logged once per failure streak; the next tick retries
                if not self._failing:
                    log.warning("audit consumer background work failed: %s: %s", type(exc).__name__, exc)
                self._failing = True
            await asyncio.sleep(TICK_S)

    async def _tick(self) -> None:
        """Keep the lease (leader) or try to take it (standby with parked entries); move parked entries."""
        if self.lease.held():
            if self.lease.renew_due():
                await self.lease.acquire()
        elif self._waiting:
            await self.lease.acquire(throttle_s=ACQUIRE_EVERY_S)
        if self.lease.held():
            await self._drain()
        elif self.writer.is_open:
            await self.writer.aclose()  # no longer the leader: let the next one lock the folder
        if self._waiting:
            await self._resolve_written()

    async def _drain(self) -> None:
        """Leader: write every parked entry, then delete them from the hash."""
        # At most one batch per standby.
        parked = cast("dict[bytes, bytes]", await self.redis.hgetall(self.keys.audit_parked))
        if not parked:
            return
        entries = [msgspec.msgpack.decode(value, type=Parked) for value in parked.values()]
        await asyncio.gather(*(
            self.writer.write(e.partition, e.entry_id, {k.encode(): v for k, v in e.fields.items()})
            for e in entries
        ))
        await self.redis.hdel(self.keys.audit_parked, *parked)

    async def _resolve_written(self) -> None:
        """Standby: the entries no longer parked were written; let their handlers return."""
        fields = list(self._waiting)
        still = await self.redis.hmget(self.keys.audit_parked, fields)
        for field, value in zip(fields, still, strict=True):
            if value is None:
                waiter = self._waiting.pop(field)
                if not waiter.done():
                    waiter.set_result(None)

    async def close(self) -> None:
        """Stop background work, finish queued writes, give the lease up."""
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for waiter in self._waiting.values():
            waiter.cancel()
        self._waiting.clear()
        await self.writer.aclose()
        await self.lease.release()  # only deletes the lease while it names this process


def build(settings: Settings, redis: Redis) -> Consumer:
    """The built-in `audit` consumer."""
    return build_consumer(AuditConsumer(settings, redis))


def build_consumer(audit: AuditConsumer) -> Consumer:
    """The consumer group settings around an `AuditConsumer` (tests build their own state)."""
    return Consumer(
        name="audit",
        handler=audit.handle,
        description="append-only, hash-chained audit log of every event (eventflow audit verify)",
        # As many lanes as a batch holds: the whole batch is written with one fsync (group commit).
        concurrency=256,
        batch_size=256,
        # Failures here are the disk's (full, damaged log): keep retrying for a good while before an
        # event is dead-lettered (replay it from the dead letters once fixed).
        max_attempts=20,
        backoff=Backoff(base_s=1.0, factor=2.0, cap_s=60.0),
        close=audit.close,
    )
