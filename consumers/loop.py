"""One consumer's loop over one partition: a reader keeps `concurrency` lanes fed, reading ahead while
they work, claims deliveries whose backoff has passed and (every half lease) takes over entries idle
past the lease; finished deliveries are acknowledged together. consumers/runner.py decides which
partitions a worker runs loops for.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.connections import cancel_and_wait, is_unavailable
from app.dispatch import LOG, Attempt, Claimed, Dispatch, Pending, is_missing_group, now_ms
from app.errors import message_of
from app.errortrack import ErrorTracker, reporter_from_settings
from app.events import INGESTED, stored_partition_key
from app.ids import entry_key, trace_id
from app.metrics import Metrics, default_metrics
from app.tracing import Tracer, from_settings
from consumers.base import Consumer, Delivery, Permanent, Retry

log = logging.getLogger("eventflow.consumers")

RETRY_POLL_S = 0.25  # how often a loop looks for retries that other processes scheduled
BLOCK_MS = 250  # longest wait for new entries before looking at retries and stop again
STUCK_AFTER_S = 10.0  # a cancelled handler running this much past its timeout (at most timeout_s) is logged


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


class Isolation:
    """Lets a suspect delivery run with no other handler of this process running.

    A delivery that was running when its worker stopped may be what stopped it (a poison pill) or
    merely have run beside one. Run alone, it either finishes or proves to be the culprit. Every
    handler passes the gate (a counter on the hot path); a suspect closes it, waits for the handlers
    running to finish, runs, and opens it again. Both waits are bounded by `window_s`, so a hung
    handler or a hung suspect holds the other consumers of the process up for seconds, not for ever:
    a poison pill kills its worker in that time, or is taken for innocent (it runs on beside others).
    """

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.running = 0  # handlers running past the open gate
        self.open = asyncio.Event()
        self.open.set()
        self._drained = asyncio.Event()  # set when the last running handler leaves a closed gate
        self._lock = asyncio.Lock()  # one suspect at a time
        self._reopen: asyncio.TimerHandle | None = None

    async def close(self) -> bool:
        """Close the gate; True when every running handler finished within the window (the suspect
        then runs alone, for at most another window), False when some still run (it runs anyway)."""
        await self._lock.acquire()
        self.open.clear()
        try:
            if self.running:
                self._drained.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drained.wait(), self.window_s)
        except BaseException:
            self.leave(closed=True)
            raise
        self._reopen = asyncio.get_running_loop().call_later(self.window_s, self.open.set)
        return not self.running

    def enter(self) -> bool:
        """Pass the gate when it is open (the hot path: no await); False when closed."""
        if self.open.is_set():
            self.running += 1
            return True
        return False

    async def entered(self) -> None:
        """Pass the gate once it opens."""
        while not self.enter():
            await self.open.wait()

    def leave(self, closed: bool) -> None:
        """A handler finished: the one that closed the gate opens it."""
        if closed:
            if self._reopen is not None:
                self._reopen.cancel()
                self._reopen = None
            self.open.set()
            self._lock.release()
            return
        self.running -= 1
        if not self.running and not self.open.is_set():
            self._drained.set()


class HandlerTimeout(TimeoutError):
    """The handler ran past its consumer's `timeout_s` and was stopped: a failed attempt (retried)."""


class Lane:
    """One handler lane: the task, and since when its handler runs (0: none runs)."""

    __slots__ = ("delivery", "since", "stuck", "task", "timed_out")

    def __init__(self) -> None:
        self.since = 0.0
        self.task: asyncio.Task[None] = None  # type: ignore[assignment] # set once the task exists
        self.timed_out = False  # the watchdog cancelled the running handler
        self.stuck = False  # ...and it ran on regardless: logged once
        self.delivery: Delivery | None = None  # the one its handler runs (or last ran)

    def finish_timeout(self, timeout_s: float | None) -> None:
        """The handler the watchdog cancelled has ended: take its cancellation back and fail the
        attempt with HandlerTimeout instead (unless the task is also being stopped: shutdown)."""
        self.timed_out = self.stuck = False
        if self.task.uncancel() == 0:
            raise HandlerTimeout(f"the handler ran longer than timeout_s ({timeout_s:g} s) and was stopped")


