"""Metrics: every Prometheus metric EventFlow exports, declared once, against one registry.

Hot paths never touch a prometheus_client object per event. A counter increment costs 0.6 µs (1.4 µs
in multiprocess mode) and a histogram observation 1-3 µs: 10-20% of a no-op delivery. Instead they
add to plain-Python slots (about 0.1 µs), which `Metrics.flush()` adds to the real metrics in bulk,
at most a second later (`touch()` schedules it) and right before every scrape. Slots are changed and
flushed only on the event loop's thread.

Stream length, lag, pending and worker heartbeats are read from Redis at scrape time by `RedisGauges`
(one cached snapshot a second), never on an event path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgspec
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from redis.asyncio import Redis, RedisCluster

from app.keys import Keys

log = logging.getLogger("eventflow.metrics")

FLUSH_S = 1.0  # how stale a tally may get before it reaches the metrics

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HANDLER_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)
WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FLUSH_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
FLUSH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class CountSlot:
    """Pending increments of one labelled counter child."""

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0

    def add(self, n: int = 1) -> None:
        self.n += n

    def flush(self) -> None:
        if self.n:
            n, self.n = self.n, 0
            self.child.inc(n)


class TimingSlot:
    """Pending observations of one labelled histogram child: bucket counts and their sum."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Histogram.observe puts a value in the first bucket whose bound is >= it: bisect_left.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, batch: list[float]) -> None:
        """Observe a batch (sorted in place): about 30 ns a value for a batch of 100."""
        batch.sort()
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(batch, bound)
            self.counts[i] += upto - below
            below = upto
        self.total += sum(batch)

    def flush(self) -> None:
        if not any(self.counts):
            return
        counts, self.counts = self.counts, [0] * len(self.bounds)
        total, self.total = self.total, 0.0
        # prometheus_client has no "add n observations"; its buckets and sum are value objects
        # with inc() in both single and multiprocess mode (tests/unit/test_metrics.py checks that
        # this matches observe()).
        for bucket, n in zip(self.child._buckets, counts, strict=True):
            if n:
                bucket.inc(n)
        self.child._sum.inc(total)


