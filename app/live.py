"""The live feed: one Redis reader per web process fans new log entries out to every subscriber.

The reader task blocks on XREAD over all partitions' streams. After a read that found entries it
waits a flush interval before reading again, so under load each read brings a batch: the cost of
fan-out is per read and per subscriber, not per entry and per subscriber. The interval grows with
the subscribers (`flush_per_subscriber_s` each, between `FLUSH_MIN_S` and `FLUSH_MAX_S`): a write
costs the web process tens of microseconds per subscriber, so 1,000 viewers are written to every
50 ms (20k writes/s, not one per entry per viewer), while a few viewers see entries within
milliseconds. Subscribers
are grouped by their filter (the same `match` object): each read's entries are filtered once per
group into one shared `Batch`, whose wire bytes the first subscriber to send it encodes for all.

Slow subscribers are bounded, never buffered without limit: a subscriber holds at most
`queue_size` undelivered entries; one more and it drops them all and is marked behind, and it
ignores new batches until it asks for more. A subscriber knows its position in every partition
(its cursor, sent to the browser as the SSE id), so when it is behind (it overflowed, or a browser
reconnected with Last-Event-ID) it reads the gap back from the log itself, up to `catch_up_max`
entries per partition; beyond that it tells its browser to start over (`Reset`). With no
subscribers the reader sleeps, so a web process nobody watches does not read the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from functools import cached_property
from typing import Any

from redis.asyncio import Redis, RedisCluster

from app.connections import cancel_and_wait, is_unavailable
from app.errors import Unavailable
from app.events import Record
from app.ids import entry_key, is_entry_id
from app.keys import Keys
from app.metrics import default_metrics
from app.settings import Settings

log = logging.getLogger("eventflow.live")

Match = Callable[[Record], bool]
Render = Callable[[Record], Any]  # an entry as the feed sends it (JSON-encodable)
# A waiting subscriber's timeout is checked by one clock for all of them, this often: a timer per
# wait (asyncio.timeout) cost a fifth of the web process's CPU with 1,000 viewers.
CLOCK_S = 0.1
FLUSH_MIN_S = 0.005
FLUSH_MAX_S = 0.05


class Message:
    """One log entry on its way to subscribers; `data` (what the feed sends for it) is made once, on
    first use. `ident` is the cursor just after this entry (every partition's position, comma-separated)."""

    __slots__ = ("__dict__", "entry_id", "ident", "partition", "record")

    def __init__(self, partition: int, entry_id: str, fields: dict[bytes, bytes], render: Render) -> None:
        self.partition = partition
        self.entry_id = entry_id
        self.ident = entry_id
        self.record = Record.from_entry(entry_id, partition, fields)
        self._render = render

    @cached_property
    def data(self) -> Any:
        return self._render(self.record)

    @property
    def key(self) -> tuple[int, int, int]:
        return (*entry_key(self.entry_id), self.partition)


class Batch:
    """Entries of one read that passed one filter, shared by every subscriber with that filter."""

    __slots__ = ("_wire", "messages")

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self._wire: bytes | None = None

    def wire(self, encode: Callable[[Message], bytes]) -> bytes:
        """The messages encoded and joined; done once, by the first subscriber that sends them
        (every caller passes the same `encode`)."""
        if self._wire is None:
            self._wire = b"".join([encode(m) for m in self.messages])
        return self._wire


class Reset(Exception):
    """The subscriber fell too far behind to catch up from the log: its view must start over."""


class Subscriber:
    """One browser's view of the feed: pending batches (at most `queue_size` entries) and a
    position in every partition."""

    def __init__(self, hub: LiveHub, positions: list[str], match: Match, queue_size: int) -> None:
        self.hub = hub
        self.positions = positions
        self.match = match
        self.queue_size = queue_size
        self.pending: list[Batch] = []
        self.pending_count = 0
        self.behind = False  # messages were lost: read the gap from the log before going on
        self.dropped = 0
        self.deadline = 0.0  # when a waiting `next` gives up (loop time; see LiveHub._clock)
        self._waiter: asyncio.Future[None] | None = None

    @property
    def waiting(self) -> bool:
        return self._waiter is not None

    @property
    def cursor(self) -> str:
        """The SSE id: the last entry id accounted for in each partition, comma-separated."""
        return ",".join(self.positions)

    def offer(self, batch: Batch) -> None:
        """Called by the reader with a batch that passed this subscriber's filter."""
        count = len(batch.messages)
        if self.behind:  # the catch-up reads these from the log
            self.dropped += count
            return
        if self.pending_count + count > self.queue_size:
            self.dropped += self.pending_count + count
            self.pending.clear()
            self.pending_count = 0
            self.behind = True
        else:
            self.pending.append(batch)
            self.pending_count += count
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, timeout_s: float) -> list[Batch]:
        """The batches after this subscriber's position, oldest first ([] after `timeout_s`).

        Raises Reset when the gap to fill is longer than the hub's catch-up limit."""
        if not self.behind and not self.pending:
            loop = asyncio.get_running_loop()
            self.deadline = loop.time() + timeout_s
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.behind:
            return await self._catch_up()
        fresh, self.pending, self.pending_count = self.pending, [], 0
        # Everything the reader has seen was either pending (just taken) or did not match: the
        # position moves to the reader's, so the cursor advances past filtered-out entries too.
        self.positions = list(self.hub.positions)
        return fresh

    async def _catch_up(self) -> list[Batch]:
        # Batches offered from here on hold only entries after `target`: none is read twice.
        target = list(self.hub.positions)
        self.behind = False
        try:
            found = await self.hub.read_range(self.positions, target)
        except Reset:
            self.positions = target
            raise
        messages = sorted((m for m in found if self.match(m.record)), key=lambda m: m.key)
        before = self.positions
        for m in messages:  # these entries are this subscriber's own: so are their cursors
            before[m.partition] = m.entry_id
            m.ident = ",".join(before)
        self.positions = target
        return [Batch(messages)] if messages else []


