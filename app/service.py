"""The service layer shared by the HTTP API, the dashboard and the CLI: no caller talks to Redis."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sequence

import msgspec
from redis.asyncio import Redis

from app import ratelimit
from app.connections import check_server, is_unavailable, redis_errors
from app.deadletters import DeadLetters
from app.errors import ConfigError, Forbidden, NotFound, PayloadTooLarge
from app.errortrack import ErrorGroup, ErrorTracker, reporter_from_settings
from app.events import Incoming, Record, enrich, fresh_traceparents, now_rfc3339, partition_key
from app.ids import valid_traceparent
from app.lifecycle import GroupState, Lifecycle
from app.live import LiveHub
from app.overview import Cached, GroupStatus, Overview, Throughput, build, group_statuses
from app.producers import Producers
from app.retention import Holdback, Retention
from app.retention import enabled as retention_enabled
from app.schemas import Schemas
from app.sessions import LoginThrottle, Sessions
from app.settings import Settings
from app.stats import Stats
from app.store import Appended, EventLog, Page, Prepared, Query
from app.tracing import Tracer
from app.users import Users, UserView
from app.webhooks import Webhooks

log = logging.getLogger("eventflow.service")


class EventDetail(Record, kw_only=True):
    """An event as `GET /v1/events/{id}` returns it: the log record plus its deliveries."""

    deliveries: list[GroupState] = []


class Services:
    """Everything a request handler needs, built once per process."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.log = EventLog(redis, settings)
        self.schemas = Schemas(redis, settings, self.log)
        self.retention = Retention(redis, settings, self.log)
        self.producers = Producers(redis, settings)
        self.rate_limit = ratelimit.from_settings(redis, settings)  # None when EVENTFLOW_PRODUCER_RATE_LIMIT=0
        self.lifecycle = Lifecycle(redis, settings)
        self.dead_letters = DeadLetters(redis, settings)
        self.errors = ErrorTracker(redis, settings, reporter=reporter_from_settings(settings))
        self.tracer: Tracer | None = None  # the web process sets one when OTEL_EXPORTER_OTLP_ENDPOINT is set
        self.users = Users(redis, settings)
        self.sessions = Sessions(redis, settings)
        self.login_throttle = LoginThrottle(redis, settings)
        self.live = LiveHub(redis, settings)
        self.webhooks = Webhooks(redis, settings)
        self.stats = Stats(redis, settings)
        self.throughput = Throughput()
        self._groups = Cached(self._group_statuses)
        self._overview = Cached(self._build_overview)
        self._retention = Cached(self.retention.status)
        self._server_checked = False

    async def start(self) -> None:
        """Verify the server honours the durability mode; tolerate Redis being down for now."""
        try:
            await self.ensure_server_checked()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            log.warning("Redis is unreachable at start-up; serving 503 until it answers")

    async def ensure_server_checked(self) -> None:
        if not self._server_checked:
            await check_server(self.redis, self.settings)
            self._server_checked = True

    async def reader_scope(self, authorization: str | None) -> str | None:
        """Who may read: the operator API token reads everything (None); a producer key reads
        only its own events (its source)."""
        token = self.settings.api_token
        if token and authorization and hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            return None
        return await self.producers.authenticate(authorization)

    async def query(self, query: Query, scope: str | None) -> Page:
        if scope is not None:
            if query.source not in (None, scope):
                raise Forbidden(f"this key reads only the events of producer {scope!r}")
            query = msgspec.structs.replace(query, source=scope)
        return await self.retention.with_archive(query, await self.log.query(query))

    async def require_operator(self, authorization: str | None) -> None:
        """Operations (dead letters, replays, webhooks) need the operator API token."""
        if await self.reader_scope(authorization) is not None:
            raise Forbidden("this needs the operator API token (EVENTFLOW_API_TOKEN), not a producer key")

    async def get_event(self, ident: str, scope: str | None) -> EventDetail:
        """One event with its delivery state in every consumer group."""
        try:
            record = await self.log.get(ident, scope)
        except NotFound:
            archived = await self.retention.find(ident)  # trimmed by retention: read the archive
            if archived is None:
                raise
            record = archived
        if scope is not None and record.event.get("source") != scope:
            raise NotFound(f"no event with id {ident!r}")
        async with redis_errors(self.settings):
            deliveries = await self.lifecycle.deliveries(record)
        return EventDetail(**msgspec.structs.asdict(record), deliveries=deliveries)

    async def ingest(
        self, events: Sequence[Incoming], source: str, headers: Mapping[str, str]
    ) -> list[Appended]:
        """Check, enrich and append events from one producer; all or none are accepted."""
        if len(events) > self.settings.max_batch:
            raise PayloadTooLarge(
                f"a batch holds at most {self.settings.max_batch} events (EVENTFLOW_MAX_BATCH); "
                f"this one has {len(events)}"
            )
        for n, event in enumerate(events):
            if event.source is not None and event.source != source:
                where = f"/events/{n}/source" if len(events) > 1 else "/source"
                raise Forbidden(f"{where}: this key belongs to producer {source!r}, not {event.source!r}")
        await self._admit(events, source)
        traceparent = headers.get("traceparent")
        if traceparent is not None and not valid_traceparent(traceparent):
            traceparent = None
        await self.schemas.check_incoming(events, source)  # sets dataschema; may flag (warn) or reject
        span = self.tracer.start_ingest(traceparent) if self.tracer is not None else None
        if span is not None:
            traceparent = span.traceparent  # the events' parent is this request's ingest span
        items = self._prepare(events, source, traceparent)
        if not self._server_checked:
            try:
                await self.ensure_server_checked()
            except ConfigError as exc:
                log.error("durability check failed: %s", exc.detail)
                raise
        if span is None:
            return await self.log.append(items, source)
        try:
            appended = await self.log.append(items, source)
        except Exception as exc:
            self.tracer.end_ingest(span, source, len(items), exc)  # type: ignore[union-attr]
            raise
        self.tracer.end_ingest(span, source, len(items))  # type: ignore[union-attr]
        return appended

    def _prepare(self, events: Sequence[Incoming], source: str, traceparent: str | None) -> list[Prepared]:
        """Enrich each event and pick its partition (its `partitionkey`, else source and subject)."""
        now = now_rfc3339()
        keys = self.log.keys
        # Without a request traceparent each event starts a trace of its own: one urandom for all.
        parents = [traceparent] * len(events) if traceparent is not None else fresh_traceparents(len(events))
        items = []
        for event, parent in zip(events, parents, strict=True):
            partition = 0
            if keys.partitions > 1:
                partition = keys.partition_of(partition_key(event.extensions, source, event.subject))
            items.append(Prepared(partition, event.id or "", source, event.type, enrich(event, source, parent, now)))
        return items

    async def _admit(self, events: Sequence[Incoming], source: str) -> None:
        """The producer's own limits: the event types its key may send (403), and its rate (429)."""
        await self.producers.check_types(source, [event.type for event in events])
        if self.rate_limit is not None:
            await self.rate_limit.take(source, len(events))

    async def error_groups(self, consumer: str | None = None, limit: int = 100) -> list[ErrorGroup]:
        """Failures grouped by (consumer, exception type, normalized message), latest first: the
        API's GET /v1/errors and the dashboard's Errors page."""
        await self.errors.flush()  # this process's own unwritten failures (web errors) count too
        return await self.errors.groups(consumer, limit)

    # -- dashboard ------------------------------------------------------------------------------
    async def consumer_groups(self) -> list[GroupStatus]:
        """Every consumer group with its consumers, backlog and dead letters (cached for 1 s)."""
        return await self._groups.get()

    async def overview(self) -> Overview:
        """The overview page's numbers (cached for 1 s: many open dashboards, one set of reads)."""
        return await self._overview.get()

    async def retention_held_back(self) -> list[Holdback]:
        """The consumer groups holding retention back, per partition (cached for 1 s: the status
        reads every partition); [] without a retention policy, at no cost."""
        if not retention_enabled(self.settings):
            return []
        return (await self._retention.get()).held_back

    async def _group_statuses(self) -> list[GroupStatus]:
        async with redis_errors(self.settings):
            groups = await group_statuses(self.lifecycle, self.dead_letters)
        self.throughput.add(groups)
        return groups

    async def _build_overview(self) -> Overview:
        groups = await self.consumer_groups()
        async with redis_errors(self.settings):
            return await build(groups, self.dead_letters)

    async def delete_user(self, name: str) -> UserView:
        """Remove an operator and end their open sessions."""
        deleted = await self.users.delete(name)
        await self.sessions.end_all(name)
        return deleted

    async def set_user_password(self, name: str, password: str) -> UserView:
        """Change an operator's password; their open sessions end (they log in again)."""
        changed = await self.users.set_password(name, password)
        await self.sessions.end_all(name)
        return changed
