"""The service layer shared by the HTTP API, the dashboard and the CLI: no caller talks to Redis."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sequence

import msgspec
from redis.asyncio import Redis

from app.connections import check_server, is_unavailable, redis_errors
from app.deadletters import DeadLetters
from app.errors import ConfigError, Forbidden, NotFound, PayloadTooLarge
from app.events import Incoming, Record, enrich, now_rfc3339
from app.ids import valid_traceparent
from app.lifecycle import GroupState, Lifecycle
from app.producers import Producers
from app.settings import Settings
from app.store import Appended, EventLog, Page, Prepared, Query

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
        self.producers = Producers(redis, settings)
        self.lifecycle = Lifecycle(redis, settings)
        self.dead_letters = DeadLetters(redis, settings)
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
        return await self.log.query(query)

    async def require_operator(self, authorization: str | None) -> None:
        """Operations (dead letters, replays, webhooks) need the operator API token."""
        if await self.reader_scope(authorization) is not None:
            raise Forbidden("this needs the operator API token (EVENTFLOW_API_TOKEN), not a producer key")

    async def get_event(self, ident: str, scope: str | None) -> EventDetail:
        """One event with its delivery state in every consumer group."""
        record = await self.log.get(ident)
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
        traceparent = headers.get("traceparent")
        if traceparent is not None and not valid_traceparent(traceparent):
            traceparent = None
        now = now_rfc3339()
        keys = self.log.keys
        items = []
        for event in events:
            fields = enrich(event, source, traceparent, now)
            partition_key = event.extensions.get("partitionkey")
            if partition_key is None:
                partition_key = f"{source}\n{event.subject or ''}"
            partition = keys.partition_of(str(partition_key))
            items.append(Prepared(partition, event.id or "", source, event.type, fields))
        if not self._server_checked:
            try:
                await self.ensure_server_checked()
            except ConfigError as exc:
                log.error("durability check failed: %s", exc.detail)
                raise
        return await self.log.append(items, source)


