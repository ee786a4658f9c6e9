"""The runner: one reclaim-then-read loop per consumer and partition, bounded concurrency, graceful
shutdown. A poll first claims deliveries whose backoff has passed, then (every half lease) takes
over entries idle past the lease, then reads new entries; a batch is handled by `concurrency` lanes
and acknowledged with one XACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis

from app.connections import is_unavailable
from app.dispatch import LOG, Attempt, Claimed, Dispatch, Pending, now_ms
from app.errortrack import ErrorTracker, reporter_from_settings
from app.ids import trace_id
from app.metrics import Metrics, default_metrics
from app.settings import Settings
from app.tracing import Tracer, from_settings
from consumers.base import Consumer, Delivery, Permanent, Retry

log = logging.getLogger("eventflow.consumers")

RETRY_POLL_S = 0.25  # how often a loop looks for retries that other processes scheduled
BLOCK_MS = 250  # longest wait for new entries before looking at retries and stop again


def consumer_id(settings: Settings, environ: Mapping[str, str]) -> str:
    """A name stable per process slot, so a restarted process finds its own pending entries."""
    if settings.consumer_id:
        return settings.consumer_id
    machine = environ.get("FLY_MACHINE_ID") or socket.gethostname()
    slot = environ.get("EVENTFLOW_WORKER_SLOT") or environ.get("PS", "worker.1").rpartition(".")[2] or "1"
    return f"{machine}-{slot}"


class Outage:
    """Logs a Redis outage once when it starts and once when it ends, not once per poll."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self.delay_s = 0.1

    def failed(self, exc: BaseException) -> float:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s: Redis unavailable (%s); retrying with backoff", self.what, exc)
        self.delay_s = min(5.0, self.delay_s * 2)
        return self.delay_s

    def ok(self, asked_at: float | None = None) -> None:
        """Redis answered a request sent at `asked_at` (an answer to one sent before the outage began
        says nothing about it ending)."""
        if self.since is not None and asked_at is not None and asked_at < self.since:
            return
        if self.since is not None:
            log.info("%s: Redis is back after %.1f s", self.what, time.monotonic() - self.since)
            self.since = None
        self.delay_s = 0.1


@dataclass
class Observers:
    """Where a runner reports: metrics, error monitoring, and span export (None: off)."""

    metrics: Metrics
    errors: ErrorTracker
    tracer: Tracer | None = None

    @classmethod
    def from_settings(cls, dispatch: Dispatch) -> Observers:
        settings = dispatch.settings
        errors = ErrorTracker(dispatch.redis, settings, reporter=reporter_from_settings(settings))
        return cls(default_metrics(), errors, from_settings(settings, "eventflow-worker"))


