"""Which partitions of a consumer group this worker reads.

Each (group, partition) has seats, and a worker reads a partition only while it holds one of its
seats. An ordered consumer has one seat per partition: one reader at a time is what keeps the events
of a partition key in order. Other consumers have ceil(workers / partitions) seats per partition, so
with more workers than partitions every worker still reads (a consumer group shares a stream among
its readers), and with fewer each partition has exactly one reader.

A seat is a lease (app/lua/lease.lua) in the partition's own hash tag, so on a cluster it lives on
the node that holds the partition. Every worker aims to hold ceil(seats / workers) of them, never two
of one partition: at each tick it renews its own, gives back extras when workers join, and takes free
ones when workers leave or die. Leases last two thirds of the consumer's lease and ticks come every
third of that (at most 5 s; every 0.25 s while the worker count or the seats just changed), so a
dead worker's partitions are read again within the lease time (leases last at least a second,
whatever the consumer's lease).
"""

from __future__ import annotations

import asyncio
import math
import zlib
from dataclasses import dataclass, field

from redis.asyncio import Redis

from app.dispatch import now_ms
from app.keys import Keys
from app.scripts import source

QUICK_TICK_S = 0.25


@dataclass
class Changes:
    """What one tick decided: partitions to start reading, to give back (after a drain), and lost."""

    gained: list[int] = field(default_factory=list)
    leave: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)


class Seats:
    """One worker's seats in one consumer group."""

    def __init__(self, redis: Redis, keys: Keys, group: str, holder: str, *, ordered: bool, lease_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.group = group
        self.holder = holder
        self.ordered = ordered
        self.ttl_ms = max(1000, int(lease_s * 1000 * 2 / 3))
        self.routine_tick_s = min(5.0, self.ttl_ms / 3000)  # three renewals per lease at least
        self.tick_s = QUICK_TICK_S  # until the worker count settles (see tick)
        self._workers = 0
        self.held: dict[int, int] = {}  # partition -> seat number
        self.leaving: set[int] = set()  # held, being drained before they are given back
        self._lease = redis.register_script(source("lease"))
        self._start = zlib.crc32(holder.encode()) % keys.partitions  # where this worker looks first

    def _key(self, partition: int, seat: int) -> str:
        return self.keys.seat(partition, self.group, seat)

    async def workers(self) -> int:
        """Live workers of this group, this one included (each says so at every tick)."""
        now, members = now_ms(), self.keys.group_members(self.group)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(members, {self.holder: now})
        pipe.zremrangebyscore(members, 0, now - self.ttl_ms)
        pipe.zcard(members)
        return max(1, int((await pipe.execute())[2]))

    def plan(self, workers: int) -> tuple[int, int]:
        """(seats per partition, seats this worker should hold)."""
        partitions = self.keys.partitions
        per = 1 if self.ordered else max(1, math.ceil(workers / partitions))
        return per, min(partitions, math.ceil(partitions * per / workers))

    async def tick(self) -> Changes:
        """Renew, then give back or take seats. While workers come and go, the next tick comes soon
        (two workers that start together may both reach for the same seat first)."""
        workers = await self.workers()
        settled, self._workers = workers == self._workers, workers
        per, target = self.plan(workers)
        out = Changes()
        held = list(self.held.items())  # renewed together: one round trip, not one per partition
        renewed = await asyncio.gather(*(self._lease([self._key(p, seat)], [self.holder, "renew", self.ttl_ms])
                                         for p, seat in held))
        for (partition, seat), ok in zip(held, renewed, strict=True):
            if self.held.get(partition) != seat:
                continue  # given back meanwhile (Reading._give_back)
            if not ok:
                self.held.pop(partition, None)  # it expired and someone else took it: stop at once
                self.leaving.discard(partition)
                out.lost.append(partition)
            elif seat >= per and partition not in self.leaving:
                out.leave.append(partition)
        staying = [p for p in self.held if p not in self.leaving and p not in out.leave]
        for partition in sorted(staying, key=self._order, reverse=True)[: max(0, len(staying) - target)]:
            out.leave.append(partition)
        self.leaving.update(out.leave)
        wanted = target - (len(self.held) - len(self.leaving))
        for partition in sorted(range(self.keys.partitions), key=self._order):
            if wanted <= 0:
                break
            if partition in self.held:
                continue
            for seat in range(per):
                if await self._lease([self._key(partition, seat)], [self.holder, "take", self.ttl_ms]):
                    self.held[partition] = seat
                    out.gained.append(partition)
                    wanted -= 1
                    break
        changed = out.gained or out.leave or out.lost
        self.tick_s = self.routine_tick_s if settled and not changed else QUICK_TICK_S
        return out

    def _order(self, partition: int) -> int:
        return (partition - self._start) % self.keys.partitions

    async def release(self, partition: int) -> None:
        """Give a drained partition back so another worker can take it at once."""
        seat = self.held.pop(partition, None)
        self.leaving.discard(partition)
        if seat is not None:
            await self._lease([self._key(partition, seat)], [self.holder, "release", 0])

    async def leave_group(self) -> None:
        """At shutdown: every seat back, and this worker no longer counted."""
        for partition in list(self.held):
            await self.release(partition)
        await self.redis.zrem(self.keys.group_members(self.group), self.holder)
