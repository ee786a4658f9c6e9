"""The runner: for each consumer, the partitions this worker holds a seat in (consumers/assign.py),
each read by a GroupLoop (consumers/loop.py) with bounded concurrency, following the seats as workers
come and go; a claim on the consumer name, renewed by the heartbeat; graceful shutdown within
EVENTFLOW_SHUTDOWN_GRACE_S.

The consumer name is what Redis and the seats know a worker by, so two live processes with one name
would read as one consumer: both would take the same entries and hold the same seats (duplicates, and
ordered consumers out of order). A process therefore claims its name before it reads anything (the
name's heartbeat key, holding a random token of the process) and waits while another live process
holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis

from app.connections import cancel_and_wait, is_unavailable
from app.dispatch import Dispatch, now_ms
from app.keys import Keys
from app.scripts import source
from app.settings import Settings
from consumers.assign import Changes, Seats
from consumers.base import Consumer
from consumers.loop import GroupLoop, Observers, Outage, sleep_unless

__all__ = ["GroupLoop", "NameClaim", "Observers", "Outage", "Runner", "consumer_id"]

log = logging.getLogger("eventflow.consumers")

BEAT_S = 3.0  # the name's claim is renewed this often...
CLAIM_TTL_MS = 10_000  # ...and lapses this long after the last beat: a restart after kill -9 waits at most this
WAIT_POLL_S = 1.0  # how often a process waiting for its name asks again (sooner when the claim lapses sooner)


def consumer_id(settings: Settings, environ: Mapping[str, str]) -> str:
    """A name stable per process slot, so a restarted process finds its own pending entries."""
    if settings.consumer_id:
        return settings.consumer_id
    machine = environ.get("FLY_MACHINE_ID") or socket.gethostname()
    slot = environ.get("EVENTFLOW_WORKER_SLOT") or environ.get("PS", "worker.1").rpartition(".")[2] or "1"
    return f"{machine}-{slot}"


@dataclass(frozen=True)
class Holder:
    """The process that holds a consumer name, as its claim describes it."""

    token: str
    host: str
    pid: int | str
    beat_age_s: float | None  # how long ago it last beat (its clock read against ours)
    ttl_s: float  # until its claim lapses unless it beats again (negative: the key has no expiry)

    @classmethod
    def of(cls, body: bytes, ttl_ms: int) -> Holder:
        """Read leniently: a claim written by hand or by an older version still names what it can."""
        try:
            fields = msgspec.json.decode(body)
        except msgspec.DecodeError:
            fields = {}
        if not isinstance(fields, dict):
            fields = {}
        beat = fields.get("beat_ms")
        return cls(token=str(fields.get("token", "")), host=str(fields.get("host") or "an unknown host"),
                   pid=fields.get("pid", "?"), beat_age_s=(now_ms() - beat) / 1000 if isinstance(beat, int) else None,
                   ttl_s=ttl_ms / 1000)

    def describe(self) -> str:
        age = "at an unknown time" if self.beat_age_s is None else f"{self.beat_age_s:.1f} s ago"
        return f"host {self.host}, pid {self.pid}, last beat {age}"


class NameClaim:
    """One process's claim on its consumer name: the name's heartbeat key (which the metrics read to
    count live workers per group), carrying a random token of this process, its host and pid. Taken
    only when free, renewed only while the token is still ours, given back only if still ours
    (app/lua/claim.lua), so two processes given one name never read as one consumer."""

    def __init__(self, redis: Redis, keys: Keys, name: str, consumers: Sequence[str]) -> None:
        self.name = name
        self.key = keys.heartbeat(name)
        self.token = secrets.token_hex(16)
        self.host = socket.gethostname()
        self.consumers = list(consumers)
        self._script = redis.register_script(source("claim"))

    def body(self) -> bytes:
        return msgspec.json.encode({"consumers": self.consumers, "host": self.host, "pid": os.getpid(),
                                    "token": self.token, "beat_ms": now_ms()})

    async def beat(self) -> Holder | None:
        """Take the name when it is free, renew it when it is ours: None then; else who holds it."""
        other = await self._script([self.key], [self.token, "beat", self.body(), CLAIM_TTL_MS])
        return None if other is None else Holder.of(other[0], int(other[1]))

    async def release(self) -> None:
        """Give the name back at a graceful stop, so that a restart need not wait for it to lapse."""
        await self._script([self.key], [self.token, "release", b"", 0])

    def left_by_dead_process(self, other: Holder) -> bool:
        """The claim names a process of this host that no longer runs: the usual case after a crash
        (a process manager restarting a worker killed by its handler), which is no naming mistake.
        Only a message: the claim still lapses by itself (a process of another container with this
        host name would not be visible here, so it is never taken over)."""
        if other.host != self.host or not isinstance(other.pid, int) or other.pid <= 0 or other.pid == os.getpid():
            return False
        try:
            os.kill(other.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # it exists, under another user
        return False

    async def wait_free(self, stop: asyncio.Event) -> bool:
        """Claim the name, waiting while another process holds it (warned once per holder), until
        `stop` is set: False then, and nothing was read."""
        outage = Outage(f"consumer name {self.name}")
        warned: str | None = None  # the holder already warned about
        while not stop.is_set():
            try:
                other = await self.beat()
                outage.ok()
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                await sleep_unless(stop, outage.failed(exc))
                continue
            if other is None:
                if warned is not None:
                    log.info("consumer name %r is free now: starting", self.name)
                return True
            if other.token != warned:
                warned = other.token
                if self.left_by_dead_process(other):
                    log.warning("consumer name %r is still claimed by pid %s on this host, which is no longer "
                                "running (it crashed or was killed; %s): not reading until its claim lapses, "
                                "in %.1f s", self.name, other.pid, other.describe().split(", ")[-1],
                                max(other.ttl_s, 0.0))
                else:
                    log.warning("consumer name %r is held by another live worker process (%s): not reading "
                                "until it is free. Give each worker process its own EVENTFLOW_CONSUMER_ID (or "
                                "its own EVENTFLOW_WORKER_SLOT on one host); a killed worker's claim lapses "
                                "%.0f s after its last beat", self.name, other.describe(), CLAIM_TTL_MS / 1000)
            await sleep_unless(stop, min(WAIT_POLL_S, other.ttl_s) if other.ttl_s > 0 else WAIT_POLL_S)
        return False


class Runner:
    """Runs consumers in this process until `stop` is set, then shuts down within the grace period."""

    def __init__(self, consumers: Sequence[Consumer], redis: Redis, settings: Settings, name: str,
                 observers: Observers | None = None) -> None:
        self.consumers = list(consumers)
        self.settings = settings
        self.dispatch = Dispatch(redis, settings)
        self.name = name
        self.stop = asyncio.Event()
        self.loops: list[GroupLoop] = []  # every partition loop this runner started
        self.reading: dict[str, set[int]] = {c.name: set() for c in self.consumers}  # partitions read now
        self.observers = observers or Observers.from_settings(self.dispatch)
        self.claim = NameClaim(redis, self.dispatch.keys, name, [c.name for c in self.consumers])
        # Another process took the name while this one stalled: the seats and the group membership
        # are the name's, so they are that process's now, and this one must not give them back.
        self.name_lost = False

    async def setup(self) -> None:
        """Create groups and publish each consumer's settings (idempotent; retried while Redis is down)."""
        outage = Outage("runner start-up")
        while True:
            try:
                for c in self.consumers:
                    await self.dispatch.ensure_groups(c.name, start_at_beginning=c.start == "beginning")
                    await self.dispatch.redis.hset(self.dispatch.keys.consumers, c.name, msgspec.json.encode(c.spec()))
                outage.ok()
                return
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                if self.stop.is_set():
                    return  # told to stop before Redis ever answered: nothing was read, nothing to finish
                await sleep_unless(self.stop, outage.failed(exc))

    async def run(self) -> None:
        """Claim the consumer name, consume until `stop`, then give the name back once what was read
        is finished (cut off, the claim lapses like the seats)."""
        if not await self.claim.wait_free(self.stop):
            return  # told to stop while another process held the name: nothing was read
        beating = asyncio.create_task(self._heartbeat())
        cut_off = False
        try:
            await self._consume()
        except asyncio.CancelledError:
            cut_off = True
            raise
        finally:  # given back after a failure too (at start-up, say): a restart need not wait for it
            await cancel_and_wait(beating)
            if not cut_off and not self.name_lost:
                with contextlib.suppress(Exception):  # it lapses anyway
                    await self.claim.release()

    async def _consume(self) -> None:
        await self.setup()
        if self.stop.is_set():
            return
        tasks = [asyncio.create_task(self._supervise(c)) for c in self.consumers]
        log.info("consuming: %s as %s", ", ".join(c.name for c in self.consumers), self.name)
        try:
            await self.stop.wait()
        except asyncio.CancelledError:  # cut off: nothing is given back, the leases expire
            await cancel_and_wait(*tasks)
            raise
        grace_s = self.settings.shutdown_grace_s
        _done, pending = await asyncio.wait(tasks, timeout=grace_s)
        await cancel_and_wait(*pending)  # what they held stays pending and is reclaimed after the lease
        await self._flush_observers()
        log.info("stopped (%d task(s) cut off after the %.0f s grace)", len(pending), grace_s)

    async def _supervise(self, consumer: Consumer) -> None:
        """Read the partitions this worker holds a seat in (consumers/assign.py), following the
        seats as workers come and go."""
        seats = Seats(self.dispatch.redis, self.dispatch.keys, consumer.name, self.name,
                      ordered=consumer.ordered, lease_s=consumer.lease_s)
        outage = Outage(f"consumer {consumer.name}")  # one log line per outage, however many partitions
        reading = _Reading(self, consumer, seats, outage)
        try:
            while not self.stop.is_set():
                try:
                    changes = await seats.tick()
                    outage.ok()
                except Exception as exc:
                    if not is_unavailable(exc):
                        log.exception("partition seats: tick failed", extra={"group": consumer.name})
                    await sleep_unless(self.stop, outage.failed(exc) if is_unavailable(exc) else 1.0)
                    continue
                reading.apply(changes)
                await sleep_unless(self.stop, seats.tick_s)
        except asyncio.CancelledError:
            reading.cancel()
            raise
        await reading.close()

    async def _flush_observers(self) -> None:
        self.observers.metrics.flush()
        try:
            await self.observers.errors.flush()
        except Exception as exc:  # noqa: BLE001 - at shutdown with Redis gone: a second of error counts
            log.warning("error monitoring: final flush failed: %s", exc)
        if self.observers.tracer is not None:
            await asyncio.to_thread(self.observers.tracer.flush)  # the export may wait on the network

    async def _heartbeat(self) -> None:
        """Beat until cancelled, through the shutdown grace too: the name stays ours until what was
        read is finished. A claim found in another process's hands means this one stalled past the
        claim's TTL and the name was taken: stop, rather than read beside it as one consumer."""
        while (other := await self._beat()) is None:
            await asyncio.sleep(BEAT_S)
        log.error("consumer name %r was taken by another worker process (%s) while this one stalled past "
                  "the claim's %.0f s: stopping, so that the two do not read as one consumer. Give each worker "
                  "process its own EVENTFLOW_CONSUMER_ID (or its own EVENTFLOW_WORKER_SLOT on one host)",
                  self.name, other.describe(), CLAIM_TTL_MS / 1000)
        self.name_lost = True
        self.stop.set()

    async def _beat(self) -> Holder | None:
        """Renew the claim, and this worker's entry in the live-worker set the metrics count; the other
        holder when the claim is lost."""
        try:
            other = await self.claim.beat()
            if other is None:
                now = now_ms()
                pipe = self.dispatch.redis.pipeline(transaction=False)
                pipe.zadd(self.dispatch.keys.workers, {self.name: now})
                pipe.zremrangebyscore(self.dispatch.keys.workers, 0, now - 86_400_000)
                await pipe.execute()
            return other
        except Exception as exc:  # noqa: BLE001 - the loops report outages; keep beating
            log.debug("heartbeat failed: %s", exc)
            return None


