"""Dispatch benchmark: events/s through one EventFlow worker (no-op handler) against a raw
XREADGROUP + XACK loop over the same log, in the same run.

Both read the same pre-filled log with their own consumer group, so they do the same Redis work per
event; the raw loop is the physical limit of a Python consumer (redis-py + hiredis, batches of 100,
msgspec decode of the data). FastStream's Redis Streams consumer-group subscriber (what a user would
most likely pick instead) reads the same log too, in its one-message and batch-of-100 modes, from the
bench-only venv (extras.py); its one-message mode is slow, so it reads a bounded share of the log.
Rounds alternate between them to spread the machine's noise. Both run on the event loop that
`eventflow consume` uses (uvloop when installed).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.connections import connect
from app.embedded import EmbeddedServer
from app.events import parse_batch
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from consumers.base import Consumer, Delivery
from consumers.runner import Runner
from ops.bench import extras
from ops.bench.report import progress
from ops.bench.runinfo import run_id

BATCH = 100
RAW = "raw XREADGROUP + XACK loop"
OURS = "EventFlow worker, no-op handler"
FASTSTREAM = {"one": "FastStream subscriber, one message", "batch": "FastStream subscriber, batches of 100"}
FASTSTREAM_SCRIPT = Path(__file__).with_name("faststream_consumer.py")


async def fill(services: Services, events: int) -> None:
    body = msgspec.json.encode([{"type": "order.created", "data": {"order": n, "amount": 9.5}}
                                for n in range(1000)])
    for done in range(0, events, 1000):
        await services.ingest(parse_batch(body, "application/json"), "bench", {})
        if done and done % 50_000 == 0:
            progress(f"filled {done:,} events")


async def raw_loop(redis: Redis, stream: str, group: str, events: int) -> float:
    """The baseline: what a hand-written consumer does at best."""
    await redis.xgroup_create(stream, group, id="0")
    decode = msgspec.json.Decoder().decode
    seen = 0
    started = time.perf_counter()
    while seen < events:
        reply = await redis.xreadgroup(group, "raw", {stream: ">"}, count=BATCH, block=1000)
        if not reply:
            break
        entries = reply[0][1]
        for _entry_id, fields in entries:
            decode(fields[b"data"])
        await redis.xack(stream, group, *(e for e, _ in entries))
        seen += len(entries)
    return seen / (time.perf_counter() - started)


async def eventflow_worker(redis: Redis, settings: Settings, group: str, events: int) -> float:
    """One EventFlow runner (the real consumer loop) with a handler that does nothing."""
    seen = 0
    done = asyncio.Event()

    async def noop(delivery: Delivery) -> None:
        nonlocal seen
        seen += 1
        if seen >= events:
            done.set()

    runner = Runner([Consumer(group, noop, batch_size=BATCH)], redis, settings, "bench")
    started = time.perf_counter()
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(done.wait(), timeout=300)
    elapsed = time.perf_counter() - started
    runner.stop.set()
    await task
    return seen / elapsed


async def faststream(python: str, redis: Redis, url: str, stream: str, group: str, events: int,
                     mode: str, timeout_s: float) -> float:
    """FastStream's subscriber in the bench-only venv; the group is made here at id 0, since
    FastStream would make it at `$` and never see the log (the bug STYLE.md warns about)."""
    await redis.xgroup_create(stream, group, id="0")
    command = [python, str(FASTSTREAM_SCRIPT), url, stream, group, str(events), str(timeout_s), mode]
    out = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True,
                                  timeout=timeout_s + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"FastStream {mode} consumer failed: {out.stderr[-1000:]}")
    [line] = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    return float(result["events"] / result["seconds"])


async def measure(events: int, rounds: int) -> dict[str, Any]:
    baselines = extras.baselines_python()
    python = baselines.path
    if python is None:
        progress(f"FastStream rows skipped: {baselines.note}")
    with tempfile.TemporaryDirectory(prefix="ef-bench-dispatch-") as tmp:
        server = EmbeddedServer(Path(tmp) / "valkey").start()  # AOF on, appendfsync everysec
        try:
            settings = Settings(redis_url=server.url, prefix="bench")
            redis = connect(settings)
            progress(f"filling the log with {events:,} events")
            await fill(Services(redis, settings), events)
            stream = Keys(settings.prefix).stream(0)
            results: dict[str, list[float]] = {RAW: [], OURS: []}
            for n in range(rounds):
                raw = await raw_loop(redis, stream, f"raw{n}", events)
                results[RAW].append(raw)
                progress(f"round {n + 1}: raw loop {raw:,.0f} events/s")
                ours = await eventflow_worker(redis, settings, f"eventflow{n}", events)
                results[OURS].append(ours)
                progress(f"round {n + 1}: EventFlow worker {ours:,.0f} events/s")
                if python is None:
                    continue
                for mode, name in FASTSTREAM.items():
                    # One message at a time runs ~30x slower: a bounded share of the log keeps the run short.
                    count, timeout_s = (min(events, 15_000), 6.0) if mode == "one" else (events, 20.0)
                    rate = await faststream(python, redis, server.url, stream, f"faststream-{mode}{n}", count, mode,
                                            timeout_s)
                    results.setdefault(name, []).append(rate)
                    progress(f"round {n + 1}: {name} {rate:,.0f} events/s")
            await redis.aclose()
        finally:
            server.stop()
    medians = {name: statistics.median(values) for name, values in results.items()}
    return {"events": events, "rounds": rounds, "batch": BATCH, "events_per_s": medians, "all": results,
            "faststream": extras.package_versions(python) if python else baselines.note}


def run(events: int, rounds: int, results_dir: Path) -> dict[str, Any]:
    # On the event loop `eventflow consume` runs its workers on (uvloop when installed), the raw loop too.
    try:
        import uvloop

        loop, run_loop = "uvloop", uvloop.run
    except ImportError:
        loop, run_loop = "asyncio", asyncio.run
    out = run_loop(measure(events, rounds))
    out["event_loop"] = loop
    rates = out["events_per_s"]
    raw, ours = rates[RAW], rates[OURS]
    out["ratio"] = ours / raw
    out["ratios"] = {f"EventFlow worker / {name}": ours / value for name, value in rates.items() if name != OURS}
    print()
    print(f"{'scenario':40} {'events/s':>10} {'EventFlow worker is':>20}")
    for name, value in rates.items():
        print(f"{name:40} {value:>10,.0f} {'' if name == OURS else f'{ours / value:.2f}x this':>20}")
    verdict = "met" if out["ratio"] >= 0.8 and ours >= 100_000 else "MISSED"
    print(f"(all in one process on {loop})")
    print(f"\nEventFlow worker / raw loop: {out['ratio']:.2f}x  (target >= 0.8x and >= 100,000 events/s: {verdict})")
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"dispatch-{run_id()}.json"
    path.write_text(json.dumps(out, indent=2))
    progress(f"results written to {path}")
    return out
