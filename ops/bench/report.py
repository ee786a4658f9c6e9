"""Output: progress lines while the benchmark runs, the final table, and the JSON results file."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ops.bench.loadgen import LoadResult
from ops.bench.memory import MemoryResult

if TYPE_CHECKING:  # these modules print progress through this one
    from ops.bench.latency import LatencyResult
    from ops.bench.limits import Limit
    from ops.bench.live import LiveResult

_STARTED = time.monotonic()


@dataclass(frozen=True, kw_only=True)
class Row:
    """One measured scenario."""

    name: str
    app: str
    events_per_request: int
    connections: int
    profiled: bool
    other_cpu_pct: float | None  # CPU other processes on the machine used meanwhile (see hostload.py)
    core_pct: dict[str, float | None]  # percent of one core: "web" (granian) and "valkey"
    result: LoadResult
    round_events_s: tuple[float, ...] = ()  # every round's events/s when there were several

    @property
    def events_s(self) -> float:
        return self.result.requests_s * self.events_per_request


@dataclass(frozen=True, kw_only=True)
class Ratio:
    """A scenario's events/s over its baseline's, with the issue-6 target when there is one."""

    scenario: str
    baseline: str
    ratio: float
    target: float | None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return _verdict(self.ratio >= self.target)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


def summary(row: Row) -> str:
    r = row.result
    errors = f"; ERRORS: {r.error_detail}" if r.errors else ""
    return (f"{row.name}: {row.events_s:,.0f} events/s ({r.requests_s:,.0f} req/s), "
            f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms{errors}")


_COLUMNS = ("scenario", "events/req", "conns", "events/s", "req/s", "p50 ms", "p99 ms", "errors",
            "web %core", "valkey %core", "other CPU %")
# Beyond this share of the machine used by other processes, a row's ratios are not trustworthy.
BUSY_PCT = 10.0


def table(rows: Sequence[Row]) -> str:
    """The throughput and latency table (profiled rows are marked: py-spy slows them down)."""
    cells = [_COLUMNS] + [
        (row.name + (" (profiled)" if row.profiled else ""), str(row.events_per_request), str(row.connections),
         f"{row.events_s:,.0f}", f"{row.result.requests_s:,.0f}", f"{row.result.p50_ms:.2f}",
         f"{row.result.p99_ms:.2f}", str(row.result.errors), _pct(row.core_pct["web"]),
         _pct(row.core_pct["valkey"]), _pct(row.other_cpu_pct))
        for row in rows
    ]
    notes = [f"errors in {row.name}: {row.result.error_detail}" for row in rows if row.result.errors]
    busy = [row.name for row in rows if (row.other_cpu_pct or 0) > BUSY_PCT]
    if busy:
        notes.append(f"other processes used over {BUSY_PCT:g}% of the machine during {', '.join(busy)}: "
                     "those figures and their ratios are unreliable; rerun on a quiet machine")
    return "\n".join([_grid(cells), *notes])


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def ratio_table(ratios: Sequence[Ratio], minimums: Sequence[tuple[str, float, float]]) -> str:
    """Ratios against same-run baselines, then absolute targets as (scenario, events/s, minimum)."""
    cells = [("EventFlow scenario", "against", "ratio", "target", "")]
    cells += [(r.scenario, r.baseline, f"{r.ratio:.2f}x", f">= {r.target}x" if r.target else "-", r.verdict)
              for r in ratios]
    cells += [(name, "absolute events/s", f"{value:,.0f}", f">= {minimum:,.0f}", _verdict(value >= minimum))
              for name, value, minimum in minimums]
    return _grid(cells)


def limits_table(found: Sequence[Limit]) -> str:
    """The server's own XADD rate, measured in the same run (rows skipped say why)."""
    cells = [("physical limit", "events/s", "p50 ms", "p99 ms", "note")]
    cells += [(f.name, "-" if f.events_s is None else f"{f.events_s:,.0f}", _ms(f.p50_ms), _ms(f.p99_ms), f.note)
              for f in found]
    return _grid(cells)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# Issue 6's targets for the steady-load rows.
E2E_P50_MS, E2E_P99_MS, LIVE_P99_MS, WEB_RSS_MB, WORKER_RSS_MB = 3.0, 10.0, 100.0, 120.0, 80.0


