"""Identifiers: event ids made by the append script, stream entry ids, W3C trace context."""

from __future__ import annotations

import os
import re

# Both matched whole (fullmatch): `$` also matches before a final newline, and a traceparent or
# entry id ending in one was taken (stored with the newline; refused by Redis with an error). Entry
# ids take ASCII digits only: `\d` takes any Unicode digit.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def made_entry(event_id: str) -> tuple[int, str] | None:
    """(partition, entry id) encoded in an event id that the append script made, if it is one.

    Layout (see app/lua/append.lua): ms (48 bits) | 7 | seq low 12 bits | 10 + seq high 14 bits |
    partition (16 bits) | salt (32 bits). The caller must check the entry's id field: a producer's
    own UUIDv7 decodes too, to an entry that does not carry it."""
    if len(event_id) != 36 or event_id[14] != "7":
        return None
    try:
        h = event_id.replace("-", "")
        int(h, 16)  # all of it must be hex
        ms, seq_lo, seq_hi = int(h[:12], 16), int(h[13:16], 16), int(h[16:20], 16) & 0x3FFF
        return int(h[20:24], 16), f"{ms}-{(seq_hi << 12) | seq_lo}"
    except ValueError:
        return None


def new_traceparent() -> str:
    """Start a new sampled trace: version 00, random trace id and parent span id."""
    ids = os.urandom(24).hex()
    return f"00-{ids[:32]}-{ids[32:]}-01"


def new_span_id() -> str:
    return os.urandom(8).hex()


def valid_traceparent(value: str) -> bool:
    """True for a well-formed W3C traceparent (all-zero ids and version ff are invalid)."""
    m = _TRACEPARENT.fullmatch(value)
    if m is None or value.startswith("ff"):
        return False
    return m.group(1) != "0" * 32 and m.group(2) != "0" * 16


def trace_id(traceparent: str) -> str:
    return traceparent[3:35]


def is_entry_id(value: str) -> bool:
    """True when `value` is a stream entry id Redis accepts: `<ms>-<seq>`, each part below 2^64
    (a larger one passes the pattern and makes Redis answer an error)."""
    return _ENTRY_ID.fullmatch(value) is not None and all(int(part) < _TWO_64 for part in value.split("-"))


_TWO_64 = 2**64


def entry_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as (ms, seq), to compare ids in log order (text comparison is not that)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
