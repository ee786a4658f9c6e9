"""Measure what docs/scaling.md's capacity model is built from, on this machine.

    python -m ops.capacity [--events N] [--json PATH]

Starts the embedded Valkey (AOF on, `appendfsync everysec`) and measures, in this process:
- ingest through the service layer (what a web process does after HTTP), batches of 100 and single
  events: events/s, web-side CPU and Redis server CPU per 1,000 events, server memory per event;
- dispatch through the real runner with a no-op handler: events/s for one worker reading 1 and 4
  partitions, worker CPU and server CPU per 1,000 deliveries.
CPU is read from /proc (user + system time of this process and of the server), so the figures are
costs, not rates: they hold on a busy machine better than events/s do. HTTP is not included here:
`python -m ops.bench` measures the web process under wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import msgspec

from app.connections import connect
from app.embedded import EmbeddedServer
from app.events import parse_batch, parse_structured
from app.service import Services
from app.settings import Settings
from ops.bench.dispatch import eventflow_worker

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    what: str
    events: int
    events_s: float
    client_cpu_ms_per_1k: float  # the web process (ingest) or the worker (dispatch)
    server_cpu_ms_per_1k: float
    server_bytes_per_event: float | None = None


def server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


async def measured(what: str, events: int, pid: int, work: Callable[[], Awaitable[object]]) -> Row:
    server0, client0, started = server_cpu_s(pid), time.process_time(), time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    server, client = server_cpu_s(pid) - server0, time.process_time() - client0
    return Row(what, events, round(events / elapsed), round(client * 1e6 / events, 1),
               round(server * 1e6 / events, 1))


def body(n: int, offset: int = 0) -> bytes:
    return msgspec.json.encode([{"type": "order.created", "subject": f"order-{offset + i}",
                                 "data": {"order": offset + i, "amount": 9.5, "currency": "EUR"}}
                                for i in range(n)])


async def ingest_rows(services: Services, pid: int, events: int) -> list[Row]:
    redis = services.redis

    async def batches() -> None:
        for done in range(0, events, 100):
            await services.ingest(parse_batch(body(100, done), "application/json"), "capacity", {})

    used0 = (await redis.info("memory"))["used_memory"]
    batch = await measured("ingest, batches of 100", events, pid, batches)
    batch.server_bytes_per_event = round(((await redis.info("memory"))["used_memory"] - used0) / events)
    singles_n = events // 5
    one = [body(1, n)[1:-1] for n in range(singles_n)]

    async def singles() -> None:  # 64 producers at once, as the web process sees them
        async def producer(k: int) -> None:
            for n in range(k, singles_n, 64):
                await services.ingest([parse_structured(one[n])], "capacity", {})

        await asyncio.gather(*(producer(k) for k in range(64)))

    return [batch, await measured("ingest, single events (64 concurrent)", singles_n, pid, singles)]


async def dispatch_row(settings: Settings, pid: int, events: int) -> Row:
    redis = connect(settings)
    work = partial(eventflow_worker, redis, settings, "capacity", events)  # the dispatch benchmark's run
    row = await measured(f"dispatch, 1 worker, {settings.partitions} partition(s)", events, pid, work)
    await redis.aclose()
    return row


async def main(events: int) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="eventflow-capacity-") as folder, EmbeddedServer(folder) as server:
        assert server.process is not None
        pid = server.process.pid
        for partitions in (1, 4):
            settings = Settings(redis_url=server.url, prefix=f"cap{partitions}", partitions=partitions)
            redis = connect(settings)
            services = Services(redis, settings)
            print(f"ingest ({partitions} partition(s)): {events:,} events in batches, {events // 5:,} single",
                  file=sys.stderr)
            for row in await ingest_rows(services, pid, events):
                row.what += f", {partitions} partition(s)"
                rows.append(row)
            await redis.aclose()
            print(f"dispatch: {events * 6 // 5:,} events, one worker", file=sys.stderr)
            rows.append(await dispatch_row(settings, pid, events * 6 // 5))
    return rows


def render(rows: list[Row]) -> str:
    lines = ["| measurement | events | events/s | client CPU ms / 1k | server CPU ms / 1k | server bytes / event |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        size = "" if r.server_bytes_per_event is None else f"{r.server_bytes_per_event:,.0f}"
        lines.append(f"| {r.what} | {r.events:,} | {r.events_s:,} | {r.client_cpu_ms_per_1k} | "
                     f"{r.server_cpu_ms_per_1k} | {size} |")
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per ingest run (default 100,000)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = asyncio.run(main(max(1000, args.events // 100 * 100)))
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