class Metrics:
    """Every metric, created against `registry` (the process default when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = REGISTRY if registry is None else registry
        self.registry = r
        # -- ingest (web) -------------------------------------------------------------------------
        self.events_ingested = Counter("eventflow_events_ingested", "Events appended to the log, by producer",
                                       ["source"], registry=r)
        self.idempotent_repeats = Counter("eventflow_idempotent_repeats",
                                          "Events not appended again: (source, id) seen within the window",
                                          ["source"], registry=r)
        self.events_rejected = Counter("eventflow_events_rejected",
                                       "Ingest requests refused, by problem type (invalid-event, unauthorized...)",
                                       ["reason"], registry=r)
        self.append_flush_seconds = Histogram("eventflow_append_flush_seconds",
                                              "Time of one coalesced append round trip (incl. durability wait)",
                                              buckets=FLUSH_BUCKETS, registry=r)
        self.append_flush_events = Histogram("eventflow_append_flush_events", "Events sent in one coalesced append",
                                             buckets=FLUSH_SIZE_BUCKETS, registry=r)
        self.http_requests = Counter("eventflow_http_requests", "HTTP requests by route template and status",
                                     ["route", "method", "status"], registry=r)
        self.http_duration = Histogram("eventflow_http_request_duration_seconds",
                                       "HTTP request latency by route template (ingest: route=\"/v1/events\")",
                                       ["route", "method"], buckets=HTTP_BUCKETS, registry=r)
        self.sse_clients = Gauge("eventflow_sse_clients", "Open live-update (SSE) connections",
                                 registry=r, multiprocess_mode="livesum")
        # -- dispatch (workers) -------------------------------------------------------------------
        self.handler_duration = Histogram("eventflow_handler_duration_seconds", "Consumer handler run time",
                                          ["group"], buckets=HANDLER_BUCKETS, registry=r)
        self.deliveries = Counter("eventflow_deliveries",
                                  "Delivery outcomes: succeeded, failed, dead_lettered, invalid, skipped",
                                  ["group", "outcome"], registry=r)
        self.retries = Counter("eventflow_retries", "Failed deliveries scheduled for another attempt",
                               ["group"], registry=r)
        self.dead_letters = Counter("eventflow_dead_letters", "Deliveries dead-lettered, by reason",
                                    ["group", "reason"], registry=r)
        self.lost_entries = Counter("eventflow_lost_entries",
                                    "Pending entries deleted or trimmed before they were delivered",
                                    ["group"], registry=r)
        self.webhook_duration = Histogram("eventflow_webhook_delivery_seconds",
                                          "Webhook POST latency by status class (2xx..5xx, timeout, error, refused)",
                                          ["status_class"], buckets=WEBHOOK_BUCKETS, registry=r)
        # -- event types and retention (app/schemas.py, app/retention.py) -------------------------
        self.schema_failures = Counter("eventflow_schema_failures",
                                       "Events failing their type's JSON Schema: rejected, flagged, dead-lettered",
                                       ["type", "outcome"], registry=r)
        self.retention_held_back = Gauge("eventflow_retention_held_back_seconds",
                                         "How far past the retention age the log's oldest entry is, kept because "
                                         "this group has not processed it yet (0: not holding back)",
                                         ["group"], registry=r, multiprocess_mode="max")
        self.retention_excess = Gauge("eventflow_retention_excess_entries",
                                      "Entries kept beyond EVENTFLOW_RETENTION_MAX_ENTRIES because this group has "
                                      "not processed them yet", ["group"], registry=r, multiprocess_mode="max")
        self._slots: list[CountSlot | TimingSlot] = []
        self._by_key: dict[tuple[Any, ...], Any] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards slot creation only; slots are used on one thread
        self._by_source: dict[str, tuple[CountSlot, CountSlot]] = {}
        self._flush_seconds = self.timing(self.append_flush_seconds)
        self._flush_events = self.timing(self.append_flush_events)

    # -- slots ------------------------------------------------------------------------------------
    def count(self, counter: Counter, *labels: str) -> CountSlot:
        """The (shared) tally slot of one counter child; bind it once, `add()` on the hot path."""
        return self._slot(CountSlot, counter, labels)

    def timing(self, histogram: Histogram, *labels: str) -> TimingSlot:
        """The (shared) tally slot of one histogram child."""
        return self._slot(TimingSlot, histogram, labels)

    def _slot(self, kind: type[Any], metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), labels)
        slot = self._by_key.get(key)
        if slot is None:
            with self._lock:
                slot = self._by_key.get(key)
                if slot is None:
                    slot = kind(metric.labels(*labels) if labels else metric)
                    self._slots.append(slot)
                    self._by_key[key] = slot
        return slot

    def touch(self) -> None:
        """Make sure a flush happens within FLUSH_S (call once per request, batch or flush)."""
        if self._flush_handle is not None and not self._flush_loop.is_closed():  # type: ignore[union-attr]
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script or a sync test): flush now
            self.flush()
            return
        self._flush_loop = loop  # a loop closed with the flush pending (tests) must not block the next
        self._flush_handle = loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Add every slot's tally to its metric (on the event loop's thread)."""
        self._flush_handle = None
        for slot in list(self._slots):
            slot.flush()

    # -- recording helpers for the less hot paths --------------------------------------------------
    def appended(self, per_source: dict[str, int], repeats: dict[str, int], seconds: float, events: int) -> None:
        """One coalesced append: events per producer, repeats among them, round-trip time."""
        for source, n in per_source.items():
            pair = self._by_source.get(source)
            if pair is None:
                pair = self._by_source[source] = (self.count(self.events_ingested, source),
                                                  self.count(self.idempotent_repeats, source))
            dup = repeats.get(source, 0) if repeats else 0
            pair[0].n += n - dup
            pair[1].n += dup
        self._flush_seconds.observe(seconds)
        self._flush_events.observe(events)
        self.touch()

    def webhook(self, status: int | None, seconds: float, error: str | None = None) -> None:
        """One webhook POST (or the failure to make one)."""
        self.timing(self.webhook_duration, status_class(status, error)).observe(seconds)
        self.touch()

    def names(self) -> set[str]:
        """Every sample name this process can export (with _total, _bucket, _sum, _count...)."""
        out: set[str] = set(RedisGauges.NAMES)
        for metric in self.registry.collect():
            if metric.name.startswith("eventflow_"):
                out |= _sample_names(metric)
        return out


def status_class(status: int | None, error: str | None = None) -> str:
    """`2xx`..`5xx`, or why there is no status: `timeout`, `refused` (blocked address), `error`."""
    if status is not None:
        return f"{status // 100}xx"
    if error and error.startswith("timed out"):
        return "timeout"
    if error and error.startswith("refused"):
        return "refused"
    return "error"


def _sample_names(metric: Metric) -> set[str]:
    kinds = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "gauge": ("",), "summary": ("", "_sum", "_count")}
    return {metric.name + suffix for suffix in kinds.get(metric.type, ("",))}


