"""The request bodies every app under test receives: one small order event, or a batch of them.

CloudEvents producers usually send their own `id`; EventFlow makes one when they do not. A body
built with `with_id=True` carries `ID_PLACEHOLDER`, which the load generators replace with a value
unique to each request (wrk in post.lua, the Python fallback in loadgen.py), so repeats never
collapse into idempotent duplicates.
"""

from __future__ import annotations

from typing import Any

import msgspec

EVENT_TYPE = "order.created"
SOURCE = "bench"  # the producer's name, hence the events' source
ID_PLACEHOLDER = "@ID@"
# The "schema" rows send the same events under a type with a registered JSON Schema (enforce mode).
CHECKED_TYPE = "order.checked"
CHECKED_SCHEMA = {
    "type": "object",
    "properties": {"order": {"type": "integer", "minimum": 0}, "amount": {"type": "number", "minimum": 0},
                   "currency": {"enum": ["EUR", "USD", "GBP"]}},
    "required": ["order", "amount", "currency"],
    "additionalProperties": False,
}


def event(n: int, event_id: str | None = None) -> dict[str, Any]:
    """A plain-JSON event as a producer would send it (EventFlow enriches time, source and the rest)."""
    body: dict[str, Any] = {"type": EVENT_TYPE, "data": {"order": n, "amount": 9.5, "currency": "EUR"}}
    if event_id is not None:
        body["id"] = event_id
    return body


def event_body(n: int, event_id: str | None = None) -> bytes:
    return msgspec.json.encode(event(n, event_id))


def single_body(*, with_id: bool = False) -> bytes:
    return event_body(1, ID_PLACEHOLDER if with_id else None)


def batch_body(size: int) -> bytes:
    """A JSON array of `size` events, accepted by both EventFlow's and the naive batch endpoint."""
    return msgspec.json.encode([event(n) for n in range(size)])


def checked(body: bytes) -> bytes:
    """The same body with every event of CHECKED_TYPE (its data matches CHECKED_SCHEMA)."""
    return body.replace(f'"type":"{EVENT_TYPE}"'.encode(), f'"type":"{CHECKED_TYPE}"'.encode())
