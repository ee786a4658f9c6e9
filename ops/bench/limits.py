"""The physical limits, measured in the same run: how fast the server itself takes XADDs.

    redis-benchmark XADD, 50 clients       the server's own client, one command per round trip
    redis-benchmark XADD, pipelined 16     the same, 16 commands per round trip
    redis-py XADD pipeline loop            one Python client (hiredis), pipelines of 100 XADDs
    append.lua called directly             EventFlow's append script, 100 ready-packed events a call
                                           from 4 connections: what the server itself can run the
                                           batch path at, with no web process (its ceiling here)

Each run is bounded by a request count and a timeout, on keys of its own that are deleted after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec
from redis.asyncio import Redis

from app.events import Incoming, enrich
from app.scripts import source
from app.settings import Settings
from app.store import EventLog, Prepared
from ops.bench import hostload, payloads
from ops.bench.extras import Tool

KEY = "bench:limits:xadd"
SCRIPT_PREFIX = "bench-limits"  # the append script's keys (log, marker, indexes) live under it
CLIENTS = 50
PIPELINE = 16
LOOP_BATCH = 100
SCRIPT_CLIENTS = 4
SCRIPT_NAME = f"append.lua called directly, {SCRIPT_CLIENTS} clients (batches of {LOOP_BATCH})"


@dataclass(frozen=True, kw_only=True)
class Limit:
    """One physical-limit row; `events_s` None when the row was skipped (`note` says why)."""

    name: str
    events_s: float | None
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""
    batch_only: bool = False  # compared with the batch row only (its calls are batch-sized)


def measure(tool: Tool, redis_url: str, *, quick: bool, server_pid: int | None = None) -> list[Limit]:
    """The rows above; `server_pid` adds how much of a core the server used to the script row."""
    requests = 50_000 if quick else 200_000
    rows = [
        _server_benchmark(tool, redis_url, f"{tool.note.split()[0] if tool.path else 'redis-benchmark'} "
                          f"XADD, {CLIENTS} clients", requests, 1),
        _server_benchmark(tool, redis_url, f"{tool.note.split()[0] if tool.path else 'redis-benchmark'} "
                          f"XADD, {CLIENTS} clients, pipeline {PIPELINE}", requests * 3, PIPELINE),
        asyncio.run(_pipeline_loop(redis_url, requests // 2, timeout_s=10.0)),
        _script_row(redis_url, requests * 2, 3.0 if quick else 5.0, server_pid),
    ]
    asyncio.run(_delete(redis_url))
    return rows


def _fields() -> list[str]:
    event = payloads.event(1)
    return ["type", event["type"], "source", payloads.SOURCE, "data", msgspec.json.encode(event["data"]).decode()]


def _server_benchmark(tool: Tool, redis_url: str, name: str, requests: int, pipeline: int) -> Limit:
    if tool.path is None:
        return Limit(name=name, events_s=None, note=f"skipped: {tool.note}")
    url = urlsplit(redis_url)
    command = [tool.path, "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379), "-c", str(CLIENTS),
               "-n", str(requests), "-P", str(pipeline), "--csv", "XADD", KEY, "*", *_fields()]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        rps, p50, p99 = parse_csv(out.stdout)
        return Limit(name=name, events_s=rps, p50_ms=p50, p99_ms=p99, note=f"{requests:,} XADDs")
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return Limit(name=name, events_s=None, note=f"failed: {exc}")


def parse_csv(text: str) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from `redis-benchmark --csv`'s last line. Its first column, the
    command line with the JSON in it, is not escaped: the numbers are read from the end."""
    rps, _avg, _min, p50, _p95, p99, _max = (float(f.strip('"')) for f in text.strip().splitlines()[-1].split(",")[-7:])
    return rps, p50, p99


async def _pipeline_loop(redis_url: str, events: int, timeout_s: float) -> Limit:
    """One redis-py client (hiredis) appending pipelines of LOOP_BATCH XADDs back to back."""
    redis = Redis.from_url(redis_url)
    fields = _fields()
    done = 0
    try:
        started = time.perf_counter()
        deadline = started + timeout_s
        while done < events and time.perf_counter() < deadline:
            pipe = redis.pipeline(transaction=False)
            for _ in range(LOOP_BATCH):
                pipe.execute_command("XADD", KEY, "*", *fields)
            await pipe.execute()
            done += LOOP_BATCH
        elapsed = time.perf_counter() - started
    finally:
        await redis.aclose()
    return Limit(name=f"redis-py XADD pipeline loop (batches of {LOOP_BATCH})", events_s=done / elapsed,
                 note=f"{done:,} XADDs")


def _script_row(redis_url: str, events: int, timeout_s: float, server_pid: int | None) -> Limit:
    def loop() -> Limit:
        return asyncio.run(_script_loop(redis_url, events, timeout_s))

    if server_pid is None:
        return loop()
    row, used = hostload.core_pct({"server": server_pid}, loop)
    pct = used["server"]
    return row if pct is None else dataclasses.replace(row, note=f"{row.note}, server at {pct:.0f}% of a core")


async def _script_loop(redis_url: str, events: int, timeout_s: float) -> Limit:
    """EventFlow's append script with the batch row's events, packed once (as the web process packs
    them) and sent from SCRIPT_CLIENTS connections back to back: the server's rate for the batch
    path with no web process and no HTTP. Made ids, no producer ids: the batch row's case."""
    settings = Settings(redis_url=redis_url, prefix=SCRIPT_PREFIX)
    event = payloads.event(1)
    fields = enrich(Incoming(type=event["type"], data=msgspec.Raw(msgspec.json.encode(event["data"]))),
                    payloads.SOURCE, None, "2026-11-27T00:00:00.000000Z")
    items = [Prepared(0, "", payloads.SOURCE, event["type"], fields)] * LOOP_BATCH
    clients = [Redis.from_url(redis_url) for _ in range(SCRIPT_CLIENTS)]
    args = EventLog(clients[0], settings)._append_args(0, items)
    done = 0

    async def loop(redis: Redis, sha: str, deadline: float) -> None:
        nonlocal done
        while done < events and time.perf_counter() < deadline:
            await redis.execute_command("EVALSHA", sha, 2, *args)
            done += LOOP_BATCH

    try:
        sha = await clients[0].script_load(source("append"))
        started = time.perf_counter()
        await asyncio.gather(*(loop(c, sha, started + timeout_s) for c in clients))
        elapsed = time.perf_counter() - started
    finally:
        for c in clients:
            await c.aclose()
    return Limit(name=SCRIPT_NAME, events_s=done / elapsed, note=f"{done:,} events", batch_only=True)


async def _delete(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await redis.delete(KEY)
        async for key in redis.scan_iter(match=f"{{{SCRIPT_PREFIX}}}*", count=1000):  # hash-tagged keys
            await redis.delete(key)
    finally:
        await redis.aclose()
