"""Index cost: server memory per stored event, EventFlow's log vs a plain XADD of the same fields.

For each kind of event (ids made by EventFlow, ids sent by the producer) N events go through the
service layer (what the web process calls) into a fresh embedded server, so the server holds exactly
what ingest stores: the log entries, their type and source index entries and any idempotency keys.
The very entries EventFlow stored are then read back and XADDed as they are into a second fresh
server. Each side's growth of `INFO memory used_memory` is divided by N; `MEMORY USAGE` splits
EventFlow's figure by key, and the rest is the idempotency keys and overhead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from app.connections import connect
from app.events import Incoming, parse_structured
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from ops.bench import payloads
from ops.bench.stack import valkey

CHUNK = 500
PREFIX = "mem"
PLAIN_STREAM = "plain:events"
USED = "used_memory"
KINDS = {"ids made by EventFlow": False, "ids sent by the producer": True}

Load = Callable[[int, int], Awaitable[None]]  # (first event number, count)
Entries = list[list[bytes]]


@dataclass(frozen=True, kw_only=True)
class MemoryResult:
    """Bytes of server memory per event for one kind of event; `eventflow_by_key` splits EventFlow's."""

    kind: str
    events: int
    eventflow_bytes_per_event: float
    plain_bytes_per_event: float
    index_bytes_per_event: float
    eventflow_by_key: dict[str, float]


def measure(events: int, root: Path) -> list[MemoryResult]:
    """Load `events` events of each kind into fresh servers under `root`, EventFlow's way and plainly."""
    return [_measure_kind(kind, with_ids, events, root / f"memory-{n}") for n, (kind, with_ids) in
            enumerate(KINDS.items())]


def _measure_kind(kind: str, with_ids: bool, events: int, root: Path) -> MemoryResult:
    with valkey(root / "eventflow", "everysec") as server:
        eventflow, entries = asyncio.run(_eventflow_side(server.url, events, with_ids))
    with valkey(root / "plain", "everysec") as server:
        plain = asyncio.run(_plain_side(server.url, entries))
    total = eventflow.pop(USED)
    eventflow["idempotency keys and other"] = total - sum(eventflow.values())
    return MemoryResult(
        kind=kind, events=events, eventflow_bytes_per_event=total, plain_bytes_per_event=plain[USED],
        index_bytes_per_event=total - plain[USED], eventflow_by_key=eventflow,
    )


async def _eventflow_side(url: str, events: int, with_ids: bool) -> tuple[dict[str, float], Entries]:
    """Per-event growth when ingesting through the service layer, and the entries it stored."""
    settings = Settings(redis_url=url, prefix=PREFIX)
    keys = Keys(PREFIX)
    redis = connect(settings)
    services = Services(redis, settings)

    async def load(start: int, count: int) -> None:
        await services.ingest(_incoming(start, count, with_ids), payloads.SOURCE, {})

    by_key = {
        "log stream": keys.stream(0),
        "type index": keys.type_index(0, payloads.EVENT_TYPE),
        "source index": keys.source_index(0, payloads.SOURCE),
    }
    try:
        growth = await _grow(redis, events, load, by_key)
        return growth, await _entries(redis, keys.stream(0))
    finally:
        await redis.aclose()


async def _plain_side(url: str, entries: Entries) -> dict[str, float]:
    """Per-event growth when XADDing EventFlow's entries, field for field, into a plain stream."""
    redis = connect(Settings(redis_url=url))

    async def load(start: int, count: int) -> None:
        pipe = redis.pipeline(transaction=False)
        for fields in entries[start : start + count]:
            pipe.execute_command("XADD", PLAIN_STREAM, "*", *fields)
        await pipe.execute()

    try:
        return await _grow(redis, len(entries) - 1, load, {"log stream": PLAIN_STREAM})
    finally:
        await redis.aclose()


async def _grow(redis: Redis, events: int, load: Load, keys: Mapping[str, str]) -> dict[str, float]:
    """Event 0 first (scripts cached, keys created), then events 1..N between two snapshots."""
    await load(0, 1)
    before = await _snapshot(redis, keys)
    for start in range(1, events + 1, CHUNK):
        await load(start, min(CHUNK, events + 1 - start))
    after = await _snapshot(redis, keys)
    return {name: (after[name] - before[name]) / events for name in after}


async def _snapshot(redis: Redis, keys: Mapping[str, str]) -> dict[str, int]:
    sizes = {name: await redis.memory_usage(key, samples=0) or 0 for name, key in keys.items()}
    return {USED: int((await redis.info("memory"))[USED]), **sizes}


async def _entries(redis: Redis, stream: str) -> Entries:
    """Every entry's flat field list, oldest first."""
    out: Entries = []
    after = "-"
    while True:
        batch: Any = await redis.xrange(stream, after, "+", count=CHUNK)  # [(id, {field: value})]
        if not batch:
            return out
        out += [[item for pair in fields.items() for item in pair] for _, fields in batch]
        after = "(" + batch[-1][0].decode()


def _incoming(start: int, count: int, with_ids: bool) -> list[Incoming]:
    """Events parsed from the benchmark's request bodies, as the web process parses them."""
    return [parse_structured(payloads.event_body(n, f"mem-{n}" if with_ids else None))
            for n in range(start, start + count)]
