"""Identifiers: UUIDv7 event ids, W3C traceparent, stream entry ids."""

from __future__ import annotations

import time
import uuid

import pytest

from app.ids import entry_ms, is_entry_id, new_span_id, new_traceparent, trace_id, uuid7, valid_traceparent


def test_uuid7_is_an_rfc_9562_version_7_uuid() -> None:
    value = uuid.UUID(uuid7())
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_uuid7_carries_the_current_unix_time_in_ms() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(uuid7())
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


def test_uuid7_values_are_unique() -> None:
    assert len({uuid7() for _ in range(10_000)}) == 10_000


def test_uuid7_sorts_by_creation_time_across_milliseconds() -> None:
    ids = []
    for _ in range(5):
        ids.append(uuid7())
        time.sleep(0.002)
    assert sorted(ids) == ids


def test_uuid7_is_the_canonical_lowercase_string() -> None:
    value = uuid7()
    assert value == str(uuid.UUID(value))


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
    ],
)
def test_malformed_traceparents_are_invalid(value: str) -> None:
    assert not valid_traceparent(value)


def test_trace_id_is_the_second_field() -> None:
    assert trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(("value", "expected"), [("1700000000000-0", True), ("1-12", True), ("17-", False),
                                                 ("abc-1", False), ("0190a3f0-7c1e", False), ("12", False)])
def test_entry_ids_are_recognised(value: str, expected: bool) -> None:
    assert is_entry_id(value) is expected


def test_entry_ms_is_the_time_part() -> None:
    assert entry_ms("1700000000123-7") == 1_700_000_000_123
