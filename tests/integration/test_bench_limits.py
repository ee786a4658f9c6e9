"""The benchmark's append-script ceiling row: it runs EventFlow's real append script on a real server,
appends what the batch row appends, cleans up after itself, and is compared with the batch row only."""

from __future__ import annotations

import dataclasses

import msgspec
from redis.asyncio import Redis

from app.embedded import EmbeddedServer
from app.events import Record
from app.keys import Keys
from ops.bench import limits
from ops.bench.ingest import _ratios
from ops.bench.loadgen import LoadResult
from ops.bench.report import Row


async def test_the_script_row_appends_real_events_and_leaves_no_keys(own_server: EmbeddedServer) -> None:
    row = await limits._script_loop(own_server.url, 1_000, timeout_s=10.0)

    redis = Redis.from_url(own_server.url)
    try:
        stream = Keys(limits.SCRIPT_PREFIX).stream(0)
        appended = await redis.xlen(stream)
        assert row.events_s and row.events_s > 0 and row.batch_only
        assert 1_000 <= appended <= 1_000 + limits.SCRIPT_CLIENTS * limits.LOOP_BATCH  # each client's last call
        assert row.note == f"{appended:,} events"
        for entry_id, fields in await redis.xrange(stream, count=5):
            record = Record.from_entry(entry_id.decode(), 0, fields)
            assert not record.direct and not record.problems
            assert record.event["type"] == "order.created"
            assert msgspec.json.decode(record.event["data"])["currency"] == "EUR"
        await limits._delete(own_server.url)
        assert await redis.keys("*") == []
    finally:
        await redis.aclose()


def _row(name: str, events_s: float, per_request: int) -> Row:
    result = LoadResult(tool="wrk", requests=1, duration_s=1.0, requests_s=events_s / per_request, p50_ms=1.0,
                        p99_ms=2.0, errors=0)
    return Row(name=name, app=name.split("-")[0], events_per_request=per_request, connections=64, profiled=False,
               other_cpu_pct=0.0, core_pct={}, result=result)


def test_the_script_ceiling_is_set_against_the_batch_row_only() -> None:
    rows = [_row("eventflow-single", 7_000, 1), _row("eventflow-batch", 50_000, 100)]
    xadd = limits.Limit(name="redis-benchmark XADD", events_s=100_000)
    script = dataclasses.replace(xadd, name=limits.SCRIPT_NAME, events_s=80_000, batch_only=True)
    skipped = limits.Limit(name="skipped tool", events_s=None)

    ratios, _ = _ratios(rows, [xadd, script, skipped])
    against = {(r.scenario, r.baseline): round(r.ratio, 3) for r in ratios if r.target is None}

    assert against == {("eventflow-single", "redis-benchmark XADD"): 0.07,
                       ("eventflow-batch", "redis-benchmark XADD"): 0.5,
                       ("eventflow-batch", limits.SCRIPT_NAME): 0.625}