# -- the process's metrics --------------------------------------------------------------------------
_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics(multiprocess_dir: str | None = None) -> Metrics:
    """The process's metrics in the default registry, created on first use.

    The first call decides where values live: in memory (workers, a single web process) or, with
    `multiprocess_dir`, in files there that every granian worker of the web process shares
    (prometheus_client's multiprocess mode). The choice is made here rather than by the library's
    import-time look at PROMETHEUS_MULTIPROC_DIR, so that a worker sharing the web's environment
    (a Procfile runner) keeps its values to itself and serves them on its own port."""
    global _default
    if _default is not None:
        return _default
    with _default_lock:
        if _default is None:
            if multiprocess_dir:
                os.makedirs(multiprocess_dir, exist_ok=True)
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir  # where the library puts files
                values.ValueClass = values.MultiProcessValue()
            else:
                values.ValueClass = values.MutexValue
            _default = Metrics()
        return _default


def is_multiprocess() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


# -- Redis-derived gauges -----------------------------------------------------------------------------
class Snapshot:
    """What one scrape-time read of Redis found."""

    def __init__(self) -> None:
        self.up = 0
        self.stream_length: dict[int, int] = {}
        self.dead_letters = 0
        self.lag: dict[str, int | None] = {}
        self.pending: dict[str, int] = {}
        self.group_workers: dict[str, int] = {}
        self.workers_alive = 0
        # used_memory and maxmemory per server: "" on one server, "host:port" of each cluster primary.
        self.memory: dict[str, tuple[int, int]] = {}


class RedisGauges:
    """A collector for the log's state: stream length, per-group lag and pending, dead letters,
    live workers and Redis memory. `refresh()` (async, on the event loop) reads Redis at most once a
    `ttl_s`; `collect()` (any thread) only reads the last snapshot, so a scrape never blocks the loop."""

    NAMES = ("eventflow_redis_up", "eventflow_stream_length", "eventflow_dead_letter_entries",
             "eventflow_group_lag", "eventflow_group_pending", "eventflow_group_workers",
             "eventflow_workers_alive", "eventflow_redis_used_memory_bytes", "eventflow_redis_maxmemory_bytes")
    HEARTBEAT_S = 10  # a worker is alive while its heartbeat (every 3 s) is younger than this: its claim's TTL

    def __init__(self, redis: Redis, keys: Keys, ttl_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.snapshot = Snapshot()
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        if time.monotonic() < self._expires:
            return
        async with self._lock:
            if time.monotonic() < self._expires:
                return
            try:
                self.snapshot = await asyncio.wait_for(self._read(), self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - an unreachable Redis is reported as redis_up 0
                log.debug("metrics: reading Redis failed: %s", exc)
                self.snapshot = Snapshot()
            self._expires = time.monotonic() + self.ttl_s

    async def _read(self) -> Snapshot:
        snap = Snapshot()
        now_ms = time.time_ns() // 1_000_000
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.xlen(self.keys.stream(p))
            pipe.xlen(self.keys.dead_letters(p))
            pipe.xinfo_groups(self.keys.stream(p))
        pipe.zrangebyscore(self.keys.workers, now_ms - self.HEARTBEAT_S * 1000, "+inf")
        # On a cluster the pipeline goes to each key's node; INFO is read from every primary.
        replies, snap.memory = await asyncio.gather(pipe.execute(raise_on_error=False), self._memory())
        for p in range(self.keys.partitions):
            length, dead, groups = replies[3 * p : 3 * p + 3]
            snap.stream_length[p] = length if isinstance(length, int) else 0
            snap.dead_letters += dead if isinstance(dead, int) else 0
            for g in groups if isinstance(groups, list) else []:
                self._add_group(snap, g)
        alive = replies[-1]
        await self._add_workers(snap, [_s(w) for w in alive] if isinstance(alive, list) else [])
        snap.up = 1
        return snap

    async def _memory(self) -> dict[str, tuple[int, int]]:
        """used_memory and maxmemory of the server, or of each primary of a cluster (a full one
        refuses the appends of its partitions, so the alert must see each)."""
        if not isinstance(self.redis, RedisCluster):
            info = await self.redis.info("memory")
            return {"": (int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)))}
        primaries = self.redis.get_primaries()
        infos = await asyncio.gather(*(self.redis.info("memory", target_nodes=node)  # type: ignore[call-arg]
                                       for node in primaries))
        return {node.name: (int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)))
                for node, info in zip(primaries, infos, strict=True)}

    @staticmethod
    def _add_group(snap: Snapshot, group: dict[Any, Any]) -> None:
        name = _s(group["name"])
        snap.pending[name] = snap.pending.get(name, 0) + int(group["pending"])
        snap.group_workers.setdefault(name, 0)
        lag, known = group.get("lag"), snap.lag.get(name, 0)
        # Redis cannot tell the lag after deletions (nil): then the group's total is unknown too.
        snap.lag[name] = None if lag is None or known is None else known + int(lag)

    async def _add_workers(self, snap: Snapshot, alive: list[str]) -> None:
        snap.workers_alive = len(alive)
        if not alive:
            return
        heartbeats = [self.keys.heartbeat(w) for w in alive]
        # Heartbeat keys have no hash tag: on a cluster they sit in many slots, read slot by slot.
        bodies = await (self.redis.mget_nonatomic(heartbeats) if isinstance(self.redis, RedisCluster)
                        else self.redis.mget(heartbeats))
        for body in bodies:
            if not body:
                continue
            with contextlib.suppress(msgspec.DecodeError):
                for group in msgspec.json.decode(body).get("consumers", []):
                    snap.group_workers[group] = snap.group_workers.get(group, 0) + 1

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        yield _gauge("eventflow_redis_up", "1 when the last scrape-time read of Redis succeeded", [((), s.up)])
        if not s.up:
            return
        yield _gauge("eventflow_stream_length", "Entries in the log, per partition",
                     [((str(p),), n) for p, n in s.stream_length.items()], ["partition"])
        yield _gauge("eventflow_dead_letter_entries", "Entries in the dead-letter streams", [((), s.dead_letters)])
        yield _gauge("eventflow_group_lag", "Log entries not yet delivered to the group (XINFO GROUPS lag)",
                     [((g,), n) for g, n in s.lag.items() if n is not None], ["group"])
        yield _gauge("eventflow_group_pending", "Deliveries read but not yet acknowledged (PEL size)",
                     [((g,), n) for g, n in s.pending.items()], ["group"])
        yield _gauge("eventflow_group_workers", "Worker processes with a live heartbeat running the group",
                     [((g,), n) for g, n in s.group_workers.items()], ["group"])
        yield _gauge("eventflow_workers_alive", "Worker processes with a live heartbeat", [((), s.workers_alive)])
        # One sample per cluster primary, labelled by its address; one unlabelled on a single server.
        labels = ["node"] if any(s.memory) else []
        per_node = [((node,) if node else (), pair) for node, pair in s.memory.items()]
        yield _gauge("eventflow_redis_used_memory_bytes", "Redis used_memory",
                     [(node, used) for node, (used, _) in per_node], labels)
        yield _gauge("eventflow_redis_maxmemory_bytes", "Redis maxmemory (0: no limit)",
                     [(node, limit) for node, (_, limit) in per_node], labels)