class _Reading:
    """The partition loops one consumer runs in this worker, started and stopped as seats change."""

    def __init__(self, runner: Runner, consumer: Consumer, seats: Seats, outage: Outage) -> None:
        self.runner = runner
        self.outage = outage
        self.consumer = consumer
        self.seats = seats
        self.running: dict[int, tuple[GroupLoop, asyncio.Task[None]]] = {}
        self.leaving: set[asyncio.Task[None]] = set()

    def apply(self, changes: Changes) -> None:
        for partition in changes.lost:  # another worker has it now: stop at once
            if (lost := self.running.pop(partition, None)) is not None:
                lost[0].stop()
                self.leaving.add(lost[1])
        for partition in changes.leave:  # a worker joined: finish what is in hand, then give it back
            if (left := self.running.pop(partition, None)) is not None:
                left[0].stop()
                self.leaving.add(asyncio.create_task(self._give_back(partition, left[1])))
        runner = self.runner
        for partition in changes.gained:
            loop = GroupLoop(self.consumer, runner.dispatch, partition, runner.name, runner.observers, self.outage)
            runner.loops.append(loop)
            self.running[partition] = (loop, asyncio.create_task(loop.run()))
        if changes.gained or changes.leave or changes.lost:
            runner.reading[self.consumer.name] = set(self.running)
            log.info("partitions of %s read here: %s", self.consumer.name, sorted(self.running) or "none",
                     extra={"group": self.consumer.name})
        self.leaving = {task for task in self.leaving if not task.done()}

    async def _give_back(self, partition: int, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(Exception):
            await task
        if self.runner.name_lost:
            return  # the seat is the name's: the process holding the name now holds it
        with contextlib.suppress(Exception):  # it expires anyway
            await self.seats.release(partition)

    def cancel(self) -> None:
        for _, task in self.running.values():
            task.cancel()
        for task in self.leaving:
            task.cancel()

    async def close(self) -> None:
        """Shutdown: every loop finishes what it read, then the seats go back."""
        for loop, _ in self.running.values():
            loop.stop()
        self.runner.reading[self.consumer.name] = set()
        await asyncio.gather(*(task for _, task in self.running.values()), *self.leaving, return_exceptions=True)
        if self.runner.name_lost:
            return  # the seats and the membership are the name's: the process holding it now has them
        with contextlib.suppress(Exception):  # the seats expire anyway
            await self.seats.leave_group()
