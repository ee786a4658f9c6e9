"""Identifiers: UUIDv7 event ids, W3C traceparent, stream entry ids."""

from __future__ import annotations

import uuid

import pytest

from app.ids import entry_ms, is_entry_id, made_entry, new_span_id, new_traceparent, trace_id, valid_traceparent


def made(ms: int, seq: int, partition: int, salt: int = 0xDEADBEEF) -> str:
    """An event id laid out the way app/lua/append.lua makes them."""
    h = f"{ms:012x}7{seq % 4096:03x}{0x8000 | (seq >> 12) & 0x3FFF:04x}{partition:04x}{salt:08x}"
    return str(uuid.UUID(h))


@pytest.mark.parametrize(("ms", "seq", "partition"), [(1795706608611, 0, 0), (1795706608611, 4095, 3),
                                                       (1795706608612, 4096, 15), (1, 70_000, 65535)])
def test_made_entry_decodes_the_entry_a_made_event_id_encodes(ms: int, seq: int, partition: int) -> None:
    value = made(ms, seq, partition)
    assert uuid.UUID(value).version == 7
    assert uuid.UUID(value).variant == uuid.RFC_4122
    assert made_entry(value) == (partition, f"{ms}-{seq}")


@pytest.mark.parametrize("value", ["", "order-1", "1795706608611-0", str(uuid.uuid4()),
                                   "01a21874-5be2-79eb-8894-d0ac920b9b2z"])
def test_made_entry_ignores_what_is_not_a_version_7_uuid(value: str) -> None:
    assert made_entry(value) is None


def test_new_traceparent_is_valid_sampled_and_fresh() -> None:
    first, second = new_traceparent(), new_traceparent()
    assert valid_traceparent(first)
    assert first.startswith("00-")
    assert first.endswith("-01")
    assert trace_id(first) != trace_id(second)
    assert len(trace_id(first)) == 32


def test_span_ids_are_16_hex_digits() -> None:
    span = new_span_id()
    assert len(span) == 16
    int(span, 16)


def test_a_well_formed_traceparent_is_valid() -> None:
    assert valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert valid_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
    ],
)
def test_malformed_traceparents_are_invalid(value: str) -> None:
    assert not valid_traceparent(value)


def test_trace_id_is_the_second_field() -> None:
    assert trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(("value", "expected"), [("1700000000000-0", True), ("1-12", True), ("17-", False),
                                                 ("abc-1", False), ("0190a3f0-7c1e", False), ("12", False),
                                                 ("\u0661-0", False), ("1-\u00b2", False), ("1-0\n", False)])
def test_entry_ids_are_recognised(value: str, expected: bool) -> None:
    assert is_entry_id(value) is expected


def test_entry_ms_is_the_time_part() -> None:
    assert entry_ms("1700000000123-7") == 1_700_000_000_123
