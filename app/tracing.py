"""Event traces: W3C `traceparent` helpers, and optional OpenTelemetry export.

Every event carries a traceparent (the producer's, or one started at ingest). Each delivery attempt
gets its own span id under it (consumers/base.py `Delivery.span_id`), which logs and attempt records
carry. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set and the `otel` extra is installed, the web process
exports one span per ingest request and the workers one span per delivery attempt, over OTLP/HTTP.
Without it nothing is imported and the hot paths pay one `is None` check.

Spans are built after the fact from what the runner measured (`ReadableSpan` handed to a batch
processor), rather than through the SDK's tracer and context machinery: the span ids must be the
ones already stored with the attempt, and no context needs to flow through handler code.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

from app import __version__
from app.errors import message_of
from app.ids import new_span_id, new_traceparent, valid_traceparent
from app.settings import Settings

log = logging.getLogger("eventflow.tracing")


class TraceContext(NamedTuple):
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits: the parent of whatever continues this context
    sampled: bool


def parse(traceparent: str | None) -> TraceContext | None:
    """The parts of a valid W3C traceparent, None otherwise."""
    if not traceparent or not valid_traceparent(traceparent):
        return None
    return TraceContext(traceparent[3:35], traceparent[36:52], int(traceparent[53:55], 16) & 1 == 1)


def child(traceparent: str, span_id: str) -> str:
    """The same trace continued by span `span_id` (what a callee sees as its parent)."""
    return f"{traceparent[:36]}{span_id}{traceparent[52:]}"


def trace_id_of(traceparent: str | None) -> str | None:
    ctx = parse(traceparent)
    return ctx.trace_id if ctx else None


class IngestSpan(NamedTuple):
    traceparent: str  # what the request's events carry: the ingest span is their parent
    parent: TraceContext | None  # the producer's span, when the request had a traceparent
    start_ns: int


class Tracer:
    """Builds and exports spans (OTLP/HTTP, batched in a background thread by the SDK)."""

    def __init__(self, endpoint: str, service: str, *, exporter: Any = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # The OTLP spec: a base endpoint gets /v1/traces appended for traces.
            exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        self.processor = BatchSpanProcessor(exporter)
        self.resource = Resource.create({"service.name": service, "service.version": __version__})
        self.scope = InstrumentationScope("eventflow", __version__)

    # -- ingest (web) ---------------------------------------------------------------------------
    def start_ingest(self, traceparent: str | None) -> IngestSpan:
        """Start the span of one ingest request, under the producer's traceparent when it sent one."""
        parent = parse(traceparent)
        mine = child(traceparent, new_span_id()) if parent and traceparent else new_traceparent()
        return IngestSpan(mine, parent, time.time_ns())

    def end_ingest(self, span: IngestSpan, source: str, events: int, error: BaseException | None = None) -> None:
        ctx = parse(span.traceparent)
        assert ctx is not None
        attributes = {"eventflow.source": source, "eventflow.events": events, "messaging.system": "eventflow",
                      "messaging.operation.type": "publish"}
        self._export("ingest", ctx, span.parent, span.start_ns, time.time_ns(), attributes, "PRODUCER", error)

    # -- deliveries (workers) -------------------------------------------------------------------
    def delivery(self, delivery: Any, elapsed_s: float, error: BaseException | None) -> None:
        """Export one delivery attempt as a span under the event's traceparent."""
        parent = parse(str(delivery.event.get("traceparent", "")))
        if parent is None:
            return
        end = time.time_ns()
        ctx = TraceContext(parent.trace_id, delivery.span_id, parent.sampled)
        attributes = {
            "messaging.system": "eventflow", "messaging.operation.type": "process",
            "messaging.consumer.group.name": delivery.group, "messaging.message.id": delivery.id,
            "cloudevents.event_id": delivery.id, "cloudevents.event_type": delivery.type,
            "cloudevents.event_source": str(delivery.event.get("source", "")),
            "eventflow.entry_id": delivery.entry_id, "eventflow.partition": delivery.partition,
            "eventflow.attempt": delivery.attempt, "eventflow.replay": delivery.replay,
        }
        self._export(f"deliver {delivery.group}", ctx, parent, end - int(elapsed_s * 1e9), end, attributes,
                     "CONSUMER", error)

    def _export(self, name: str, ctx: TraceContext, parent: TraceContext | None, start_ns: int, end_ns: int,
                attributes: dict[str, Any], kind: str, error: BaseException | None) -> None:
        if not ctx.sampled:
            return  # the producer decided not to record this trace
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        def context(c: TraceContext, remote: bool) -> SpanContext:
            return SpanContext(int(c.trace_id, 16), int(c.span_id, 16), is_remote=remote,
                               trace_flags=TraceFlags(TraceFlags.SAMPLED if c.sampled else 0))

        status = Status(StatusCode.UNSET)
        if error is not None:
            message = message_of(error)
            attributes = {**attributes, "exception.type": type(error).__name__, "exception.message": message[:500]}
            status = Status(StatusCode.ERROR, f"{type(error).__name__}: {message}"[:500])
        span = ReadableSpan(
            name, context(ctx, False), context(parent, True) if parent else None, self.resource, attributes,
            kind=SpanKind[kind], status=status, start_time=start_ns, end_time=end_ns,
            instrumentation_scope=self.scope,
        )
        self.processor.on_end(span)

    def flush(self, timeout_s: float = 5.0) -> None:
        self.processor.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self.processor.shutdown()


def from_settings(settings: Settings, service: str) -> Tracer | None:
    """A tracer when OTEL_EXPORTER_OTLP_ENDPOINT is set and the `otel` extra is installed, else None."""
    if not settings.otel_endpoint:
        return None
    try:
        tracer = Tracer(settings.otel_endpoint, service)
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
                    "(pip install 'eventflow[otel]'); spans are not exported")
        return None
    log.info("exporting spans to %s", settings.otel_endpoint)
    return tracer
