"""Metrics: names and labels follow Prometheus conventions; bulk tallies equal one-by-one updates."""

from __future__ import annotations

import asyncio
import random
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from app.keys import Keys
from app.metrics import CountSlot, Metrics, RedisGauges, Snapshot, TimingSlot, serve, status_class

ALLOWED_LABELS = {"type", "source", "group", "outcome", "route", "method", "status", "reason", "status_class",
                  "partition"}


def families(registry: CollectorRegistry) -> dict[str, object]:
    return {m.name: m for m in registry.collect()}


def test_every_metric_is_named_with_the_prefix_and_its_unit() -> None:
    metrics = Metrics(CollectorRegistry())
    for metric in metrics.registry.collect():
        assert metric.name.startswith("eventflow_"), metric.name
        if metric.type == "histogram" and metric.name not in ("eventflow_append_flush_events",):
            assert metric.name.endswith("_seconds"), metric.name
    names = metrics.names()
    assert {"eventflow_events_ingested_total", "eventflow_events_rejected_total",
            "eventflow_idempotent_repeats_total", "eventflow_http_requests_total",
            "eventflow_http_request_duration_seconds_bucket", "eventflow_handler_duration_seconds_bucket",
            "eventflow_deliveries_total", "eventflow_retries_total", "eventflow_dead_letters_total",
            "eventflow_lost_entries_total", "eventflow_webhook_delivery_seconds_bucket", "eventflow_sse_clients",
            "eventflow_stream_length", "eventflow_group_lag", "eventflow_group_pending"} <= names


def test_labels_are_low_cardinality_names_never_ids_or_urls() -> None:
    metrics = Metrics(CollectorRegistry())
    for attr in vars(metrics).values():
        labelnames = getattr(attr, "_labelnames", None)
        if labelnames is not None:
            assert set(labelnames) <= ALLOWED_LABELS, (attr, labelnames)


@pytest.mark.parametrize("values", [[0.0], [0.00001, 0.3, 0.3, 7.0, 1e9], [random.random() for _ in range(500)]])
def test_a_timing_slot_adds_the_same_histogram_as_observe(values: list[float]) -> None:
    registry = CollectorRegistry()
    direct = Histogram("d_seconds", "d", ["g"], registry=registry, buckets=(0.001, 0.3, 1.0, 5.0))
    bulk = Histogram("b_seconds", "b", ["g"], registry=registry, buckets=(0.001, 0.3, 1.0, 5.0))
    many = Histogram("m_seconds", "m", ["g"], registry=registry, buckets=(0.001, 0.3, 1.0, 5.0))
    slot, batch_slot = TimingSlot(bulk.labels("x")), TimingSlot(many.labels("x"))
    for v in values:
        direct.labels("x").observe(v)
        slot.observe(v)
    batch_slot.observe_many(list(values))
    slot.flush()
    batch_slot.flush()
    got = {m.name: [(s.name.split("_", 1)[1], s.labels, s.value) for s in m.samples if "created" not in s.name]
           for m in registry.collect()}
    assert _same(got["b_seconds"], got["d_seconds"])
    assert _same(got["m_seconds"], got["d_seconds"])


def _same(a: list[tuple[str, dict[str, str], float]], b: list[tuple[str, dict[str, str], float]]) -> bool:
    assert [(n, lab) for n, lab, _ in a] == [(n, lab) for n, lab, _ in b]
    assert [v for *_, v in a] == pytest.approx([v for *_, v in b])
    return True


def test_a_count_slot_adds_its_tally_once_and_resets() -> None:
    metrics = Metrics(CollectorRegistry())
    slot = metrics.count(metrics.retries, "notify")
    assert metrics.count(metrics.retries, "notify") is slot  # shared per labelled child
    slot.add()
    slot.add(4)
    assert metrics.retries.labels("notify")._value.get() == 0  # nothing reaches the metric before a flush
    metrics.flush()
    metrics.flush()
    assert metrics.retries.labels("notify")._value.get() == 5
    assert isinstance(slot, CountSlot) and slot.n == 0


def test_touch_flushes_at_once_without_a_loop_and_within_a_second_with_one() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.count(metrics.retries, "a").add()
    metrics.touch()
    assert metrics.retries.labels("a")._value.get() == 1

    async def main() -> float:
        metrics.count(metrics.retries, "a").add()
        metrics.touch()
        metrics.touch()  # one flush scheduled, not two
        before = metrics.retries.labels("a")._value.get()
        await asyncio.sleep(1.1)
        return before

    assert asyncio.run(main()) == 1
    assert metrics.retries.labels("a")._value.get() == 2