@dataclass
class Observers:
    """Where a runner reports: metrics, error monitoring, and span export (None: off)."""

    metrics: Metrics
    errors: ErrorTracker
    tracer: Tracer | None = None
    isolation: Isolation = field(default_factory=Isolation)  # shared by the runner's loops: one per process

    @classmethod
    def from_settings(cls, dispatch: Dispatch) -> Observers:
        settings = dispatch.settings
        errors = ErrorTracker(dispatch.redis, settings, reporter=reporter_from_settings(settings))
        return cls(default_metrics(), errors, from_settings(settings, "eventflow-worker"))


class GroupLoop:
    """Delivers one partition's events to one consumer.

    A reader keeps `concurrency` lanes fed, reading ahead while they work (up to two batches in
    hand), so one slow delivery holds up only its own lane; finished deliveries are acknowledged
    together. An ordered consumer routes each partition key to one lane and retries a failed event
    in place, so nothing behind it in that key runs first.
    """

    def __init__(self, consumer: Consumer, dispatch: Dispatch, partition: int, name: str,
                 observers: Observers | None = None, outage: Outage | None = None) -> None:
        self.consumer = consumer
        self.dispatch = dispatch
        self.partition = partition
        self.name = name  # this process's consumer name within the group
        self.halt = asyncio.Event()  # stop reading: shutdown, or the partition goes to another worker
        self.ordered = consumer.ordered
        self.lease_ms = int(consumer.lease_s * 1000)
        self.outage = outage or Outage(f"consumer {consumer.name} partition {partition}")
        self.lost = 0
        self._read_up_to: str | None = None  # the newest log entry id this loop has read
        self._next_retry_poll = 0.0  # monotonic time of the next routine look at the retry schedule
        self._due: list[float] = []  # heap: when retries this loop scheduled itself fall due
        self._next_reclaim = 0.0
        self._wanted: dict[bytes, bool] = {}
        self._lanes = max(1, consumer.concurrency)
        self._queues: list[asyncio.Queue[tuple[Pending, int] | None]] = [
            asyncio.Queue() for _ in range(self._lanes if self.ordered else 1)]
        self._held: dict[int, Pending] = {}  # read and not finished (their lease is renewed)
        self._high_water = max(2 * consumer.batch_size, self._lanes)
        self._room = asyncio.Event()  # fewer than _high_water in hand: read more
        self._room.set()
        self._idle = asyncio.Event()  # nothing in hand
        self._idle.set()
        self._acks: list[Pending] = []
        self._running: list[Lane] = []  # the handler lanes, for the watchdog
        self._ack_wanted = asyncio.Event()
        self._ack_lock = asyncio.Lock()
        self.observers = observers or Observers(default_metrics(), ErrorTracker(dispatch.redis, dispatch.settings))
        self.tracer = self.observers.tracer
        self._bind_metrics(self.observers.metrics, consumer.name)

    def _bind_metrics(self, m: Metrics, group: str) -> None:
        # Bound once: the hot path only bumps plain counters (see app/metrics.py).
        self._metrics = m
        self._timing = m.timing(m.handler_duration, group)
        self._durations: list[float] = []  # handler times, observed together at each ack
        self._outcome = {o: m.count(m.deliveries, group, o)
                         for o in ("succeeded", "failed", "dead_lettered", "invalid", "skipped")}
        self._retries = m.retries.labels(group)
        self._dead_letters = {r: m.dead_letters.labels(group, r) for r in ("permanent", "max-attempts", "invalid")}
        self._lost = m.lost_entries.labels(group)

    def stop(self) -> None:
        """Stop reading. What was read is still handled (an ordered consumer finishes only the events
        in hand and leaves the rest pending, in order, for whoever reads the partition next)."""
        self.halt.set()
        self._room.set()
        self._idle.set()

    async def run(self) -> None:
        for i in range(self._lanes):
            lane = Lane()
            lane.task = asyncio.create_task(self._lane(self._queues[i % len(self._queues)], lane))
            self._running.append(lane)
        lanes = [lane.task for lane in self._running]
        helpers = [asyncio.create_task(self._acker()), asyncio.create_task(self._renewer())]
        if self.consumer.timeout_s is not None:
            helpers.append(asyncio.create_task(self._watchdog(self.consumer.timeout_s)))
        try:
            await self._read()
            for queue in self._queues:  # after what is queued (ordered lanes stop before it)
                for _ in range(self._lanes):
                    queue.put_nowait(None)
            await asyncio.gather(*lanes)
            with contextlib.suppress(Exception):  # not acked: redelivered after the lease
                await self._flush_acks()
        finally:
            await cancel_and_wait(*lanes, *helpers)

    async def _read(self) -> None:
        group = self.consumer.name
        own: tuple[str, str] | None = ("0", "0")  # first drain what this consumer name left pending
        taken_over = not self.ordered
        while not self.halt.is_set():
            try:
                if not taken_over:  # the only reader now: what the last one left is ours, in order
                    await self._take(await self.dispatch.take_over(group, self.name, self.partition))
                    taken_over = True
                if own:
                    claimed, asked_at = await self._own(own), time.monotonic()
                    own = claimed.after
                else:
                    await self._room.wait()
                    if self.halt.is_set():
                        break
                    asked_at = time.monotonic()
                    claimed = await self._poll()
                self.outage.ok(asked_at)
                await self._take(claimed)
                if own:  # handled before the next page: one's own entries are read in order
                    await self._idle.wait()
                    await self._flush_acks()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_unavailable(exc):
                    await sleep_unless(self.halt, self.outage.failed(exc))
                elif is_missing_group(exc):
                    await self._recreate_group(exc)
                else:
                    log.exception("consumer loop error", extra={"group": group, "partition": self.partition})
                    await sleep_unless(self.halt, 1.0)

    async def _recreate_group(self, exc: Exception) -> None:
        """The group or its stream was removed by hand (XGROUP DESTROY, DEL): make it again instead
        of failing every read until someone restarts this worker. On the log it starts after the
        newest entry this loop read, so nothing appended since is skipped (with a `now` consumer)
        nor the whole log handed over again (with a `beginning` one); before any read, where the
        consumer's `start` says, as a restarted worker would."""
        log.warning("consumer group missing (%s); creating it again", exc,
                    extra={"group": self.consumer.name, "partition": self.partition})
        try:
            await self.dispatch.ensure_groups(self.consumer.name, self.consumer.start == "beginning",
                                              partitions=[self.partition], log_start=self._read_up_to)
        except Exception as again:  # noqa: BLE001 - the next read fails and tries again
            log.warning("recreating the consumer group failed: %s", again)
            await sleep_unless(self.halt, 1.0)

    async def _own(self, after: tuple[str, str]) -> Claimed:
        claimed = await self.dispatch.read(self.consumer.name, self.name, self.partition,
                                           self.consumer.batch_size, None, own=after)
        for entry in claimed.entries:  # left pending by this name's last process: it stopped before the ack
            entry.deliveries, entry.recovered = 2, True
        return claimed

    async def _take(self, claimed: Claimed) -> None:
        self.lost += claimed.lost
        if claimed.lost:
            self._lost.inc(claimed.lost)
            log.error("%d pending entries were deleted or trimmed before delivery (lost)", claimed.lost,
                      extra={"group": self.consumer.name, "partition": self.partition})
        entries = claimed.entries
        if not entries:
            return
        for entry in reversed(entries):  # a read returns log entries oldest first: its newest is last
            if entry.kind == LOG:
                if self._read_up_to is None or entry_key(entry.stream_id) > entry_key(self._read_up_to):
                    self._read_up_to = entry.stream_id  # where a group removed by hand is made again
                break
        attempts = await self._attempt_numbers(entries)
        queues = self._queues
        queued = False
        for entry, attempt in zip(entries, attempts, strict=True):
            if attempt is None:  # left pending after it succeeded (its worker stopped before the ack)
                self._acks.append(entry)
                self._ack_wanted.set()
                continue
            queued = True
            self._held[id(entry)] = entry
            # An ordered consumer's lane by partition key: one key's events run one at a time, in order.
            lane = 0 if len(queues) == 1 else zlib.crc32(stored_partition_key(entry.fields).encode()) % len(queues)
            queue = queues[lane]
            queue.put_nowait((entry, attempt))
        if queued:
            self._idle.clear()
        if len(self._held) >= self._high_water:
            self._room.clear()

    async def _poll(self) -> Claimed:
        now = time.monotonic()
        group, batch = self.consumer.name, self.consumer.batch_size
        out = Claimed([])
        if not self.ordered and (now >= self._next_retry_poll or (self._due and now >= self._due[0])):
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

    async def _lane(self, queue: asyncio.Queue[tuple[Pending, int] | None], lane: Lane) -> None:
        while (item := await queue.get()) is not None:
            entry, attempt = item
            while True:
                try:
                    acked = await self._handle_one(entry, attempt, lane)
                    break
                except Exception as exc:  # noqa: BLE001 - Redis failed while recording the outcome
                    if not self.ordered:  # left pending: delivered again after the lease
                        log.warning("delivery outcome not recorded (%s); it stays pending", exc,
                                    extra={"group": self.consumer.name, "entry_id": entry.entry_id})
                        acked = False
                        break
                    await sleep_unless(self.halt, self.outage.failed(exc))  # ordered: nothing may pass it
                    if self.halt.is_set():
                        return
            self._finished(entry, acked)
            if self.ordered and self.halt.is_set():
                return

    def _finished(self, entry: Pending, acked: bool) -> None:
        held = self._held
        del held[id(entry)]
        if acked:
            self._acks.append(entry)
            self._ack_wanted.set()
        if len(held) < self._high_water:
            self._room.set()
        if not held:
            self._idle.set()

    async def _acker(self) -> None:
        while True:
            await self._ack_wanted.wait()
            try:
                await self._flush_acks()
            except Exception as exc:  # noqa: BLE001 - kept, and sent again after a pause
                await asyncio.sleep(self.outage.failed(exc) if is_unavailable(exc) else 1.0)

    async def _flush_acks(self) -> None:
        """Acknowledge every finished delivery in one XACK per stream."""
        async with self._ack_lock:
            self._ack_wanted.clear()
            if self._durations:
                self._timing.observe_many(self._durations)
                self._durations.clear()
            if not self._acks:
                return
            acks, self._acks = self._acks, []
            try:
                await self.dispatch.ack(self.consumer.name, acks)
            except BaseException:
                self._acks[:0] = acks
                raise
            self._metrics.touch()

    async def _renewer(self) -> None:
        while True:
            await asyncio.sleep(self.consumer.lease_s / 3)
            if not self._held:
                continue
            try:
                await self.dispatch.renew(self.consumer.name, self.name, list(self._held.values()))
            except Exception as exc:  # noqa: BLE001 - the next renewal tries again
                log.warning("lease renewal failed: %s", exc)

    async def _watchdog(self, timeout_s: float) -> None:
        """Stop handlers running past the consumer's timeout_s (a hung one kept its lease renewed, and
        its event in hand, for ever). A timer per delivery (asyncio.timeout) cost more than the rest
        of a fast delivery; one look a second (or four per timeout) costs nothing per event."""
        every = min(1.0, timeout_s / 4)
        while True:
            await asyncio.sleep(every)
            limit = time.perf_counter() - timeout_s
            for lane in self._running:
                if not lane.since or lane.since >= limit:
                    continue
                if not lane.timed_out:
                    lane.timed_out = True
                    lane.task.cancel()
                elif not lane.stuck and lane.since < limit - min(timeout_s, STUCK_AFTER_S):
                    self._stuck(lane, timeout_s)

    def _stuck(self, lane: Lane, timeout_s: float) -> None:
        """A handler cancelled for its timeout runs on (it swallows asyncio.CancelledError): nothing
        more can stop it, and until now nothing said so while its event sat in hand, lease renewed."""
        lane.stuck = True
        running_s = time.perf_counter() - lane.since
        log.error("handler still running %.0f s after timeout_s (%g s) stopped it: it ignores its cancellation "
                  "(catches asyncio.CancelledError), so its event stays in hand, lease renewed, until it returns "
                  "or the worker stops", running_s - timeout_s, timeout_s,
                  extra=self._context(lane.delivery) if lane.delivery is not None else {"group": self.consumer.name})

    async def _attempt_numbers(self, entries: Sequence[Pending]) -> list[int | None]:
        """Each entry's attempt number; None for one recovered after it succeeded (only acked now).
        Redeliveries and replays continue the count kept in the attempt records; a recovered entry
        whose last record is a start was running when its worker stopped: a suspect (`Pending.suspect`)."""
        again = [e for e in entries if e.deliveries > 1 or e.kind != LOG]
        if not again:
            return [1] * len(entries)
        last = dict(zip(map(id, again), await self.dispatch.last_attempt(self.consumer.name, again), strict=True))
        numbers: list[int | None] = []
        for entry in entries:
            record = last.get(id(entry))
            if entry.recovered and record is not None:
                # Only a log entry's success is its own: a replayed copy shares the event's records
                # with the original and with earlier replays of it.
                if record.outcome == "succeeded" and entry.kind == LOG:
                    numbers.append(None)
                    continue
                if record.outcome == "started":
                    entry.suspect = bool(record.alone)
            numbers.append(max(entry.deliveries if id(entry) in last else 1, record.attempt + 1 if record else 1))
        return numbers

    def _wants(self, event_type: bytes) -> bool:
        """Consumer.wants, remembered per type (a log holds few distinct types; bounded anyway)."""
        wanted = self._wanted.get(event_type)
        if wanted is None:
            if len(self._wanted) > 10_000:
                self._wanted.clear()
            wanted = self._wanted[event_type] = self.consumer.wants(event_type.decode(errors="replace"))
        return wanted

    async def _handle_one(self, entry: Pending, attempt: int, lane: Lane) -> bool:
        """Run the handler (an ordered consumer: until it succeeds or gives up); True to ack the entry."""
        event_type = entry.fields.get(b"type")
        if event_type is not None and not self._wants(event_type):
            self._outcome["skipped"].n += 1
            return True  # not for this consumer: acknowledged without calling the handler
        delivery = Delivery(entry, self.consumer.name, attempt)
        if entry.fields.get(b"_v") != INGESTED and await self._invalid(delivery):  # written straight into the stream
            return False
        gate = self.observers.isolation
        closed = False  # this delivery holds the gate: no other handler of this process runs meanwhile
        if attempt > 1 and (closed := await self._starting(delivery)) is None:
            return False  # dead-lettered unrun
        if not closed and not gate.enter():
            await gate.entered()  # a suspect is running alone: wait for it
        lane.delivery = delivery
        started = lane.since = time.perf_counter()  # the watchdog stops a handler running past timeout_s
        try:
            try:
                await self.consumer.handler(delivery)
            finally:
                lane.since = 0.0
                gate.leave(closed)
                if lane.timed_out:
                    lane.finish_timeout(self.consumer.timeout_s)
        except Permanent as exc:
            self._ran(delivery, started, exc)
            await self._dead(delivery, "permanent", message_of(exc), type(exc).__name__, started, exc)
            return False
        except Retry as exc:
            self._ran(delivery, started, exc)
            return await self._failed(delivery, exc, exc.delay_s, started, lane)
        except BaseException as exc:  # every other failure is transient by contract
            # Not only Exceptions: a BaseException (or a CancelledError not aimed at this task) that
            # escaped here killed the lane with the event in hand, its lease renewed for ever.
            if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
                raise
            self._ran(delivery, started, exc)
            return await self._failed(delivery, exc, None, started, lane)
        elapsed = time.perf_counter() - started  # inlined _ran(): this is the path every event takes
        self._durations.append(elapsed)
        if self.tracer is not None:
            self.tracer.delivery(delivery, elapsed, None)
        if attempt > 1 or entry.kind != LOG:  # it has an attempt history: close it
            await self.dispatch.record(self.consumer.name, entry, self._attempt(delivery, "succeeded", started))
        self._outcome["succeeded"].n += 1
        return True

    async def _invalid(self, delivery: Delivery) -> bool:
        """Dead-letter an entry written straight into the stream that fails its checks (never trusted)."""
        from app.schemas import schemas_for  # only direct writes need the validators: a lean start-up

        problems = delivery.record.problems or await schemas_for(self.dispatch).problems_of(delivery.record)
        if problems:
            await self._dead(delivery, "invalid", "; ".join(problems), None, 0.0)
        return bool(problems)

    async def _starting(self, delivery: Delivery) -> bool | None:
        """Record that a repeated attempt begins, before its handler runs, so an attempt that kills
        the worker (out of memory, an abort in C code) still counts. A suspect (it was running when
        its worker stopped) runs alone: True when it closed the gate (`Isolation`). None when it is
        dead-lettered unrun instead: its attempts are used up and the last one, run alone, ended
        with its worker: a poison pill that would kill every worker reading it. One that was not
        alone then (others ran beside it) gets one more attempt, alone, before it is judged."""
        entry, limit = delivery.pending, self.consumer.max_attempts
        suspect, entry.suspect = entry.suspect, None  # judged once: an ordered retry in place is no suspect
        if delivery.attempt > limit and (suspect or delivery.attempt > limit + 1):
            done = Delivery(entry, self.consumer.name, delivery.attempt - 1)
            await self._dead(done, "max-attempts", f"its worker stopped while attempt {done.attempt} ran (crashed, "
                             f"was killed, or was cut off at shutdown); max_attempts is {limit}", "WorkerStopped", 0.0)
            return None
        closed = suspect is not None or delivery.attempt > limit
        alone = await self.observers.isolation.close() if closed else None
        try:
            await self.dispatch.record(self.consumer.name, entry, Attempt(
                attempt=delivery.attempt, outcome="started", at_ms=now_ms(), consumer=self.name, alone=alone))
        except BaseException:
            if closed:
                self.observers.isolation.leave(closed)
            raise
        return closed

    def _ran(self, delivery: Delivery, started: float, exc: BaseException | None) -> None:
        elapsed = time.perf_counter() - started
        self._durations.append(elapsed)
        if self.tracer is not None:
            self.tracer.delivery(delivery, elapsed, exc)

    async def _failed(self, delivery: Delivery, exc: BaseException, delay_s: object, started: float,
                      lane: Lane) -> bool:
        if delivery.attempt >= self.consumer.max_attempts:
            await self._dead(delivery, "max-attempts", message_of(exc), type(exc).__name__, started, exc)
            return False
        wait_s = self._wait_s(delivery.attempt, delay_s)
        record = self._attempt(delivery, "failed", started, exc)
        record.next_at_ms = now_ms() + int(wait_s * 1000)
        if self.ordered:  # retried in place: the key's later events wait behind it
            await self.dispatch.record(self.consumer.name, delivery.pending, record)
        else:
            await self.dispatch.schedule_retry(self.consumer.name, delivery.pending, record)
            heapq.heappush(self._due, time.monotonic() + wait_s)
        self._outcome["failed"].n += 1
        self._retries.inc()
        context = self._context(delivery)
        message = message_of(exc)
        self.observers.errors.note(self.consumer.name, type(exc).__name__, message, delivery.id, exc=exc,
                                   trace_id=context["trace_id"])  # type: ignore[arg-type]
        log.warning("delivery failed; retrying in %.2f s: %s: %s", wait_s, type(exc).__name__, message,
                    extra=context)
        if not self.ordered:
            return False
        await sleep_unless(self.halt, wait_s)
        if self.halt.is_set():
            return False  # stays pending: the partition's next reader starts from it
        return await self._handle_one(delivery.pending, delivery.attempt + 1, lane)

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

    def _wait_s(self, attempt: int, delay_s: object) -> float:
        """The wait before the next attempt: Retry's delay when it is a finite number of seconds, else
        the backoff; never below 0 nor past EVENTFLOW_ATTEMPTS_TTL_S, after which the attempt count
        would be forgotten (an event always asking for a long retry would never be dead-lettered)."""
        wait_s = _seconds(delay_s)
        if wait_s is None:  # NaN, infinity, a string...: not a due time (NaN made none at all)
            wait_s = self.consumer.backoff.delay_s(attempt)
        return max(0.0, min(wait_s, float(self.dispatch.settings.attempts_ttl_s)))

    def _attempt(self, delivery: Delivery, outcome: str, started: float, exc: BaseException | None = None) -> Attempt:
        return Attempt(
            attempt=delivery.attempt, outcome=outcome, at_ms=now_ms(), consumer=self.name,
            duration_ms=round((time.perf_counter() - started) * 1000, 3) if started else None,
            error_type=type(exc).__name__ if exc is not None else None,
            error=message_of(exc)[:2000] if exc is not None else None,
            span_id=delivery.span_id,
        )

    def _context(self, delivery: Delivery) -> dict[str, object]:
        parent = str(delivery.event.get("traceparent", ""))
        return {
            "event_id": delivery.id, "event_type": delivery.type, "group": self.consumer.name,
            "attempt": delivery.attempt, "entry_id": delivery.entry_id,
            "trace_id": trace_id(parent) if len(parent) == 55 else None, "span_id": delivery.span_id,
        }


def _seconds(value: object) -> float | None:
    """`value` as a finite number of seconds, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond a float: longer than any wait allowed anyway
        return sys.float_info.max
    return seconds if math.isfinite(seconds) else None


def _being_cancelled() -> bool:
    """True when this task was told to stop (shutdown), not merely handed a CancelledError."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
