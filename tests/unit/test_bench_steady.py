"""The benchmark's steady-load pieces: percentiles, redis-benchmark's CSV, and the target verdicts."""

from __future__ import annotations

import dataclasses

from ops.bench.latency import LatencyResult
from ops.bench.limits import parse_csv
from ops.bench.live import LiveResult
from ops.bench.paced import Sent, percentiles_ms
from ops.bench.report import steady_table

E2E = LatencyResult(rate_s=2000, sent=8000, accepted=8000, measured=6000, missing=0, errors=0, unsent=0,
                    first_error="", producer_max_lag_ms=1.0, p50_ms=1.2, p99_ms=4.0, max_ms=9.0,
                    web_rss_mb=70.0, worker_rss_mb=40.0)
LIVE = LiveResult(clients=1000, connected=1000, rate_s=1000, offered=5000, accepted=5000, sampled_clients=50,
                  deliveries=250_000, missing=0, resets=0, p50_ms=20.0, p99_ms=60.0, max_ms=80.0, received_mb=500.0,
                  web_rss_mb=100.0, producer_errors=0, producer_unsent=0)


def verdicts(table: str) -> list[str]:
    last = [line.split()[-1] for line in table.splitlines()[2:] if line.split()]
    return [word for word in last if word in ("met", "MISSED")]


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    assert percentiles_ms([0.001 * n for n in range(1, 101)]) == (50.0, 99.0, 100.0)
    assert percentiles_ms([]) == (0.0, 0.0, 0.0)


def test_redis_benchmark_csv_is_read_from_the_end_of_its_unescaped_first_column() -> None:
    text = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",'
            '"max_latency_ms"\n"XADD k * data {"order":1,"amount":9.5}","85000.00","0.5","0.1","0.44","0.9",'
            '"1.69","3.0"\n')
    assert parse_csv(text) == (85000.0, 0.44, 1.69)


def test_a_producer_that_could_not_send_its_schedule_reports_the_shortfall() -> None:
    sent = Sent(planned=10, sent_at={n: 0.0 for n in range(4)})
    assert sent.unsent == 6


def test_every_steady_target_met_reads_met() -> None:
    assert verdicts(steady_table(E2E, LIVE)) == ["met"] * 6


def test_slow_delivery_lost_events_and_memory_over_target_read_missed() -> None:
    e2e = dataclasses.replace(E2E, missing=3, worker_rss_mb=90.0, web_rss_mb=130.0)
    live = dataclasses.replace(LIVE, accepted=400, p99_ms=700.0)
    table = steady_table(e2e, live)
    assert verdicts(table) == ["MISSED"] * 6
    assert "3 accepted events never reached the handler" in table


def test_the_memory_target_is_for_steady_load_and_the_live_streams_are_shown_beside_it() -> None:
    table = steady_table(E2E, dataclasses.replace(LIVE, web_rss_mb=170.0))
    assert verdicts(table) == ["met"] * 6
    steady = next(line for line in table.splitlines() if "RSS, peak at steady load" in line)
    streaming = next(line for line in table.splitlines() if "with 1,000 SSE clients streaming" in line)
    assert "70 MB" in steady and steady.split()[-1] == "met"
    assert "170 MB" in streaming and streaming.split()[-1] not in ("met", "MISSED")


def test_rounds_rotate_the_row_order_and_one_round_keeps_it() -> None:
    from ops.bench.ingest import SCENARIOS, round_order

    rows = list(SCENARIOS)
    assert round_order(rows, 0, 1) == rows
    orders = [round_order(rows, n, 3) for n in range(3)]
    assert all(sorted(s.name for s in order) == sorted(s.name for s in rows) for order in orders)
    assert len({order[0].name for order in orders}) == 3
    assert [order.index(rows[0]) for order in orders] == [0, len(rows) - len(rows) // 3, len(rows) - 2 * len(rows) // 3]
