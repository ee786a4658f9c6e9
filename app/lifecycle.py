"""Where each event stands in each consumer group, derived from Redis's own structures.

No status record is written per successful delivery. For an event and a group:
  - the group's type patterns do not match             -> skipped
  - the latest attempt record says what happened last: dead-lettered, failed (-> retrying, with the
    attempt number and when the next attempt is due), replayed (-> pending), succeeded
  - no record, in the group's pending list (PEL)       -> in progress (which consumer, idle time)
  - no record, after the group's last-delivered id     -> pending
  - otherwise                                          -> succeeded
Attempt records exist only for events that failed at least once (bounded, expiring lists).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app.dispatch import Attempt, is_missing_group
from app.events import Record
from app.ids import entry_key
from app.keys import Keys
from app.settings import Settings


class GroupState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One event's delivery state in one consumer group."""

    group: str
    state: str  # pending | in-progress | retrying | succeeded | dead-lettered | skipped
    attempts: list[Attempt] = []
    attempt: int | None = None
    next_attempt_at_ms: int | None = None
    consumer: str | None = None
    idle_ms: int | None = None


class GroupInfo(msgspec.Struct, kw_only=True):
    """A consumer group across partitions: members, pending, lag and its declared settings."""

    name: str
    pending: int
    lag: int | None
    consumers: list[dict[str, Any]]
    last_delivered: list[str]
    spec: dict[str, Any] | None = None


class Lifecycle:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.keys = Keys(settings.prefix, settings.partitions)

    async def specs(self) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.keys.consumers)
        return {k.decode(): msgspec.json.decode(v) for k, v in raw.items()}

    async def deliveries(self, record: Record) -> list[GroupState]:
        """The event's state in every group reading its partition."""
        p, entry_id = record.partition, record.entry_id
        stream = self.keys.stream(p)
        groups = await groups_of(self.redis, stream)  # none when the stream is gone: an archived event
        specs = await self.specs()
        pipe = self.redis.pipeline(transaction=False)
        for g in groups:
            name = _s(g["name"])
            pipe.lrange(self.keys.attempts(p, name, entry_id), 0, -1)
            pipe.xpending_range(stream, name, entry_id, entry_id, 1)
        replies = await pipe.execute(raise_on_error=False)
        out = []
        for n, g in enumerate(groups):
            name = _s(g["name"])
            listed, pel = replies[2 * n], replies[2 * n + 1]
            if is_missing_group(pel):
                continue  # destroyed (by hand) since XINFO GROUPS listed it: no state to show
            for reply in (listed, pel):
                if isinstance(reply, Exception):
                    raise reply
            attempts = [msgspec.json.decode(a, type=Attempt) for a in listed]
            out.append(_state(record, g, specs.get(name), attempts, pel))
        return sorted(out, key=lambda s: s.group)

    async def groups(self) -> list[GroupInfo]:
        """Every consumer group with its consumers, pending count and lag, summed over partitions."""
        specs = await self.specs()
        merged: dict[str, GroupInfo] = {}
        for p in range(self.keys.partitions):
            stream = self.keys.stream(p)
            for g in await groups_of(self.redis, stream):
                name = _s(g["name"])
                try:
                    consumers = await self.redis.xinfo_consumers(stream, name)
                except ResponseError as exc:
                    if not is_missing_group(exc):
                        raise
                    continue  # destroyed by hand since XINFO GROUPS listed it
                info = merged.setdefault(name, GroupInfo(name=name, pending=0, lag=0, consumers=[],
                                                         last_delivered=[], spec=specs.get(name)))
                info.pending += int(g["pending"])
                info.lag = None if info.lag is None or g.get("lag") is None else info.lag + int(g["lag"])
                info.last_delivered.append(_s(g["last-delivered-id"]))
                for c in consumers:
                    info.consumers.append({"name": _s(c["name"]), "partition": p, "pending": int(c["pending"]),
                                           "idle_ms": int(c["idle"]), "inactive_ms": int(c.get("inactive", -1))})
        return sorted(merged.values(), key=lambda g: g.name)


async def groups_of(redis: Redis, stream: str) -> list[dict[Any, Any]]:
    """XINFO GROUPS, or none when the stream does not exist (not written yet, or deleted by hand)."""
    try:
        return await redis.xinfo_groups(stream)  # type: ignore[no-any-return]
    except ResponseError as exc:
        if "no such key" not in str(exc):
            raise
        return []


def _state(
    record: Record, group: dict[Any, Any], spec: dict[str, Any] | None, attempts: list[Attempt],
    pel: list[dict[str, Any]],
) -> GroupState:
    name = _s(group["name"])
    event_type = str(record.event.get("type", ""))
    if spec is not None and not any(fnmatch.fnmatchcase(event_type, t) for t in spec.get("types", ["*"])):
        return GroupState(group=name, state="skipped")
    attempts = _told(attempts)
    state = GroupState(group=name, state="succeeded", attempts=attempts)
    last = attempts[-1] if attempts else None
    if last is not None:
        state.attempt = last.attempt
        state.state = _AFTER_OUTCOME[last.outcome]
        if last.outcome == "failed":
            state.next_attempt_at_ms = last.next_at_ms
    elif pel:
        state.state = "in-progress"
    elif _after(record.entry_id, _s(group["last-delivered-id"])):
        state.state = "pending"
    if state.state == "in-progress" and pel:  # who holds it, and since when
        state.consumer, state.idle_ms = _s(pel[0]["consumer"]), int(pel[0]["time_since_delivered"])
    return state


def _told(attempts: list[Attempt]) -> list[Attempt]:
    """The attempt records worth showing: a start followed by its own attempt's outcome adds nothing;
    one followed by another attempt is an attempt its worker never finished (it stopped meanwhile)."""
    return [a for a, after in zip(attempts, [*attempts[1:], None])  # noqa: B905 - the last has none after it
            if not (a.outcome == "started" and after is not None and after.attempt == a.attempt)]


# The state an event is in after its latest attempt record.
_AFTER_OUTCOME = {"dead-lettered": "dead-lettered", "failed": "retrying", "replayed": "pending",
                  "started": "in-progress", "succeeded": "succeeded", "invalid": "dead-lettered"}


def _after(entry_id: str, last_delivered: str) -> bool:
    return entry_key(entry_id) > entry_key(last_delivered)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