class GroupLoop:
    """Delivers one partition's events to one consumer."""

    def __init__(self, consumer: Consumer, dispatch: Dispatch, partition: int, name: str, stop: asyncio.Event,
                 observers: Observers | None = None) -> None:
        self.consumer = consumer
        self.dispatch = dispatch
        self.partition = partition
        self.name = name  # this process's consumer name within the group
        self.stop = stop
        self.lease_ms = int(consumer.lease_s * 1000)
        self.outage = Outage(f"consumer {consumer.name} partition {partition}")
        self.lost = 0
        self._next_retry_poll = 0.0  # monotonic time of the next routine look at the retry schedule
        self._due: list[float] = []  # heap: when retries this loop scheduled itself fall due
        self._next_reclaim = 0.0
        self._wanted: dict[bytes, bool] = {}
        self.observers = observers or Observers(default_metrics(), ErrorTracker(dispatch.redis, dispatch.settings))
        self.tracer = self.observers.tracer
        self._bind_metrics(self.observers.metrics, consumer.name)

    def _bind_metrics(self, m: Metrics, group: str) -> None:
        # Bound once: the hot path only bumps plain counters (see app/metrics.py).
        self._metrics = m
        self._timing = m.timing(m.handler_duration, group)
        self._durations: list[float] = []  # this batch's handler times, observed together after it
        self._outcome = {o: m.count(m.deliveries, group, o)
                         for o in ("succeeded", "failed", "dead_lettered", "invalid", "skipped")}
        self._retries = m.retries.labels(group)
        self._dead_letters = {r: m.dead_letters.labels(group, r) for r in ("permanent", "max-attempts", "invalid")}
        self._lost = m.lost_entries.labels(group)

    async def run(self) -> None:
        group = self.consumer.name
        own = True  # first drain what this consumer name left pending before a restart
        ahead: asyncio.Task[tuple[Claimed, float]] | None = None  # the next batch, read during this one
        while not self.stop.is_set():
            try:
                if own:
                    claimed, asked_at = await self._own(), time.monotonic()
                    own = bool(claimed.entries)
                else:
                    task, ahead = ahead, None
                    claimed, asked_at = await task if task is not None else await self._timed_poll()
                    if claimed.entries:
                        ahead = asyncio.create_task(self._timed_poll())
                self.outage.ok(asked_at)
                await self._take(claimed)
            except asyncio.CancelledError:
                if ahead is not None:
                    ahead.cancel()
                raise
            except Exception as exc:
                if is_unavailable(exc):
                    await _sleep_unless(self.stop, self.outage.failed(exc))
                else:
                    log.exception("consumer loop error", extra={"group": group, "partition": self.partition})
                    await _sleep_unless(self.stop, 1.0)
        if ahead is not None:  # already read: handle it within the shutdown grace, leave nothing pending
            with contextlib.suppress(Exception):
                await self._take((await ahead)[0])

    async def _timed_poll(self) -> tuple[Claimed, float]:
        asked_at = time.monotonic()
        return await self._poll(), asked_at

    async def _own(self) -> Claimed:
        claimed = await self.dispatch.read(self.consumer.name, self.name, self.partition,
                                           self.consumer.batch_size, None, own=True)
        for entry in claimed.entries:
            entry.deliveries = 2
        return claimed

    async def _take(self, claimed: Claimed) -> None:
        self.lost += claimed.lost
        if claimed.lost:
            self._lost.inc(claimed.lost)
            log.error("%d pending entries were deleted or trimmed before delivery (lost)", claimed.lost,
                      extra={"group": self.consumer.name, "partition": self.partition})
        await self.handle(claimed.entries)

    async def _poll(self) -> Claimed:
        now = time.monotonic()
        group, batch = self.consumer.name, self.consumer.batch_size
        out = Claimed([])
        if now >= self._next_retry_poll or (self._due and now >= self._due[0]):
            self._next_retry_poll = now + RETRY_POLL_S
            while self._due and self._due[0] <= now:
                heapq.heappop(self._due)
            out = await self.dispatch.claim_due(group, self.name, self.partition, batch)
        if now >= self._next_reclaim:
            self._next_reclaim = now + self.consumer.lease_s / 2
            idle = await self.dispatch.reclaim_idle(group, self.name, self.partition, self.lease_ms, batch)
            out = Claimed(out.entries + idle.entries, out.lost + idle.lost)
        if out.entries:
            return out
        # Wake up in time for the earliest retry this loop scheduled itself.
        wake = min(self._next_retry_poll, self._due[0] if self._due else self._next_retry_poll)
        block_ms = max(1, min(BLOCK_MS, int((wake - time.monotonic()) * 1000) + 1))
        fresh = await self.dispatch.read(group, self.name, self.partition, batch, block_ms)
        return Claimed(fresh.entries, out.lost + fresh.lost)

    async def handle(self, entries: Sequence[Pending]) -> None:
        """Handle a batch in `concurrency` lanes, renewing the lease meanwhile; ack in one call."""
        if not entries:
            return
        attempts = await self._attempt_numbers(entries)
        skipped = self._outcome["skipped"]
        skipped_before = skipped.n
        lanes = min(self.consumer.concurrency, len(entries))
        renewer = asyncio.create_task(self._renew(entries))
        try:
            done = await asyncio.gather(*(self._lane(entries[i::lanes], attempts[i::lanes]) for i in range(lanes)))
        finally:
            renewer.cancel()
        acked = [e for lane in done for e in lane]
        # Counted per batch: every entry not acked failed and was counted in _failed/_dead.
        self._outcome["succeeded"].add(len(acked) - (skipped.n - skipped_before))
        if self._durations:
            self._timing.observe_many(self._durations)
            self._durations.clear()
        self._metrics.touch()
        await self.dispatch.ack(self.consumer.name, acked)

    async def _attempt_numbers(self, entries: Sequence[Pending]) -> list[int]:
        # Redeliveries and replays continue the attempt count kept in the attempt records.
        again = [e for e in entries if e.deliveries > 1 or e.kind != LOG]
        if not again:
            return [1] * len(entries)
        last = dict(zip(map(id, again), await self.dispatch.last_attempt(self.consumer.name, again), strict=True))
        numbers = []
        for entry in entries:
            record = last.get(id(entry))
            numbers.append(max(entry.deliveries if id(entry) in last else 1, record.attempt + 1 if record else 1))
        return numbers

    async def _renew(self, entries: Sequence[Pending]) -> None:
        while True:
            await asyncio.sleep(self.consumer.lease_s / 3)
            try:
                await self.dispatch.renew(self.consumer.name, self.name, entries)
            except Exception as exc:  # noqa: BLE001 - the next renewal tries again
                log.warning("lease renewal failed: %s", exc)

    def _wants(self, event_type: bytes) -> bool:
        """Consumer.wants, remembered per type (a log holds few distinct types; bounded anyway)."""
        wanted = self._wanted.get(event_type)
        if wanted is None:
            if len(self._wanted) > 10_000:
                self._wanted.clear()
            wanted = self._wanted[event_type] = self.consumer.wants(event_type.decode(errors="replace"))
        return wanted

    async def _lane(self, entries: Sequence[Pending], attempts: Sequence[int]) -> list[Pending]:
        acked = []
        for entry, attempt in zip(entries, attempts, strict=True):
            if await self._handle_one(entry, attempt):
                acked.append(entry)
        return acked

    async def _handle_one(self, entry: Pending, attempt: int) -> bool:
        """Run the handler once; True when the batch should ack the entry."""
        event_type = entry.fields.get(b"type")
        if event_type is not None and not self._wants(event_type):
            self._outcome["skipped"].n += 1
            return True  # not for this consumer: acknowledged without calling the handler
        delivery = Delivery(entry, self.consumer.name, attempt)
        if b"_v" not in entry.fields:  # written straight into the stream: check it, never trust it
            from app.schemas import schemas_for  # only direct writes need the validators: a lean start-up

            problems = delivery.record.problems or await schemas_for(self.dispatch).problems_of(delivery.record)
            if problems:
                await self._dead(delivery, "invalid", "; ".join(problems), None, 0.0)
                return False
        started = time.perf_counter()
        try:
            await self.consumer.handler(delivery)
        except Permanent as exc:
            self._ran(delivery, started, exc)
            await self._dead(delivery, "permanent", str(exc), type(exc).__name__, started, exc)
            return False
        except Retry as exc:
            self._ran(delivery, started, exc)
            return await self._failed(delivery, exc, exc.delay_s, started)
        except Exception as exc:  # noqa: BLE001 - every other failure is transient by contract
            self._ran(delivery, started, exc)
            return await self._failed(delivery, exc, None, started)
        elapsed = time.perf_counter() - started  # inlined _ran(): this is the path every event takes
        self._durations.append(elapsed)
        if self.tracer is not None:
            self.tracer.delivery(delivery, elapsed, None)
        if attempt > 1 or entry.kind != LOG:  # it has an attempt history: close it
            await self.dispatch.record(self.consumer.name, entry, self._attempt(delivery, "succeeded", started))
        return True

    def _ran(self, delivery: Delivery, started: float, exc: BaseException | None) -> None:
        elapsed = time.perf_counter() - started
        self._durations.append(elapsed)
        if self.tracer is not None:
            self.tracer.delivery(delivery, elapsed, exc)

    async def _failed(self, delivery: Delivery, exc: Exception, delay_s: float | None, started: float) -> bool:
        if delivery.attempt >= self.consumer.max_attempts:
            await self._dead(delivery, "max-attempts", str(exc), type(exc).__name__, started, exc)
            return False
        wait_s = delay_s if delay_s is not None else self.consumer.backoff.delay_s(delivery.attempt)
        record = self._attempt(delivery, "failed", started, exc)
        record.next_at_ms = now_ms() + int(wait_s * 1000)
        await self.dispatch.schedule_retry(self.consumer.name, delivery.pending, record)
        heapq.heappush(self._due, time.monotonic() + wait_s)
        self._outcome["failed"].n += 1
        self._retries.inc()
        context = self._context(delivery)
        self.observers.errors.note(self.consumer.name, type(exc).__name__, str(exc), delivery.id, exc=exc,
                                   trace_id=context["trace_id"])  # type: ignore[arg-type]
        log.warning("delivery failed; retrying in %.2f s: %s: %s", wait_s, type(exc).__name__, exc,
                    extra=context)
        return False

    async def _dead(self, delivery: Delivery, reason: str, error: str, error_type: str | None, started: float,
                    exc: BaseException | None = None) -> None:
        record = self._attempt(delivery, "dead-lettered", started)
        record.error, record.error_type = error[:2000], error_type
        await self.dispatch.dead_letter(self.consumer.name, delivery.pending, record, reason)
        self._outcome["invalid" if reason == "invalid" else "dead_lettered"].n += 1
        self._dead_letters[reason].inc()
        context = self._context(delivery)
        self.observers.errors.note(self.consumer.name, error_type or "InvalidEvent", error, delivery.id, dead=True,
                                   exc=exc, trace_id=context["trace_id"])  # type: ignore[arg-type]
        log.error("dead-lettered (%s): %s", reason, error, extra=context)

    def _attempt(self, delivery: Delivery, outcome: str, started: float, exc: Exception | None = None) -> Attempt:
        return Attempt(
            attempt=delivery.attempt, outcome=outcome, at_ms=now_ms(), consumer=self.name,
            duration_ms=round((time.perf_counter() - started) * 1000, 3) if started else None,
            error_type=type(exc).__name__ if exc else None, error=str(exc)[:2000] if exc else None,
            span_id=delivery.span_id,
        )

    def _context(self, delivery: Delivery) -> dict[str, object]:
        parent = str(delivery.event.get("traceparent", ""))
        return {
            "event_id": delivery.id, "event_type": delivery.type, "group": self.consumer.name,
            "attempt": delivery.attempt, "entry_id": delivery.entry_id,
            "trace_id": trace_id(parent) if len(parent) == 55 else None, "span_id": delivery.span_id,
        }


