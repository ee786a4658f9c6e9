"""The ingest benchmark: EventFlow side by side with naive baselines, measured in one run.

Every row runs with the same connections, threads and duration; each EventFlow row is reported as a
ratio against its baseline from the same run (with the issue-6 target where there is one):

    decode-only             Litestar decodes the event into a Struct and answers; no Redis at all
    naive-single            Litestar decode + one XADD per request
    fastapi-single          FastAPI (pydantic model) + one XADD per request, under uvicorn, from a
                            bench-only venv (extras.py); skipped with a note when it cannot be installed
    eventflow-single        POST /v1/events, `fast` mode: auth, validation, enrichment, index (the
                            event id is made by EventFlow, so no idempotency key is needed)
    eventflow-single-ids    the same with a unique producer `id` per request (CloudEvents producers
                            send one), so the idempotency check and key are on the path
    naive-batch             Litestar decode of a batch + one pipeline of XADDs per request
    eventflow-batch         POST /v1/events/batch with the same batch, `fast` mode
    eventflow-schema-single eventflow-single for a type with a registered JSON Schema (enforce mode):
                            every event is validated (issue 7 asks for at least 0.85x without)
    eventflow-schema-batch  eventflow-batch, likewise
    eventflow-fsync-single  POST /v1/events, `fsync` mode, on a second server with `appendfsync always`

Then, with the same servers and web process: the physical limits (redis-benchmark and a redis-py
pipeline loop, limits.py), end-to-end latency at a steady 2k events/s with one worker and the RSS of
both processes (latency.py), 1,000 SSE clients on the live tail at 1k events/s (live.py), and last the
index cost: server memory per event, EventFlow vs a plain XADD (memory.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.embedded import EmbeddedServer
from ops.bench import extras, hostload, latency, limits, live, loadgen, payloads, profile, runinfo, stack
from ops.bench.config import BenchConfig
from ops.bench.loadgen import Load
from ops.bench.memory import MemoryResult
from ops.bench.memory import measure as measure_memory
from ops.bench.report import (
    BUSY_PCT,
    Ratio,
    Row,
    limits_table,
    memory_table,
    progress,
    ratio_table,
    steady_table,
    summary,
    table,
    write_json,
)

PREFIX = "bench"
NAIVE_STREAM = "naive:events"
# Requests still in the server when a load run ends must not overlap the next run: they would
# count twice, and push the naive app past redis-py's default pool of 100 connections.
SETTLE_S = 1.0
LIVE_CLIENTS = 1000


@dataclass(frozen=True)
class Compare:
    """Report a scenario's events/s over `against`'s; `target` is the minimum ratio issue 6 asks for."""

    against: str
    target: float | None = None


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    app: str  # which web process serves it (see _start_stack)
    path: str
    batch: bool = False
    with_ids: bool = False  # a unique producer event id in every request
    compare: tuple[Compare, ...] = ()
    min_events_s: float | None = None
    schema: bool = False  # events of a type whose registered JSON Schema checks every event


# Single-event rows first, batch rows last, and each ratio's two rows next to each other: a row that
# runs after the batch rows (~600k events in 10 s) read 4-10% lower in two tries. The schema row used
# to follow the batch row in every round, and its ratio to the plain row read 0.75-0.89x round by
# round, against ~1.0x (7.96k vs 7.6k req/s, medians of 4) when the two alternate on one process.
SCENARIOS = (
    Scenario(name="decode-only", app="baseline", path="/decode/events"),
    Scenario(name="naive-single", app="baseline", path="/naive/events"),
    Scenario(name="fastapi-single", app="fastapi", path="/naive/events"),
    Scenario(name="eventflow-single", app="eventflow", path="/v1/events",
             compare=(Compare("naive-single", 2.0), Compare("fastapi-single", 3.0), Compare("decode-only", 0.8))),
    Scenario(name="eventflow-schema-single", app="eventflow", path="/v1/events", schema=True,
             compare=(Compare("eventflow-single", 0.85),)),
    Scenario(name="eventflow-single-ids", app="eventflow", path="/v1/events", with_ids=True,
             compare=(Compare("naive-single", 2.0), Compare("decode-only", 0.8))),
    Scenario(name="eventflow-fsync-single", app="eventflow-fsync", path="/v1/events",
             compare=(Compare("eventflow-single", 0.7), Compare("naive-single"))),
    Scenario(name="naive-batch", app="baseline", path="/naive/events/batch", batch=True),
    Scenario(name="eventflow-batch", app="eventflow", path="/v1/events/batch", batch=True,
             compare=(Compare("naive-batch"),), min_events_s=150_000),
    Scenario(name="eventflow-schema-batch", app="eventflow", path="/v1/events/batch", batch=True, schema=True,
             compare=(Compare("eventflow-batch", 0.85),)),
)


@dataclass(frozen=True)
class Target:
    """A running web process: where to send requests, with which headers, and its PID (for py-spy)."""

    url: str
    headers: dict[str, str]
    pid: int
    server_pid: int
    redis_url: str = ""


def run(config: BenchConfig) -> Path:
    """Start the stack, measure every scenario and the index cost, print the tables, write the JSON."""
    tool = loadgen.choose(config.loadgen)
    progress(f"load generator: {loadgen.describe(tool)}")
    _check_quiet(config)
    run_id, info = runinfo.run_id(), runinfo.describe(loadgen.describe(tool))
    baselines, server_bench = extras.baselines_python(), extras.server_benchmark()
    info["baselines"] = {"fastapi_faststream": extras.package_versions(baselines.path) if baselines.path
                         else baselines.note, "server_benchmark": server_bench.note}
    with tempfile.TemporaryDirectory(prefix="eventflow-bench-") as tmp:
        root = Path(tmp)
        with contextlib.ExitStack() as scope:
            targets = _start_stack(scope, root, baselines)
            rows = _measure_rounds(targets, config, tool, run_id)
            steady = _steady(targets["eventflow"], config, server_bench, root)
        progress(f"index cost: loading {config.memory_events:,} events each way into fresh servers")
        memory = measure_memory(config.memory_events, root)
    ratios, minimums = _ratios(rows, steady["limits"])
    print(f"\n{table(rows)}\n\n{ratio_table(ratios, minimums)}\n\n{limits_table(steady['limits'])}\n\n"
          f"{steady_table(steady['latency'], steady['live'])}\n\n{memory_table(memory)}\n", flush=True)
    if tool == "python":
        print("note: the Python load generator saturates long before the servers do, so every ratio is pulled "
              "toward 1x; install wrk for figures that mean something\n", flush=True)
    results = _results(config, info, rows, memory, steady)
    path = write_json(results, config.results_dir / f"ingest-{run_id}.json")
    progress(f"results written to {path}")
    return path


def _check_quiet(config: BenchConfig) -> None:
    """Say how busy the machine is before measuring (waiting for quiet when asked)."""
    if config.wait_quiet_s > 0:
        progress(f"waiting up to {config.wait_quiet_s:g} s for other processes to go quiet")
        busy = hostload.wait_quiet(config.wait_quiet_s, BUSY_PCT)
    else:
        busy = hostload.busy_now()
    if busy is not None:
        warning = "; figures will be noisy" if busy >= BUSY_PCT else ""
        progress(f"other processes use {busy:.0f}% of this machine's CPU{warning}")


def _start_stack(scope: contextlib.ExitStack, root: Path, baselines: extras.Tool) -> dict[str, Target]:
    """Two servers (AOF everysec, and always for fsync mode) and the web processes (FastAPI's when
    the bench-only venv is there)."""
    progress("starting embedded Valkey: AOF everysec (main) and AOF always (fsync mode)")
    everysec = scope.enter_context(stack.valkey(root / "valkey-everysec", "everysec"))
    always = scope.enter_context(stack.valkey(root / "valkey-always", "always"))
    apps = {
        "baseline": (stack.BASELINE_FACTORY, everysec, stack.baseline_env(everysec.url, NAIVE_STREAM)),
        "eventflow": (stack.EVENTFLOW_FACTORY, everysec, stack.eventflow_env(everysec.url, PREFIX, "fast")),
        "eventflow-fsync": (stack.EVENTFLOW_FACTORY, always, stack.eventflow_env(always.url, PREFIX, "fsync")),
    }
    targets = {name: _start_web(scope, root, name, *spec) for name, spec in apps.items()}
    if baselines.path is None:
        progress(f"fastapi-single skipped: {baselines.note}")
    else:
        env = {**stack.baseline_env(everysec.url, "naive:fastapi")}
        targets["fastapi"] = _start_web(scope, root, "fastapi", "fastapi_app:app", everysec, env,
                                        stack.uvicorn_command(baselines.path))
    return targets


def _start_web(
    scope: contextlib.ExitStack, root: Path, name: str, factory: str, server: EmbeddedServer, env: dict[str, str],
    command: list[str] | None = None,
) -> Target:
    progress(f"starting {name} under {'uvicorn' if command else 'granian'} ({factory})")
    process = scope.enter_context(stack.web(name, factory, env, root, command))
    headers = {"Content-Type": "application/json"}
    if factory == stack.EVENTFLOW_FACTORY:
        headers["Authorization"] = f"Bearer {stack.create_producer(server.url, PREFIX, payloads.SOURCE)}"
    assert server.process is not None
    return Target(process.url, headers, process.pid, server.process.pid, server.url)


def _measure_rounds(targets: dict[str, Target], config: BenchConfig, tool: str, run_id: str) -> list[Row]:
    """Every scenario `config.rounds` times, rounds one after the other; each row is its median round."""
    rounds: dict[str, list[Row]] = {s.name: [] for s in SCENARIOS}
    present = [s for s in SCENARIOS if s.app in targets]
    for n in range(config.rounds):
        order = round_order(present, n, config.rounds)
        if config.rounds > 1:
            progress(f"round {n + 1} of {config.rounds}, starting with {order[0].name}")
        for s in order:
            rounds[s.name].append(_measure(s, targets[s.app], config, tool, f"{run_id}-r{n + 1}"))
    return [_median(rounds[s.name]) for s in present]


def round_order(scenarios: list[Scenario], n: int, rounds: int) -> list[Scenario]:
    """Round `n`'s order: the list rotated by n/rounds of its length, so each row takes a different
    place in each round and its median carries no one place's bias (a row runs on a web process and
    a server that earlier rows left warm, grown or busy: the first EventFlow row on a process read
    10-20% above later ones in some runs)."""
    shift = n * len(scenarios) // max(1, rounds)
    return scenarios[shift:] + scenarios[:shift]


def _steady(target: Target, config: BenchConfig, server_bench: extras.Tool, root: Path) -> dict[str, Any]:
    """The rows beyond throughput, on the same server and web process: physical limits, end-to-end
    latency and memory at a steady load, and the live tail with 1,000 SSE clients."""
    progress("physical limits: redis-benchmark XADD, a redis-py pipeline loop, append.lua called directly")
    found = limits.measure(server_bench, target.redis_url, quick=config.quick, server_pid=target.server_pid)
    env = stack.eventflow_env(target.redis_url, PREFIX, "fast")
    steady = latency.measure(target.url, target.headers, target.pid, env, PREFIX, root,
                             duration_s=3.0 if config.quick else 6.0, warmup_s=1.0)
    progress(f"latency: p50 {steady.p50_ms:.2f} ms, p99 {steady.p99_ms:.2f} ms; RSS web "
             f"{steady.web_rss_mb or 0:.0f} MB, worker {steady.worker_rss_mb or 0:.0f} MB")
    fan_out = live.measure(target.url, target.headers, target.pid, target.redis_url, PREFIX,
                           clients=LIVE_CLIENTS, duration_s=3.0 if config.quick else 5.0)
    progress(f"live: p50 {fan_out.p50_ms:.0f} ms, p99 {fan_out.p99_ms:.0f} ms, {fan_out.accepted:,} events "
             f"accepted, web RSS {fan_out.web_rss_mb or 0:.0f} MB")
    return {"limits": found, "latency": steady, "live": fan_out}


def _median(rows: list[Row]) -> Row:
    if len(rows) == 1:
        return rows[0]
    ordered = sorted(rows, key=lambda row: row.events_s)
    return dataclasses.replace(ordered[len(ordered) // 2], round_events_s=tuple(row.events_s for row in rows))


def _measure(scenario: Scenario, target: Target, config: BenchConfig, tool: str, run_id: str) -> Row:
    """Smoke-check one request, warm up, then one bounded load run (profiled when asked)."""
    body = payloads.batch_body(config.batch_size) if scenario.batch else payloads.single_body(with_id=scenario.with_ids)
    load = Load(url=target.url + scenario.path, body=body, headers=target.headers, connections=config.connections,
                threads=config.threads, duration_s=config.duration_s, max_requests=config.max_requests,
                id_placeholder=payloads.ID_PLACEHOLDER if scenario.with_ids else None)
    if scenario.schema:
        load = dataclasses.replace(load, body=payloads.checked(body))
        stack.register_schema(target.redis_url, PREFIX, payloads.CHECKED_TYPE, payloads.CHECKED_SCHEMA)
    _smoke(scenario.name, load)
    progress(f"{scenario.name}: warm-up {config.warmup_s:g} s")
    loadgen.run(tool, dataclasses.replace(load, duration_s=config.warmup_s))
    time.sleep(SETTLE_S)
    progress(f"{scenario.name}: measuring {config.duration_s:g} s, {config.connections} connections")
    profiled = config.profile and scenario.app.startswith("eventflow")
    raw = config.results_dir / f"profile-{run_id}-{scenario.name}.txt"
    before = hostload.sample()
    with _profiling(profiled, target.pid, raw):
        result, core_pct = hostload.core_pct({"web": target.pid, "valkey": target.server_pid},
                                             lambda: loadgen.run(tool, load))
    other_cpu_pct = hostload.other_cpu_pct(before, hostload.sample())
    time.sleep(SETTLE_S)
    row = Row(name=scenario.name, app=scenario.app, events_per_request=config.batch_size if scenario.batch else 1,
              connections=config.connections, profiled=profiled, other_cpu_pct=other_cpu_pct, core_pct=core_pct,
              result=result)
    progress(summary(row))
    if profiled:
        _print_profile(raw)
    return row


def _smoke(name: str, load: Load) -> None:
    status, answer = stack.post_once(load.url, loadgen.request_body(load), load.headers)
    if not 200 <= status < 300:
        raise RuntimeError(f"{name}: {load.url} answered {status} to the benchmark body: {answer[:500]!r}")


@contextlib.contextmanager
def _profiling(enabled: bool, pid: int, raw: Path) -> Iterator[None]:
    if not enabled:
        yield
        return
    if not profile.available():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    raw.parent.mkdir(parents=True, exist_ok=True)
    with profile.recording(pid, raw):
        yield


def _print_profile(raw: Path) -> None:
    by_self = profile.render("hot spots by self time:", profile.hot_spots(raw, 12))
    by_total = profile.render("hot spots by total time:", profile.hot_spots(raw, 20, by="total"))
    print(f"{by_self}\n\n{by_total}\n(collapsed stacks: {raw})", flush=True)


def _ratios(rows: list[Row], found: list[limits.Limit]) -> tuple[list[Ratio], list[tuple[str, float, float]]]:
    by_name = {row.name: row.events_s for row in rows}
    ratios = [
        Ratio(scenario=s.name, baseline=c.against, target=c.target,
              ratio=by_name[s.name] / max(by_name[c.against], 1e-9))
        for s in SCENARIOS for c in s.compare if s.name in by_name and c.against in by_name
    ]
    # Against the physical limits: orientation, no targets (how much of the server's own rate is left).
    ratios += [Ratio(scenario=name, baseline=limit.name, target=None, ratio=by_name[name] / limit.events_s)
               for name in ("eventflow-single", "eventflow-batch") if name in by_name
               for limit in found if limit.events_s and (name == "eventflow-batch" or not limit.batch_only)]
    minimums = [(s.name, by_name[s.name], s.min_events_s) for s in SCENARIOS if s.min_events_s and s.name in by_name]
    return ratios, minimums


def _results(
    config: BenchConfig, info: dict[str, Any], rows: list[Row], memory: list[MemoryResult], steady: dict[str, Any]
) -> dict[str, Any]:
    ratios, minimums = _ratios(rows, steady["limits"])
    return {
        "benchmark": "ingest",
        "run": info,
        "config": dataclasses.asdict(config),
        "scenarios": [{**dataclasses.asdict(row), "events_s": row.events_s} for row in rows],
        "ratios": [{**dataclasses.asdict(r), "verdict": r.verdict} for r in ratios],
        "absolute_targets": [{"scenario": n, "events_s": v, "minimum": m} for n, v, m in minimums],
        "physical_limits": [dataclasses.asdict(limit) for limit in steady["limits"]],
        "latency": dataclasses.asdict(steady["latency"]),
        "live": dataclasses.asdict(steady["live"]),
        "memory": [dataclasses.asdict(m) for m in memory],
    }
