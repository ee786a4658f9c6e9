"""Observability against the real server: /metrics (token, internal port, several granian workers),
worker metrics, error groups, the trace of one event through two consumers, and logs without secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.logs import JsonFormatter, Redactor, secret_values
from app.metrics import FLUSH_S, default_metrics
from app.service import Services
from app.settings import Settings
from app.tracing import Tracer
from app.web import create_app
from consumers.base import Consumer, Delivery
from consumers.runner import Observers, Runner
from tests.conftest import running
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

TOKEN = "metrics-token-0123456789"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextlib.asynccontextmanager
async def app_client(settings: Settings, **changes: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(settings.replace(**changes))
    transport = httpx.ASGITransport(app=app)
    async with running(app), httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield app, client



# -- /metrics on the API port and the internal port ----------------------------------------------------
async def test_metrics_need_the_token_and_count_ingest_by_producer_reason_and_route(
    settings: Settings, new_producer: Callable[[str], Awaitable[dict[str, str]]]
) -> None:
    source = f"obs-{uuid.uuid4().hex[:8]}"
    auth = await new_producer(source)
    async with app_client(settings, metrics_token=TOKEN) as (_, client):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        before = (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
        for n in range(5):
            await client.post("/v1/events", headers=auth, json={"type": "t.one", "id": f"e{n}", "data": {}})
        await client.post("/v1/events", headers=auth, json={"type": "t.one", "id": "e0", "data": {}})  # a repeat
        await client.post("/v1/events/batch", headers=auth, json=[{"type": "t.b", "data": {}}] * 3)
        await client.post("/v1/events", headers=auth, json={"data": {}})  # no type: 422
        await client.post("/v1/events", json={"type": "t"})  # no key: 401
        await asyncio.sleep(1.05)  # the Redis-derived gauges are read at most once a second
        resp = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert sample(text, "eventflow_events_ingested_total", source=source) == 8
    assert sample(text, "eventflow_idempotent_repeats_total", source=source) == 1

    def delta(name: str, **labels: str) -> float:
        return sample(text, name, **labels) - sample(before, name, **labels)

    assert delta("eventflow_events_rejected_total", reason="invalid-event") == 1
    assert delta("eventflow_events_rejected_total", reason="unauthorized") == 1
    assert delta("eventflow_http_requests_total", route="/v1/events", method="POST", status="202") == 6
    assert delta("eventflow_http_requests_total", route="/v1/events/batch", method="POST", status="202") == 1
    assert delta("eventflow_http_request_duration_seconds_count", route="/v1/events", method="POST") == 8
    assert sample(text, "eventflow_redis_up") == 1
    assert sample(text, "eventflow_redis_used_memory_bytes") > 0  # on a cluster: one per primary (`node`)
    # Events of one source and no subject share a partition.
    assert sum(sample(text, "eventflow_stream_length", partition=str(p)) for p in range(settings.partitions)) == 8
    assert "eventflow_append_flush_seconds_bucket" in text
    assert source not in "".join(line for line in text.splitlines() if "event_id" in line)  # no ids as labels


async def test_metrics_are_not_served_on_the_api_port_without_a_token(settings: Settings) -> None:
    async with app_client(settings) as (_, client):
        assert (await client.get("/metrics")).status_code == 404
        before = sample((await client.get("/metrics")).text, "x")  # a 404 body, not metrics
        assert before == 0
        assert (await client.get("/nowhere")).status_code == 404
    text = await asyncio.to_thread(_render_default)
    assert sample(text, "eventflow_http_requests_total", route="unmatched", method="GET", status="404") >= 1


def _render_default() -> str:
    from prometheus_client import REGISTRY, generate_latest

    default_metrics().flush()
    return generate_latest(REGISTRY).decode()


async def test_the_internal_port_serves_metrics_without_a_token_and_reads_redis_on_the_loop(
    settings: Settings, services: Services, redis: Redis
) -> None:
    port = free_port()
    await redis.xgroup_create(services.log.keys.stream(0), "obs-group", id="0", mkstream=True)
    async with app_client(settings, metrics_port=port) as (_, client):
        await client.post("/v1/events", json={"type": "t"})  # any request

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return str(response.read().decode())

        text = await asyncio.to_thread(scrape)  # the loop stays free to do the Redis reads
    assert sample(text, "eventflow_redis_up") == 1
    assert sample(text, "eventflow_group_pending", group="obs-group") == 0
    assert sample(text, "eventflow_group_workers", group="obs-group") == 0
    assert sample(text, "eventflow_workers_alive") == 0
    assert "eventflow_http_requests_total" in text


async def test_redis_down_is_a_gauge_not_a_failed_scrape(settings: Settings) -> None:
    dead = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.3,
                            metrics_token=TOKEN)
    async with app_client(dead) as (_, client):
        resp = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200
    assert sample(resp.text, "eventflow_redis_up") == 0


# -- several granian workers ----------------------------------------------------------------------------
@pytest.fixture
def granian_two_workers(settings: Settings, tmp_path: Path) -> Iterator[tuple[int, int]]:
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix,
           "EVENTFLOW_WEB_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
           "EVENTFLOW_METRICS_PORT": str(metrics_port), "EVENTFLOW_LOG_LEVEL": "WARNING"}
    from app.devstack import _bin, web_command

    cmd = web_command("127.0.0.1", port, 2)
    # Its own process group, so no granian worker outlives the test when the parent has to be killed.
    proc = subprocess.Popen([_bin(cmd[0]), *cmd[1:]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                time.sleep(0.1)
        yield port, metrics_port
    finally:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_several_granian_workers_report_one_total(granian_two_workers: tuple[int, int]) -> None:
    port, metrics_port = granian_two_workers
    n = 200

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def healthz_count() -> float:
        return sample(scrape(), "eventflow_http_requests_total", route="/healthz", method="GET", status="200")

    # The fixture's readiness probes reach the shared files up to FLUSH_S later: start counting from
    # a total that stayed put for longer than that.
    before, deadline = await asyncio.to_thread(healthz_count), time.monotonic() + 15
    while time.monotonic() < deadline:
        await asyncio.sleep(FLUSH_S + 0.3)
        now = await asyncio.to_thread(healthz_count)
        if now == before:
            break
        before = now
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_connections=20)) as c:
        results = await asyncio.gather(*(c.get("/healthz") for _ in range(n)))
    assert all(r.status_code == 200 for r in results)
    # Each worker adds its tallies to the shared files within about a second (longer on a busy box).
    deadline = time.monotonic() + 15
    while await asyncio.to_thread(healthz_count) - before < n and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    totals = {await asyncio.to_thread(healthz_count) - before for _ in range(6)}  # whichever worker answers
    assert totals == {n}


# -- workers: metrics, error groups, traces, logs -------------------------------------------------------
class ListExporter:
    """A span exporter that keeps what it is given (the OTLP one is tested below)."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


