"""Error monitoring: failures grouped by (consumer, exception type, normalized message).

A group keeps its count, how many of its failures were dead-lettered, first and last seen, one raw
example message and the latest few event ids. `note()` is synchronous and only adds to an in-memory
tally: a failure storm (a webhook receiver down, say) costs no extra Redis round trip per failure;
the tally is written at most once a second (one pipeline) and on shutdown. Groups expire after
EVENTFLOW_ATTEMPTS_TTL_S without a new failure; at most MAX_GROUPS are kept.

With SENTRY_DSN set and the `sentry` extra installed, each group is also reported to Sentry (the
first failure, then at most once a minute per group and process), with the group as fingerprint.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field

import msgspec
from redis.asyncio import Redis

from app import __version__
from app.keys import Keys
from app.settings import Settings

log = logging.getLogger("eventflow.errors")

MAX_GROUPS = 1000
SAMPLES = 5
FLUSH_S = 1.0
REPORT_EVERY_S = 60.0

# Order matters: quoted values first (they may hold digits), then ids, then any other number.
_NORMALIZE = [
    (re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`"), "'?'"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<uuid>"),
    (re.compile(r"\b\d{10,}-\d+\b"), "<entry>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    # ids, keys and digests: a long word mixing letters and digits (wh_a0457b9d64bacd3d, efk_..., sha)
    (re.compile(r"\b(?=[A-Za-z_-]*\d)(?=[\d_-]*[A-Za-z])[\w-]{8,}"), "<id>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
]


def normalize(message: str) -> str:
    """The message with what varies between occurrences (numbers, ids, quoted values) masked."""
    for pattern, replacement in _NORMALIZE:
        message = pattern.sub(replacement, message)
    return message.strip()[:300]


def fingerprint(consumer: str, error_type: str, normalized: str) -> str:
    return hashlib.sha256(f"{consumer}\n{error_type}\n{normalized}".encode()).hexdigest()[:16]


class ErrorGroup(msgspec.Struct, kw_only=True):
    """One kind of failure in one consumer (or `web` for unexpected API errors)."""

    id: str
    consumer: str
    error_type: str
    message: str  # normalized
    example: str  # one raw message, as first seen
    count: int
    dead_lettered: int
    first_seen_ms: int
    last_seen_ms: int
    sample_event_ids: list[str] = []


@dataclass
class _Tally:
    consumer: str
    error_type: str
    message: str
    example: str
    count: int = 0
    dead: int = 0
    first_ms: int = 0
    last_ms: int = 0
    samples: list[str] = field(default_factory=list)


class ErrorTracker:
    """Records failures (in memory, flushed to Redis) and reads the groups back."""

    def __init__(self, redis: Redis, settings: Settings, *, reporter: SentryReporter | None = None) -> None:
        self.redis = redis
        self.keys = Keys(settings.prefix, settings.partitions)
        self.ttl_s = settings.attempts_ttl_s
        self.reporter = reporter
        self._pending: dict[str, _Tally] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._flushing: asyncio.Task[None] | None = None

    def note(self, consumer: str, error_type: str, message: str, event_id: str | None = None, *,
             dead: bool = False, exc: BaseException | None = None, trace_id: str | None = None) -> str:
        """Count one failure; returns its group id. Written to Redis within FLUSH_S."""
        normalized = normalize(message)
        fp = fingerprint(consumer, error_type, normalized)
        now = time.time_ns() // 1_000_000
        tally = self._pending.get(fp)
        if tally is None:
            if len(self._pending) >= MAX_GROUPS:  # Redis unreachable for long: keep what we have
                return fp
            tally = self._pending[fp] = _Tally(consumer, error_type, normalized, message[:500], first_ms=now)
        tally.count += 1
        tally.dead += dead
        tally.last_ms = now
        if event_id is not None and event_id not in tally.samples:  # a retried event is one sample
            tally.samples = [event_id, *tally.samples[: SAMPLES - 1]]
        if self.reporter is not None:
            self.reporter.report(fp, consumer, error_type, normalized, message, exc, event_id, trace_id)
        self._schedule()
        return fp

    def _schedule(self) -> None:
        if self._flush_handle is not None and not self._flush_loop.is_closed():  # type: ignore[union-attr]
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the caller flushes
        self._flush_loop = loop
        self._flush_handle = loop.call_later(FLUSH_S, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush_logged())

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - kept in memory and tried again by the next failure
            log.warning("error monitoring: could not write error groups (%s); will retry", exc)
            self._schedule()

    async def flush(self) -> None:
        """Write the pending tallies (one pipeline); on failure they stay pending."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            await self._write(pending)
        except BaseException:
            for fp, tally in pending.items():  # merge back what arrived meanwhile
                newer = self._pending.get(fp)
                if newer is not None:
                    tally.count += newer.count
                    tally.dead += newer.dead
                    tally.last_ms = newer.last_ms
                    tally.samples = (newer.samples + tally.samples)[:SAMPLES]
                self._pending[fp] = tally
            raise

    async def _write(self, pending: dict[str, _Tally]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for fp, t in pending.items():
            key = self.keys.error_group(fp)
            for name, value in (("consumer", t.consumer), ("error_type", t.error_type), ("message", t.message),
                                ("example", t.example), ("first_seen_ms", t.first_ms)):
                pipe.hsetnx(key, name, value)
            pipe.hincrby(key, "count", t.count)
            pipe.hincrby(key, "dead_lettered", t.dead)
            pipe.hset(key, "last_seen_ms", t.last_ms)
            pipe.expire(key, self.ttl_s)
            if t.samples:
                samples = self.keys.error_samples(fp)
                for event_id in t.samples:
                    pipe.lrem(samples, 0, event_id)  # keep each event once, at its latest position
                pipe.lpush(samples, *reversed(t.samples))
                pipe.ltrim(samples, 0, SAMPLES - 1)
                pipe.expire(samples, self.ttl_s)
            pipe.zadd(self.keys.error_groups, {fp: t.last_ms})
        now = time.time_ns() // 1_000_000
        pipe.zremrangebyscore(self.keys.error_groups, 0, now - self.ttl_s * 1000)
        pipe.zremrangebyrank(self.keys.error_groups, 0, -MAX_GROUPS - 1)
        await pipe.execute()

    # -- reading (the API and the dashboard) ----------------------------------------------------
    async def groups(self, consumer: str | None = None, limit: int = 100) -> list[ErrorGroup]:
        """Error groups, most recently seen first; `consumer` filters."""
        ids = [_s(i) for i in await self.redis.zrevrange(self.keys.error_groups, 0, MAX_GROUPS - 1)]
        found = await self._load(ids)
        out = [g for g in found if consumer is None or g.consumer == consumer]
        return out[:limit]

    async def get(self, fp: str) -> ErrorGroup | None:
        found = await self._load([fp])
        return found[0] if found else None

    async def _load(self, ids: list[str]) -> list[ErrorGroup]:
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for fp in ids:
            pipe.hgetall(self.keys.error_group(fp))
            pipe.lrange(self.keys.error_samples(fp), 0, SAMPLES - 1)
        replies = await pipe.execute()
        out, gone = [], []
        for n, fp in enumerate(ids):
            raw, samples = replies[2 * n], replies[2 * n + 1]
            if not raw:
                gone.append(fp)  # expired: drop it from the index too
                continue
            h = {_s(k): _s(v) for k, v in raw.items()}
            out.append(ErrorGroup(
                id=fp, consumer=h.get("consumer", ""), error_type=h.get("error_type", ""),
                message=h.get("message", ""), example=h.get("example", ""), count=int(h.get("count", 0)),
                dead_lettered=int(h.get("dead_lettered", 0)), first_seen_ms=int(h.get("first_seen_ms", 0)),
                last_seen_ms=int(h.get("last_seen_ms", 0)), sample_event_ids=[_s(s) for s in samples],
            ))
        if gone:
            await self.redis.zrem(self.keys.error_groups, *gone)
        return out


class SentryReporter:
    """Sends error groups to Sentry (optional `sentry` extra), rate-limited per group."""

    def __init__(self, dsn: str, *, environment: str | None = None) -> None:
        import sentry_sdk
        from sentry_sdk.integrations.logging import LoggingIntegration

        self.sdk = sentry_sdk
        # Errors reach Sentry only through report(): log records are not events (they would double
        # every failure), and no framework is patched (no per-request cost in the web process).
        sentry_sdk.init(dsn=dsn, release=f"eventflow@{__version__}", environment=environment,
                        integrations=[LoggingIntegration(level=None, event_level=None)],
                        auto_enabling_integrations=False, send_default_pii=False)
        self._sent: dict[str, float] = {}

    def report(self, fp: str, consumer: str, error_type: str, normalized: str, message: str,
               exc: BaseException | None, event_id: str | None, trace_id: str | None) -> None:
        now = time.monotonic()
        if now - self._sent.get(fp, -REPORT_EVERY_S) < REPORT_EVERY_S:
            return
        self._sent[fp] = now
        with self.sdk.new_scope() as scope:
            scope.fingerprint = [consumer, error_type, normalized]
            scope.set_tag("consumer", consumer)
            scope.set_tag("error_group", fp)
            if event_id is not None:
                scope.set_tag("event_id", event_id)
            if trace_id is not None:
                scope.set_tag("trace_id", trace_id)
            if exc is not None:
                self.sdk.capture_exception(exc)
            else:
                self.sdk.capture_message(f"{error_type}: {message}", level="error")

    def flush(self, timeout_s: float = 2.0) -> None:
        self.sdk.flush(timeout=timeout_s)


_reporters: dict[str, SentryReporter] = {}


def reporter_from_settings(settings: Settings, environment: str | None = None) -> SentryReporter | None:
    """The process's Sentry reporter when SENTRY_DSN is set and sentry-sdk is installed, else None."""
    if not settings.sentry_dsn:
        return None
    try:
        if settings.sentry_dsn not in _reporters:  # sentry_sdk.init is process-wide: once per DSN
            _reporters[settings.sentry_dsn] = SentryReporter(settings.sentry_dsn, environment=environment)
        return _reporters[settings.sentry_dsn]
    except ImportError:
        log.warning("SENTRY_DSN is set but sentry-sdk is not installed (pip install 'eventflow[sentry]'); "
                    "errors are not reported to Sentry")
        return None


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