def test_an_append_counts_new_events_and_repeats_per_producer() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.appended({"billing": 10, "shop": 3}, {"billing": 2}, 0.002, 13)
    metrics.flush()
    assert metrics.events_ingested.labels("billing")._value.get() == 8
    assert metrics.idempotent_repeats.labels("billing")._value.get() == 2
    assert metrics.events_ingested.labels("shop")._value.get() == 3
    text = generate_latest(metrics.registry).decode()
    assert 'eventflow_append_flush_events_bucket{le="25.0"} 1.0' in text


@pytest.mark.parametrize(("status", "error", "expected"), [
    (204, None, "2xx"), (302, "HTTP 302", "3xx"), (429, "HTTP 429", "4xx"), (503, "HTTP 503", "5xx"),
    (None, "timed out after 10 s", "timeout"), (None, "refused: private address", "refused"),
    (None, "ConnectError: boom", "error"),
])
def test_webhook_outcomes_map_to_a_few_status_classes(status: int | None, error: str | None, expected: str) -> None:
    assert status_class(status, error) == expected


def test_redis_gauges_export_the_snapshot_and_skip_unknown_lag() -> None:
    gauges = RedisGauges(redis=None, keys=Keys("t", 2))  # type: ignore[arg-type]
    assert [m.name for m in gauges.collect()] == ["eventflow_redis_up"]  # nothing read yet: only "down"
    snap = Snapshot()
    snap.up, snap.stream_length, snap.lag = 1, {0: 5, 1: 7}, {"audit": 3, "notify": None}
    snap.pending, snap.group_workers, snap.workers_alive = {"audit": 1, "notify": 0}, {"audit": 2, "notify": 0}, 2
    gauges.snapshot = snap
    registry = CollectorRegistry()
    registry.register(gauges)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'eventflow_stream_length{partition="1"} 7.0' in text
    assert 'eventflow_group_lag{group="audit"} 3.0' in text
    assert 'eventflow_group_lag{group="notify"}' not in text  # Redis could not tell: no made-up number
    assert 'eventflow_group_workers{group="notify"} 0.0' in text
    assert {m.name for m in gauges.collect()} == set(RedisGauges.NAMES)
    snap.memory = {"": (5, 10)}  # one server: unlabelled
    assert "eventflow_redis_used_memory_bytes 5.0" in generate_latest(registry).decode()
    snap.memory = {"10.0.0.1:6379": (5, 10), "10.0.0.2:6379": (7, 0)}  # a cluster: one per primary
    text = generate_latest(registry).decode()
    assert 'eventflow_redis_used_memory_bytes{node="10.0.0.2:6379"} 7.0' in text
    assert 'eventflow_redis_maxmemory_bytes{node="10.0.0.1:6379"} 10.0' in text


def test_the_internal_listener_serves_the_rendered_text_on_any_path() -> None:
    server = serve(0, lambda: b"eventflow_x 1\n")
    assert server is not None
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.read() == b"eventflow_x 1\n"
            assert response.headers["Content-Type"].startswith("text/plain")
    finally:
        server.shutdown()
        server.server_close()


def test_the_metrics_the_issue_names_carry_their_labels() -> None:
    # Dashboards, alert rules and users' queries select on these labels: renaming one is a break.
    labels = {family.name: set() for family in Metrics(CollectorRegistry()).registry.collect()}
    for attr in vars(Metrics(CollectorRegistry())).values():
        name, labelnames = getattr(attr, "_name", None), getattr(attr, "_labelnames", None)
        if name in labels and labelnames is not None:
            labels[name] = set(labelnames)
    assert labels["eventflow_events_ingested"] == {"source"}
    assert labels["eventflow_events_rejected"] == {"reason"}
    assert labels["eventflow_idempotent_repeats"] == {"source"}
    assert labels["eventflow_http_requests"] == {"route", "method", "status"}
    assert labels["eventflow_http_request_duration_seconds"] >= {"route"}
    assert labels["eventflow_handler_duration_seconds"] == {"group"}
    assert labels["eventflow_deliveries"] == {"group", "outcome"}
    assert labels["eventflow_retries"] == labels["eventflow_lost_entries"] == {"group"}
    assert labels["eventflow_dead_letters"] >= {"group"}
    assert labels["eventflow_webhook_delivery_seconds"] == {"status_class"}
