"""Load generators: wrk (with `post.lua`) when it is on PATH, else a bounded asyncio + httpx client.

Both take a `Load` (one URL, one fixed body, fixed headers, N connections, bounded in time and in
requests) and return a `LoadResult` with throughput, p50/p99 latency and the error count.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: wrk runs need no httpx
    import httpx

LUA_SCRIPT = Path(__file__).with_name("post.lua")
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass(frozen=True, kw_only=True)
class Load:
    """One load run against one endpoint."""

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    connections: int = 64
    threads: int = 2
    duration_s: float = 10.0
    max_requests: int = 2_000_000
    id_placeholder: str | None = None  # replaced in `body` by a value unique to each request


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    """What one load run measured; `errors` counts non-2xx answers and socket errors, and
    `error_detail` says which (with the first non-2xx answer)."""

    tool: str
    requests: int
    duration_s: float
    requests_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_detail: str = ""


def choose(preference: str) -> str:
    """The load generator to use: `wrk` when asked or found on PATH (installed with apt-get when
    this is root on Debian), else `python`, about 20x slower than wrk on the same machine: its
    figures measure the client, not the servers (it says so)."""
    if preference == "python":
        return preference
    from ops.bench.extras import apt_install  # not at the top: report (which extras imports) imports this module
    from ops.bench.report import progress

    if shutil.which("wrk") is None:
        apt_install("wrk", "wrk", "(the load generator; the Python fallback is about 20x slower)")
    if shutil.which("wrk"):
        return "wrk"
    if preference == "wrk":
        raise RuntimeError("--loadgen wrk: wrk is not on PATH (Debian/Ubuntu: apt-get install -y wrk)")
    progress("no wrk (Debian/Ubuntu: apt-get install -y wrk): using the Python load generator, about "
             "20x slower; the throughput figures then measure it, not the servers")
    return "python"


def describe(tool: str) -> str:
    """The generator's name and version, for the results file."""
    if tool != "wrk":
        import httpx

        return f"python asyncio + httpx {httpx.__version__}"
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).strip().splitlines()[0]


def request_body(load: Load) -> bytes:
    """One request's body: `load.body` with its id placeholder (if any) replaced by a fresh value."""
    if load.id_placeholder is None:
        return load.body
    return load.body.replace(load.id_placeholder.encode(), uuid.uuid4().hex.encode())


def run(tool: str, load: Load) -> LoadResult:
    return run_wrk(load) if tool == "wrk" else run_python(load)


# -- wrk ----------------------------------------------------------------------------------------


def run_wrk(load: Load) -> LoadResult:
    with tempfile.NamedTemporaryFile(prefix="bench-body-", suffix=".json") as body:
        body.write(load.body)
        body.flush()
        env = {
            **os.environ,
            "BENCH_BODY_FILE": body.name,
            "BENCH_MAX_REQUESTS_PER_THREAD": str(math.ceil(load.max_requests / load.threads)),
            "BENCH_ID_PLACEHOLDER": load.id_placeholder or "",
            "BENCH_RUN_NONCE": uuid.uuid4().hex[:12],  # ids stay unique across runs (warm-up, then measure)
        }
        out = subprocess.run(
            wrk_command(load), env=env, capture_output=True, text=True, timeout=load.duration_s + 60, check=False
        )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    return parse_wrk(out.stdout, out.stderr)


def wrk_command(load: Load) -> list[str]:
    headers = [arg for name, value in load.headers.items() for arg in ("-H", f"{name}: {value}")]
    return [
        "wrk", "--latency", "--timeout", "5s", "-t", str(load.threads), "-c", str(load.connections),
        "-d", f"{max(1, round(load.duration_s))}s", "-s", str(LUA_SCRIPT), *headers, load.url,
    ]


def parse_wrk(text: str, stderr: str = "") -> LoadResult:
    """Read wrk's summary (with --latency) into a LoadResult; `stderr` holds post.lua's error notes."""
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),", text)
    if total is None:
        raise RuntimeError(f"cannot read wrk output:\n{text}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    first = re.search(r"first non-2xx answer: (.*)", stderr)
    detail = [f"{non_2xx.group(1)} non-2xx" + (f" (first: {first.group(1)})" if first else "")] if non_2xx else []
    detail += [sockets.group(0)] if sockets else []
    return LoadResult(
        tool="wrk",
        requests=int(total.group(1)),
        duration_s=float(total.group(2)) * _UNITS_MS[total.group(3)] / 1000,
        requests_s=float(_match(r"Requests/sec:\s+([\d.]+)", text)),
        p50_ms=_wrk_latency(text, "50"),
        p99_ms=_wrk_latency(text, "99"),
        errors=(int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0),
        error_detail="; ".join(detail),
    )


def _wrk_latency(text: str, percentile: str) -> float:
    value = re.search(rf"^\s+{percentile}%\s+([\d.]+)(\w+)\s*$", text, re.MULTILINE)
    if value is None:
        raise RuntimeError(f"no {percentile}% latency in wrk output (was --latency passed?):\n{text}")
    return float(value.group(1)) * _UNITS_MS[value.group(2)]


def _match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"cannot find {pattern!r} in wrk output:\n{text}")
    return found.group(1)


# -- Python fallback ----------------------------------------------------------------------------


def run_python(load: Load) -> LoadResult:
    """The fallback generator: `connections` asyncio workers sharing one httpx client (slower than
    wrk, so it measures less of the server's ceiling; the results file says which one ran)."""
    return asyncio.run(_python_load(load))


async def _python_load(load: Load) -> LoadResult:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=load.connections, max_keepalive_connections=load.connections)
    started = time.perf_counter()
    deadline = started + load.duration_s
    async with httpx.AsyncClient(limits=limits, timeout=5.0) as client:
        workers = [_worker(client, load, deadline, latencies, errors) for _ in range(load.connections)]
        await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    return LoadResult(
        tool="python", requests=len(latencies), duration_s=elapsed, requests_s=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 0.50), p99_ms=percentile(latencies, 0.99), errors=len(errors),
        error_detail=f"{len(errors)} failed (first: {errors[0]})" if errors else "",
    )


async def _worker(
    client: httpx.AsyncClient, load: Load, deadline: float, latencies: list[float], errors: list[str]
) -> None:
    """Send requests back to back on one connection's worth of concurrency; note failures."""
    import httpx

    while time.perf_counter() < deadline and len(latencies) < load.max_requests:
        sent = time.perf_counter()
        try:
            response = await client.post(load.url, content=request_body(load), headers=load.headers)
            if not 200 <= response.status_code < 300:
                errors.append(f"{response.status_code} {response.text[:300]}")
        except httpx.HTTPError as exc:
            errors.append(repr(exc))
        latencies.append((time.perf_counter() - sent) * 1000)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (0.0 when there are none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]
