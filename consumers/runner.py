"""The runner: for each consumer, the partitions this worker holds a seat in (consumers/assign.py),
each read by a GroupLoop (consumers/loop.py) with bounded concurrency, following the seats as workers
come and go; a heartbeat; graceful shutdown within EVENTFLOW_SHUTDOWN_GRACE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping, Sequence

import msgspec
from redis.asyncio import Redis

from app.connections import cancel_and_wait, is_unavailable
from app.dispatch import Dispatch, now_ms
from app.settings import Settings
from consumers.assign import Changes, Seats
from consumers.base import Consumer
from consumers.loop import GroupLoop, Observers, Outage, sleep_unless

__all__ = ["GroupLoop", "Observers", "Outage", "Runner", "consumer_id"]

log = logging.getLogger("eventflow.consumers")


def consumer_id(settings: Settings, environ: Mapping[str, str]) -> str:
    """A name stable per process slot, so a restarted process finds its own pending entries."""
    if settings.consumer_id:
        return settings.consumer_id
    machine = environ.get("FLY_MACHINE_ID") or socket.gethostname()
    slot = environ.get("EVENTFLOW_WORKER_SLOT") or environ.get("PS", "worker.1").rpartition(".")[2] or "1"
    return f"{machine}-{slot}"


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
        await self.setup()
        if self.stop.is_set():
            return
        tasks = [asyncio.create_task(self._supervise(c)) for c in self.consumers]
        tasks.append(asyncio.create_task(self._heartbeat()))
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
        keys = self.dispatch.keys
        body = msgspec.json.encode({"consumers": [c.name for c in self.consumers], "pid": os.getpid()})
        while not self.stop.is_set():
            try:
                now = now_ms()
                pipe = self.dispatch.redis.pipeline(transaction=False)
                pipe.set(keys.heartbeat(self.name), body, ex=30)
                pipe.zadd(keys.workers, {self.name: now})  # the metrics count live workers from this
                pipe.zremrangebyscore(keys.workers, 0, now - 86_400_000)
                await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - the loops report outages; keep beating
                log.debug("heartbeat failed: %s", exc)
            await sleep_unless(self.stop, 10)


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
        with contextlib.suppress(Exception):  # the seats expire anyway
            await self.seats.leave_group()
