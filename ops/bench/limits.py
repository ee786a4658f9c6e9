"""The physical limits, measured in the same run: how fast the server itself takes XADDs.

    redis-benchmark XADD, 50 clients       the server's own client, one command per round trip
    redis-benchmark XADD, pipelined 16     the same, 16 commands per round trip
    redis-py XADD pipeline loop            one Python client (hiredis), pipelines of 100 XADDs

Each run is bounded by a request count and a timeout, on a key of its own that is deleted after.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec
from redis.asyncio import Redis

from ops.bench import payloads
from ops.bench.extras import Tool

KEY = "bench:limits:xadd"
CLIENTS = 50
PIPELINE = 16
LOOP_BATCH = 100


@dataclass(frozen=True, kw_only=True)
class Limit:
    """One physical-limit row; `events_s` None when the row was skipped (`note` says why)."""

    name: str
    events_s: float | None
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""


def measure(tool: Tool, redis_url: str, *, quick: bool) -> list[Limit]:
    requests = 50_000 if quick else 200_000
    rows = [
        _server_benchmark(tool, redis_url, f"{tool.note.split()[0] if tool.path else 'redis-benchmark'} "
                          f"XADD, {CLIENTS} clients", requests, 1),
        _server_benchmark(tool, redis_url, f"{tool.note.split()[0] if tool.path else 'redis-benchmark'} "
                          f"XADD, {CLIENTS} clients, pipeline {PIPELINE}", requests * 3, PIPELINE),
        asyncio.run(_pipeline_loop(redis_url, requests // 2, timeout_s=10.0)),
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


async def _delete(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await redis.delete(KEY)
    finally:
        await redis.aclose()
