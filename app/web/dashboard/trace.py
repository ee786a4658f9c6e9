"""The event page's Trace card: the W3C trace an event belongs to (its `traceparent`) and the span of
every recorded delivery attempt, each a child of the span that stored the event.

Attempt records, and so their span ids, are kept only for events that failed somewhere at least once
(app/lifecycle.py): a delivery that succeeded at its first attempt shows as "not recorded". Its span
still reaches the tracing backend when OpenTelemetry export is on.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from app.service import EventDetail
from app.tracing import parse


class AttemptSpan(NamedTuple):
    span_id: str
    group: str
    attempt: int
    outcome: str
    consumer: str
    at_ms: int
    duration_ms: float | None


class Trace(msgspec.Struct, kw_only=True):
    trace_id: str
    parent_span_id: str  # the ingest span (or the producer's span): every attempt's parent
    sampled: bool
    spans: list[AttemptSpan]
    unrecorded: list[str]  # groups whose first attempt succeeded: no attempt record, no span id here


def trace_of(detail: EventDetail) -> Trace | None:
    """The event's trace; None when the entry carries no valid traceparent (a malformed direct write)."""
    context = parse(str(detail.event.get("traceparent") or ""))
    if context is None:
        return None
    spans = [AttemptSpan(a.span_id, d.group, a.attempt, a.outcome, a.consumer, a.at_ms, a.duration_ms)
             for d in detail.deliveries for a in d.attempts if a.span_id]
    traced = {s.group for s in spans}
    unrecorded = [d.group for d in detail.deliveries if d.state == "succeeded" and d.group not in traced]
    return Trace(trace_id=context.trace_id, parent_span_id=context.span_id, sampled=context.sampled, spans=spans,
                 unrecorded=unrecorded)