def steady_table(e2e: LatencyResult, live: LiveResult) -> str:
    """End-to-end latency, live delivery and memory at steady load, each against its target."""
    # The memory target is for steady load (the latency run, after the throughput rows in the same
    # process); the live row's 1,000 open streams are reported next to it, without a target: granian
    # itself holds ~28 KB per open streaming connection (a bare ASGI app that only streams: 27 MB ->
    # 55 MB with 1,000 clients), before any EventFlow state.
    web_rss = e2e.web_rss_mb
    lost = e2e.missing + e2e.errors + e2e.unsent
    live_short = live.accepted < 0.95 * live.offered
    cells = [("steady load", "figure", "target", "")]
    cells += [
        (f"e2e POST -> handler p50, {e2e.rate_s:,.0f} events/s", f"{e2e.p50_ms:.2f} ms", f"< {E2E_P50_MS:g} ms",
         _verdict(e2e.p50_ms < E2E_P50_MS and not lost)),
        (f"e2e POST -> handler p99 ({e2e.measured:,} events, max {e2e.max_ms:.1f} ms)", f"{e2e.p99_ms:.2f} ms",
         f"< {E2E_P99_MS:g} ms", _verdict(e2e.p99_ms < E2E_P99_MS and not lost)),
        (f"live: {live.connected:,} SSE clients, p50 delivery", f"{live.p50_ms:.1f} ms", "", ""),
        (f"live: p99 delivery ({live.sampled_clients} sampled clients, max {live.max_ms:.0f} ms)",
         f"{live.p99_ms:.1f} ms", f"< {LIVE_P99_MS:g} ms",
         _verdict(live.p99_ms < LIVE_P99_MS and not live.missing and not live_short)),
        (f"live: events accepted while streaming ({live.rate_s:,.0f}/s offered)",
         f"{live.accepted:,} of {live.offered:,}", "all", _verdict(not live_short and not live.producer_errors)),
        (f"web process RSS, peak at steady load ({e2e.rate_s:,.0f} events/s)", _mb(web_rss),
         f"< {WEB_RSS_MB:g} MB", _verdict(web_rss is not None and web_rss < WEB_RSS_MB)),
        (f"web process RSS, peak with {live.connected:,} SSE clients streaming", _mb(live.web_rss_mb), "", ""),
        ("worker RSS, peak (latency run)", _mb(e2e.worker_rss_mb), f"< {WORKER_RSS_MB:g} MB",
         _verdict(e2e.worker_rss_mb is not None and e2e.worker_rss_mb < WORKER_RSS_MB)),
    ]
    notes = []
    if lost:
        notes.append(f"e2e: {e2e.missing} accepted events never reached the handler, {e2e.errors} POSTs failed, "
                     f"{e2e.unsent} never sent{f' (first error: {e2e.first_error})' if e2e.first_error else ''}")
    if live.missing or live.resets or live.producer_errors or live.producer_unsent:
        notes.append(f"live: {live.missing:,} (event, client) deliveries missing, {live.resets} resets, "
                     f"{live.producer_errors} POSTs unanswered and {live.producer_unsent:,} never sent "
                     f"while {live.connected:,} clients streamed ({live.received_mb:,.0f} MB read by clients)")
    return "\n".join([_grid(cells), *notes])


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def memory_table(results: Sequence[MemoryResult]) -> str:
    """Server memory per event, EventFlow vs plain XADD, one column per kind of event."""
    cells = [("server memory per event (bytes)", *(f"{r.kind} ({r.events:,})" for r in results))]
    cells += [("plain XADD of the same entries", *(_bytes(r.plain_bytes_per_event) for r in results)),
              ("EventFlow: log + indexes + id keys", *(_bytes(r.eventflow_bytes_per_event) for r in results)),
              ("  index cost (EventFlow - plain)", *(_bytes(r.index_bytes_per_event) for r in results))]
    cells += [(f"  EventFlow: {name}", *(_bytes(r.eventflow_by_key[name]) for r in results))
              for name in results[0].eventflow_by_key]
    return _grid(cells)


def _bytes(value: float) -> str:
    return f"{round(value):d}"  # never "-0"


def _grid(cells: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(_align(i, cell, w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _align(column: int, cell: str, width: int) -> str:
    """The first column reads as a label (left), the others as numbers (right)."""
    return cell.ljust(width) if column == 0 else cell.rjust(width)


def write_json(results: dict[str, Any], path: Path) -> Path:
    """Write `results` as indented JSON (dataclasses become objects, paths strings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(results, enc_hook=str), indent=2) + b"\n")
    return path