def _gauge(name: str, doc: str, samples: Iterable[tuple[Sequence[str], float]],
           labels: Sequence[str] = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for label_values, value in samples:
        family.add_metric(list(label_values), value)
    return family


# -- an HTTP listener for internal ports --------------------------------------------------------------
def serve(port: int, render: Callable[[], bytes], *, reuse_port: bool = False) -> ThreadingWSGIServer | None:
    """Serve `GET /metrics` (any path) on `port`, all interfaces, in a daemon thread.

    Returns None (and logs) when the port cannot be bound: metrics never stop a process."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            body = render()
        except Exception:
            log.exception("metrics: rendering failed")
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"metrics rendering failed\n"]
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
        return [body]

    last: OSError | None = None
    for host, family in (("::", socket.AF_INET6), ("0.0.0.0", socket.AF_INET)):  # dual stack, else IPv4
        # With reuse_port, several granian workers of one web process bind the same port; the kernel
        # hands each scrape to one of them, and each answers with all workers' totals (multiprocess).
        server_class = type("MetricsServer", (ThreadingWSGIServer,),
                            {"address_family": family, "allow_reuse_port": reuse_port})
        try:
            server = make_server(host, port, app, server_class, handler_class=Quiet)
        except OSError as exc:
            last = exc
            continue
        threading.Thread(target=server.serve_forever, name="eventflow-metrics", daemon=True).start()
        return server
    log.warning("metrics: cannot listen on port %d (%s); metrics are not served by this process", port, last)
    return None


def serve_process(port: int, metrics: Metrics, loop: asyncio.AbstractEventLoop) -> ThreadingWSGIServer | None:
    """Serve this process's in-memory metrics on `port` (a worker): each scrape first has `loop`
    flush the tallies (they are only touched on the loop's thread), then renders in the listener's."""
    from prometheus_client import generate_latest

    async def flush() -> None:
        metrics.flush()

    def render() -> bytes:
        try:
            asyncio.run_coroutine_threadsafe(flush(), loop).result(1.0)
        except Exception as exc:  # noqa: BLE001 - a busy or closing loop: serve the last flushed values
            log.debug("metrics: flush before scrape failed: %s", exc)
        return generate_latest(metrics.registry)

    return serve(port, render)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