class LiveHub:
    """The per-process reader and its subscribers. `start()` in the web lifespan, `stop()` after."""

    def __init__(
        self, redis: Redis, settings: Settings, *, render: Render | None = None,
        queue_size: int = 256, catch_up_max: int = 1000, batch: int = 500,
        flush_per_subscriber_s: float = 50e-6,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.render: Render = render or (lambda record: {"entry_id": record.entry_id})
        self.queue_size = queue_size
        self.catch_up_max = catch_up_max
        self.batch = batch
        self.flush_per_subscriber_s = flush_per_subscriber_s
        # The reader blocks for at most half the socket timeout, so a quiet log is no timeout error.
        self.block_ms = max(50, int(settings.redis_timeout_s * 500))
        self.positions: list[str] = ["0-0"] * self.keys.partitions
        self.subscribers: set[Subscriber] = set()
        self._groups: dict[Match, set[Subscriber]] = {}  # subscribers by filter
        self._joining = 0
        self._wanted = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._clock_task: asyncio.Task[None] | None = None
        self._streams = {self.keys.stream(p): p for p in range(self.keys.partitions)}
        self._reads: dict[int, asyncio.Future[Any]] = {}  # on a cluster: the read in flight per partition

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="eventflow-live-reader")
            self._clock_task = asyncio.create_task(self._clock(), name="eventflow-live-clock")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, self._clock_task)
        self._task = self._clock_task = None

    @contextlib.asynccontextmanager
    async def subscribe(self, match: Match, cursor: str | None = None) -> AsyncIterator[Subscriber]:
        """A subscriber from now on, or from `cursor` (a previous SSE id) when it is valid."""
        resume = self.parse_cursor(cursor)
        self._joining += 1
        self._wanted.set()
        try:
            await asyncio.wait_for(self._ready.wait(), self.settings.redis_timeout_s * 2)
        except TimeoutError:
            raise Unavailable("the live feed cannot reach the event store", self.settings.retry_after_s) from None
        finally:
            self._joining -= 1
        sub = Subscriber(self, resume or list(self.positions), match, self.queue_size)
        sub.behind = resume is not None
        self.subscribers.add(sub)
        self._groups.setdefault(match, set()).add(sub)
        clients = default_metrics().sse_clients
        clients.inc()
        try:
            yield sub
        finally:
            self.subscribers.discard(sub)
            group = self._groups.get(match)
            if group is not None:
                group.discard(sub)
                if not group:
                    del self._groups[match]
            clients.dec()

    def parse_cursor(self, cursor: str | None) -> list[str] | None:
        parts = (cursor or "").split(",")
        if len(parts) != self.keys.partitions or not all(is_entry_id(p) for p in parts):
            return None
        return parts

    async def read_range(self, since: list[str], until: list[str]) -> list[Message]:
        """Entries after `since` up to and including `until`, per partition; Reset when too many."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.xrange(self.keys.stream(p), "(" + since[p], until[p], count=self.catch_up_max + 1)
        out: list[Message] = []
        for p, entries in enumerate(await pipe.execute()):
            if len(entries) > self.catch_up_max:
                raise Reset(f"more than {self.catch_up_max} entries behind in partition {p}")
            out += [Message(p, _s(e), f, self.render) for e, f in entries if entry_key(_s(e)) > entry_key(since[p])]
        return out

    @property
    def flush_s(self) -> float:
        """How long after a read that found entries the next read waits."""
        return min(FLUSH_MAX_S, max(FLUSH_MIN_S, len(self.subscribers) * self.flush_per_subscriber_s))

    async def _clock(self) -> None:
        """Wake every waiting subscriber whose timeout passed."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CLOCK_S)
            now = loop.time()
            for sub in self.subscribers:
                if sub.waiting and sub.deadline <= now:
                    sub.wake()

    async def _run(self) -> None:
        failing = False
        loop = asyncio.get_running_loop()
        while True:
            await self._wanted.wait()
            try:
                if not self._ready.is_set():
                    self.positions = await self._tails()
                    self._ready.set()
                started = loop.time()
                if await self._read_once():
                    # Let entries gather for the next read: one batch per interval, not one per entry.
                    await asyncio.sleep(self.flush_s - (loop.time() - started))
                if failing:
                    log.info("live feed: Redis is back")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:  # log an outage once, not once per second
                    outage = is_unavailable(exc)
                    log.log(logging.WARNING if outage else logging.ERROR,
                            "live feed: reading the log failed (%s); retrying", exc, exc_info=not outage)
                failing = True
                await asyncio.sleep(1.0)
            if not self.subscribers and not self._joining:
                # Nobody watches: sleep, and start again from the log's tail when someone does.
                self._wanted.clear()
                self._ready.clear()
                self._drop_reads()

    async def _read_once(self) -> int:
        """One read, delivered; returns how many entries it found."""
        if isinstance(self.redis, RedisCluster):
            return await self._read_partitions()
        streams: dict[Any, Any] = {key: self.positions[p] for key, p in self._streams.items()}
        return self._deliver(await self.redis.xread(streams, count=self.batch, block=self.block_ms))

    async def _read_partitions(self) -> int:
        """On a cluster one XREAD cannot name keys of several slots: a blocking read per partition,
        each sent again as soon as it answers; a partition whose node is down holds up no other."""
        reads = self._reads
        for key, p in self._streams.items():
            if p not in reads:
                reads[p] = asyncio.ensure_future(
                    self.redis.xread({key: self.positions[p]}, count=self.batch, block=self.block_ms))
        try:
            done, _ = await asyncio.wait(reads.values(), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._drop_reads()
            raise
        failed: BaseException | None = None
        found = 0
        for p, task in list(reads.items()):
            if task in done:
                del reads[p]
                if task.exception() is not None:
                    failed = task.exception()
                else:
                    found += self._deliver(task.result())
        if failed is not None:
            raise failed
        return found

    def _drop_reads(self) -> None:
        for task in self._reads.values():
            task.cancel()
        self._reads.clear()

    def _deliver(self, reply: Any) -> int:
        """Hand one read's entries to the subscribers: one batch per filter. Synchronous, so a
        subscriber's position and what it was offered always agree."""
        messages: list[Message] = []
        for stream, entries in reply or []:
            p = self._streams[_s(stream)]
            for entry_id, fields in entries:
                message = Message(p, _s(entry_id), fields, self.render)
                self.positions[p] = message.entry_id
                if len(self.positions) > 1:
                    message.ident = ",".join(self.positions)
                messages.append(message)
        if messages:
            for match, group in self._groups.items():
                matched = [m for m in messages if match(m.record)]
                if matched:
                    batch = Batch(matched)
                    for sub in group:
                        sub.offer(batch)
        return len(messages)

    async def tail_cursor(self) -> str:
        """A cursor at the log's current end: a subscriber given it gets everything appended after
        this call (a page takes it before its query, so nothing falls between page and feed)."""
        return ",".join(await self._tails())

    async def _tails(self) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.xrevrange(self.keys.stream(p), "+", "-", count=1)
        return [_s(last[0][0]) if last else "0-0" for last in await pipe.execute()]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