class Runner:
    """Runs consumers in this process until `stop` is set, then shuts down within the grace period."""

    def __init__(self, consumers: Sequence[Consumer], redis: Redis, settings: Settings, name: str,
                 observers: Observers | None = None) -> None:
        self.consumers = list(consumers)
        self.settings = settings
        self.dispatch = Dispatch(redis, settings)
        self.name = name
        self.stop = asyncio.Event()
        self.loops: list[GroupLoop] = []
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
                if not is_unavailable(exc) or self.stop.is_set():
                    raise
                await _sleep_unless(self.stop, outage.failed(exc))

    async def run(self) -> None:
        await self.setup()
        self.loops = [GroupLoop(c, self.dispatch, p, self.name, self.stop, self.observers)
                      for c in self.consumers for p in range(self.dispatch.keys.partitions)]
        tasks = [asyncio.create_task(loop.run()) for loop in self.loops]
        tasks.append(asyncio.create_task(self._heartbeat()))
        log.info("consuming: %s as %s", ", ".join(c.name for c in self.consumers), self.name)
        await self.stop.wait()
        grace_s = self.settings.shutdown_grace_s
        _done, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()  # what they held stays pending and is reclaimed after the lease
        await asyncio.gather(*pending, return_exceptions=True)
        await self._flush_observers()
        log.info("stopped (%d task(s) cut off after the %.0f s grace)", len(pending), grace_s)

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
            await _sleep_unless(self.stop, 10)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


