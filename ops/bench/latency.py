"""End-to-end latency and memory at a steady load: from sending a POST to a worker's handler starting.

A paced producer (paced.py) offers a fixed rate of single-event POSTs to the EventFlow web process;
one worker process (`eventflow consume`, the production command) runs a probe consumer that notes
when each handler starts (probe.py). The first `warmup_s` of events are left out of the figures.
Meanwhile the peak RSS of the web process and of the worker is sampled (the issue's memory targets).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app.keys import Keys
from ops.bench import hostload, paced, probe, runinfo, stack
from ops.bench.report import progress

RATE_S = 2000.0
GRACE_S = 1.0  # after the last POST, time for the worker to reach the last events


@dataclass(frozen=True, kw_only=True)
class LatencyResult:
    rate_s: float
    sent: int
    accepted: int
    measured: int  # events after the warm-up that reached the handler
    missing: int  # accepted events after the warm-up that never reached it
    errors: int
    unsent: int  # POSTs the schedule held but never sent: ingest stopped answering in time
    first_error: str
    producer_max_lag_ms: float  # how far behind schedule the producer fell (it should stay near 0)
    p50_ms: float
    p99_ms: float
    max_ms: float
    web_rss_mb: float | None
    worker_rss_mb: float | None


def measure(url: str, headers: dict[str, str], web_pid: int, env: dict[str, str], prefix: str, root: Path,
            *, duration_s: float, warmup_s: float) -> LatencyResult:
    out = root / "probe.json"
    env = {**env, "BENCH_PROBE_OUT": str(out), "EVENTFLOW_WORKER_METRICS_PORT": "0",
           "PYTHONPATH": str(runinfo.ROOT)}
    with _worker(env, root / "worker.log") as worker:
        asyncio.run(_wait_group(env["REDIS_URL"], prefix, worker))
        progress(f"latency: {RATE_S:,.0f} POST/s for {warmup_s + duration_s:g} s ({warmup_s:g} s warm-up), "
                 "one worker")
        with hostload.PeakRss({"web": web_pid, "worker": worker.pid}) as rss:
            sent = asyncio.run(paced.produce(url + "/v1/events", headers, _body, RATE_S, warmup_s + duration_s))
            time.sleep(GRACE_S)
    if not out.exists():
        raise RuntimeError(f"the probe worker (exit code {worker.returncode}) wrote no results: "
                           f"{(root / 'worker.log').read_text(errors='replace')[-1000:]}")
    started = dict(msgspec.json.decode(out.read_bytes(), type=list[tuple[int, float]]))
    first = int(RATE_S * warmup_s)
    counted = [n for n in sent.entry_ids if n >= first]
    latencies = [started[n] - sent.sent_at[n] for n in counted if n in started]
    p50, p99, worst = paced.percentiles_ms(latencies)
    peak = rss.peak_mb()
    return LatencyResult(
        rate_s=RATE_S, sent=len(sent.sent_at), accepted=sent.accepted, measured=len(latencies),
        missing=len(counted) - len(latencies), errors=sent.errors, unsent=sent.unsent, first_error=sent.first_error,
        producer_max_lag_ms=sent.max_lag_ms, p50_ms=p50, p99_ms=p99, max_ms=worst,
        web_rss_mb=peak["web"], worker_rss_mb=peak["worker"],
    )


def _body(n: int) -> bytes:
    return b'{"type":"%s","data":{"seq":%d}}' % (probe.EVENT_TYPE.encode(), n)


@contextlib.contextmanager
def _worker(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`eventflow consume probe --module ops.bench.probe`; SIGTERM on exit makes it write its file."""
    command = [stack.venv_bin("eventflow"), "consume", "probe", "--module", "ops.bench.probe"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _wait_group(redis_url: str, prefix: str, worker: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Until the worker has made its consumer group (it reads from then on)."""
    redis = Redis.from_url(redis_url)
    stream = Keys(prefix).stream(0)
    deadline = time.monotonic() + timeout_s
    groups: list[dict[str, object]] = []
    try:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the probe worker exited at start-up with {worker.returncode}")
            with contextlib.suppress(ResponseError):  # no stream yet
                groups = await redis.xinfo_groups(stream)
            if any(g["name"] in (b"probe", "probe") for g in groups):
                await asyncio.sleep(0.5)  # its first XREADGROUP
                return
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    raise RuntimeError("the probe worker made no consumer group within 30 s")