async def test_one_event_traced_through_two_consumers_with_metrics_errors_and_logs(
    settings: Settings, redis: Redis, new_producer: Callable[[str], Awaitable[dict[str, str]]],
    log_lines: io.StringIO,
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    exporter = ListExporter()
    tracer = Tracer("http://unused", "eventflow-test", exporter=exporter)
    auth = await new_producer(f"obs-{uuid.uuid4().hex[:8]}")
    # Group names of this run only: the process-wide counters also hold other runs of this test.
    tag = uuid.uuid4().hex[:6]
    audit_x, flaky_x = f"audit-{tag}", f"flaky-{tag}"
    seen: dict[str, list[Delivery]] = {audit_x: [], flaky_x: []}

    async def record(delivery: Delivery) -> None:
        seen[audit_x].append(delivery)

    async def flaky(delivery: Delivery) -> None:
        seen[flaky_x].append(delivery)
        if delivery.attempt == 1:
            raise ConnectionResetError(f"peer 10.0.0.{delivery.attempt} reset while sending '{delivery.id}'")

    from consumers.base import Backoff

    consumers = [Consumer(audit_x, record),
                 Consumer(flaky_x, flaky, backoff=Backoff(base_s=0.05, jitter=0.0))]
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with running(app), httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        app.state.services.tracer = tracer
        observers = Observers(default_metrics(), app.state.services.errors, tracer)
        runner = Runner(consumers, redis, settings, "obs-w1", observers)
        task = asyncio.create_task(runner.run())
        try:
            resp = await client.post("/v1/events", headers={**auth, "traceparent": f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"},
                                     json={"type": "order.created", "data": {"n": 1}})
            event_id = resp.json()["id"]

            async def delivered() -> bool:
                return len(seen[audit_x]) == 1 and len(seen[flaky_x]) == 2

            await wait_for(delivered)
            await asyncio.sleep(0.1)
        finally:
            runner.stop.set()
            await asyncio.wait_for(task, 10)
        operator = {"Authorization": "Bearer op-token-123456"}
        app.state.settings = app.state.settings.replace(api_token="op-token-123456")
        app.state.services.settings = app.state.settings
        errors = (await client.get(f"/v1/errors?consumer={flaky_x}", headers=operator)).json()["errors"]
        detail = (await client.get(f"/v1/events/{event_id}", headers=operator)).json()
    tracer.flush()

    # The trace: the producer's span -> the ingest span -> one span per delivery attempt.
    spans = {(s.name, s.context.span_id): s for s in exporter.spans}
    ingest = [s for (name, _), s in spans.items() if name == "ingest"]
    assert len(ingest) == 1
    assert f"{ingest[0].context.trace_id:032x}" == TRACE_ID
    assert f"{ingest[0].parent.span_id:016x}" == PRODUCER_SPAN
    deliveries = sorted((s for (name, _), s in spans.items() if name.startswith("deliver ")),
                        key=lambda s: (s.name, s.start_time))
    assert [(s.name, s.attributes["eventflow.attempt"]) for s in deliveries] == [
        (f"deliver {audit_x}", 1), (f"deliver {flaky_x}", 1), (f"deliver {flaky_x}", 2)]
    for span in deliveries:
        assert f"{span.context.trace_id:032x}" == TRACE_ID
        assert span.parent.span_id == ingest[0].context.span_id
        assert span.attributes["cloudevents.event_id"] == event_id
    assert {f"{s.context.span_id:016x}" for s in deliveries} == {d.span_id for ds in seen.values() for d in ds}
    assert not deliveries[1].status.is_ok and deliveries[2].status.is_ok
    # The attempt records carry the same span ids (shown on the event page).
    flaky_state = next(g for g in detail["deliveries"] if g["group"] == flaky_x)
    assert [a["span_id"] for a in flaky_state["attempts"]] == [seen[flaky_x][0].span_id, seen[flaky_x][1].span_id]

    # Error monitoring: one group, the message normalized, the event id sampled.
    assert len(errors) == 1
    group = errors[0]
    assert (group["consumer"], group["error_type"], group["count"]) == (flaky_x, "ConnectionResetError", 1)
    assert group["message"] == "peer <ip> reset while sending '?'"
    assert group["sample_event_ids"] == [event_id]

    # The failed attempt's log line carries the event's context.
    records = [json.loads(line) for line in log_lines.getvalue().splitlines() if line.startswith("{")]
    failed = [r for r in records if r["msg"].startswith("delivery failed")]
    assert failed and failed[0]["event_id"] == event_id and failed[0]["group"] == flaky_x
    assert failed[0]["attempt"] == 1 and failed[0]["trace_id"] == TRACE_ID
    assert failed[0]["span_id"] == seen[flaky_x][0].span_id and failed[0]["event_type"] == "order.created"

    # Worker metrics.
    text = await asyncio.to_thread(_render_default)
    assert sample(text, "eventflow_deliveries_total", group=flaky_x, outcome="failed") == 1
    assert sample(text, "eventflow_deliveries_total", group=flaky_x, outcome="succeeded") == 1
    assert sample(text, "eventflow_deliveries_total", group=audit_x, outcome="succeeded") == 1
    assert sample(text, "eventflow_retries_total", group=flaky_x) == 1
    assert sample(text, "eventflow_handler_duration_seconds_count", group=flaky_x) == 2


async def test_worker_heartbeats_show_up_as_live_workers_per_group(
    settings: Settings, redis: Redis
) -> None:
    async def noop(delivery: Delivery) -> None:
        pass

    runner = Runner([Consumer("hb-a", noop), Consumer("hb-b", noop)], redis, settings, "hb-w1")
    task = asyncio.create_task(runner.run())
    try:
        async with app_client(settings, metrics_token=TOKEN) as (_, client):
            async def counted() -> bool:
                text = (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
                return sample(text, "eventflow_workers_alive") == 1 and \
                    sample(text, "eventflow_group_workers", group="hb-b") == 1

            await wait_for(counted, 5)
    finally:
        runner.stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_worker_process_serves_its_metrics_on_its_port(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix,
           "EVENTFLOW_WORKER_METRICS_PORT": str(port), "EVENTFLOW_CONSUMER_ID": "metrics-w1",
           # Shared with the web (a Procfile runner): the worker must still keep its values to itself.
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "consume", "--module",
                             "tests.integration.sample_consumers"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def scrape() -> str:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                        return str(response.read().decode())
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.1)

        text = await asyncio.to_thread(scrape)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert "process_resident_memory_bytes" in text  # an in-memory registry: this process's own numbers
    assert "eventflow_deliveries_total" in text
    assert list(tmp_path.iterdir()) == []  # nothing written to the web's multiprocess folder


# -- OTLP export and Sentry, over real HTTP to a local stand-in -----------------------------------------
class Collector:
    """A tiny HTTP server on loopback that keeps every POST body."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies = self.bodies = []  # type: list[tuple[str, bytes]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                bodies.append((self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_spans_are_exported_over_otlp_http_when_the_endpoint_is_set() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from app.tracing import from_settings

    collector = Collector()
    try:
        tracer = from_settings(Settings(otel_endpoint=f"http://127.0.0.1:{collector.port}"), "eventflow-test")
        assert tracer is not None
        span = tracer.start_ingest(f"00-{TRACE_ID}-{PRODUCER_SPAN}-01")
        tracer.end_ingest(span, "billing", 3)
        tracer.flush()
        tracer.shutdown()
    finally:
        collector.close()
    assert [path for path, _ in collector.bodies] == ["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(collector.bodies[0][1])
    exported = request.resource_spans[0].scope_spans[0].spans[0]
    assert exported.name == "ingest" and exported.trace_id.hex() == TRACE_ID
    assert exported.parent_span_id.hex() == PRODUCER_SPAN
    assert exported.span_id.hex() == span.traceparent[36:52]


def test_error_groups_are_reported_to_sentry_when_a_dsn_is_set() -> None:
    pytest.importorskip("sentry_sdk")
    collector = Collector()
    script = f"""
from app.errortrack import ErrorTracker, reporter_from_settings
from app.settings import Settings
settings = Settings(sentry_dsn="http://publickey@127.0.0.1:{collector.port}/42")
tracker = ErrorTracker(None, settings, reporter=reporter_from_settings(settings))
for n in range(3):  # one group: reported once (rate-limited per group)
    try:
        raise TimeoutError(f"webhook 9{{n}} timed out")
    except TimeoutError as exc:
        tracker.note("notify", "TimeoutError", str(exc), f"ev-{{n}}", exc=exc)
tracker.reporter.flush()
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[2])
    finally:
        collector.close()
    assert done.returncode == 0, done.stderr
    envelopes = [body for path, body in collector.bodies if path.startswith("/api/42/envelope")]
    assert len(envelopes) == 1
    payload = (gzip.decompress(envelopes[0]) if envelopes[0][:2] == b"\x1f\x8b" else envelopes[0]).decode()
    assert "TimeoutError" in payload and '"consumer":"notify"' in payload.replace(" ", "")
    assert "webhook <n> timed out" in payload  # the fingerprint is the normalized group


# -- logs never carry secrets ---------------------------------------------------------------------------
async def test_request_logs_carry_route_status_and_trace_but_never_a_secret(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    canaries = {"api": "canary-api-token-7f3a9c", "metrics": "canary-metrics-token-51be", "query": "canary-query-88d1",
                "body": "canary-body-password-2c4e", "key": "efk_canaryProducerKey0123456789"}
    config = settings.replace(api_token=canaries["api"], metrics_token=canaries["metrics"], access_log="all")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(Redactor(secret_values(config))))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        async with app_client(config) as (app, client):
            svc = app.state.services

            async def boom(*args: Any) -> Any:
                raise RuntimeError(f"failed with token={canaries['metrics']} at redis://:{canaries['body']}@db:6379 "
                                   f"for Bearer {canaries['api']}")

            monkeypatch.setattr(svc, "query", boom)
            await client.get(f"/v1/events?token={canaries['query']}",
                             headers={"Authorization": f"Bearer {canaries['api']}",
                                      "traceparent": f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"})
            await client.post("/v1/events", headers={"Authorization": f"Bearer {canaries['key']}"},
                              json={"type": "t", "data": {"password": canaries["body"]}})
            await client.get("/metrics", headers={"Authorization": f"Bearer {canaries['metrics']}"})
            await client.get("/healthz")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    output = stream.getvalue()
    for name, canary in canaries.items():
        assert canary not in output, name
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    requests = {(r.get("route"), r.get("status")): r for r in lines if r["logger"] == "eventflow.http"}
    failed = requests[("/v1/events", 500)]
    assert failed["level"] == "error" and failed["trace_id"] == TRACE_ID and failed["path"] == "/v1/events"
    assert requests[("/v1/events", 401)]["http_method"] == "POST"
    assert requests[("/healthz", 200)]["duration_ms"] >= 0
    assert any(r["msg"].startswith("unhandled error") and "***" in r.get("exc", "") for r in lines)
