"""Enrichment into the log format, and reading log entries back (ours and direct XADDs)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from app.events import (
    Incoming,
    Record,
    enrich,
    fresh_traceparents,
    parse_request,
    partition_key,
    stored_partition_key,
)
from app.ids import valid_traceparent

NOW = "2024-05-01T10:00:00.000Z"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER_TRACEPARENT = "00-11111111111111111111111111111111-2222222222222222-01"


def incoming(body: dict[str, Any]) -> Incoming:
    return parse_request(json.dumps(body).encode(), "application/json", {})[0][0]


def as_entry(fields: list[bytes | str]) -> dict[bytes, bytes]:
    """What XRANGE gives back for a flat XADD field list."""
    raw = [f if isinstance(f, bytes) else f.encode() for f in fields]
    return dict(zip(raw[::2], raw[1::2], strict=True))


def read(fields: dict[bytes, bytes], entry_id: str = "1714557600000-0") -> Record:
    return Record.from_entry(entry_id, 0, fields)


def to_json(record: Record) -> Any:
    return json.loads(msgspec.json.encode(record))


def test_enrich_fills_time_source_and_a_fresh_traceparent_and_leaves_the_id_to_the_script() -> None:
    fields = enrich(incoming({"type": "t"}), "billing", None, NOW)
    entry = as_entry(fields)
    assert b"id" not in entry  # app/lua/append.lua makes a UUIDv7 that encodes the entry id
    assert entry[b"source"] == b"billing"
    assert entry[b"time"] == NOW.encode()
    assert entry[b"_v"] == b"1"
    assert valid_traceparent(entry[b"traceparent"].decode())


def test_enrich_keeps_the_producers_id_and_time() -> None:
    fields = enrich(incoming({"type": "t", "id": "e-1", "time": "2020-01-01T00:00:00Z"}), "b", None, NOW)
    assert as_entry(fields)[b"id"] == b"e-1"
    assert as_entry(fields)[b"time"] == b"2020-01-01T00:00:00Z"


def test_enrich_prefers_the_events_traceparent_then_the_request_header() -> None:
    own = enrich(incoming({"type": "t", "traceparent": TRACEPARENT}), "b", OTHER_TRACEPARENT, NOW)
    from_header = enrich(incoming({"type": "t"}), "b", OTHER_TRACEPARENT, NOW)
    assert as_entry(own)[b"traceparent"] == TRACEPARENT.encode()
    assert as_entry(from_header)[b"traceparent"] == OTHER_TRACEPARENT.encode()


def test_enrich_stores_data_verbatim_and_extensions_as_json() -> None:
    event = parse_request(b'{"type": "t", "data": {"n": 1.50}, "tenant": "acme", "priority": 2}',
                          "application/json", {})[0][0]
    entry = as_entry(enrich(event, "b", None, NOW))
    assert entry[b"data"] == b'{"n": 1.50}'
    assert json.loads(entry[b"_x"]) == {"tenant": "acme", "priority": 2}


def test_enrich_omits_absent_optional_attributes() -> None:
    entry = as_entry(enrich(incoming({"type": "t"}), "b", None, NOW))
    assert set(entry) == {b"_v", b"type", b"source", b"time", b"traceparent"}


def test_an_enriched_entry_reads_back_as_the_same_cloudevent() -> None:
    event = incoming({"type": "order.created", "id": "e-1", "subject": "o-1", "dataschema": "urn:s",
                      "data": {"amount": 3}, "tenant": "acme", "replayed": False, "traceparent": TRACEPARENT})
    record = read(as_entry(enrich(event, "billing", None, NOW)))
    assert not record.direct
    assert record.problems == []
    assert to_json(record)["event"] == {
        "specversion": "1.0", "id": "e-1", "type": "order.created", "source": "billing", "time": NOW,
        "subject": "o-1", "dataschema": "urn:s", "traceparent": TRACEPARENT, "data": {"amount": 3},
        "tenant": "acme", "replayed": False,
    }


def test_binary_data_reads_back_as_data_base64() -> None:
    event = parse_request(b"\x00\x01", "application/octet-stream", {"ce-specversion": "1.0", "ce-type": "t"})[0][0]
    out = to_json(read(as_entry(enrich(event, "b", None, NOW))))["event"]
    assert out["data_base64"] == "AAE="
    assert out["datacontenttype"] == "application/octet-stream"
    assert "data" not in out


def test_a_direct_entry_is_marked_and_gets_its_entry_id_as_event_id() -> None:
    record = read({b"type": b"order.created", b"source": b"billing", b"data": b'{"amount": 3}'}, "1714557600000-5")
    assert record.direct
    assert record.problems == []
    assert to_json(record)["event"] == {
        "specversion": "1.0", "id": "1714557600000-5", "type": "order.created", "source": "billing",
        "data": {"amount": 3},
    }


def test_a_direct_entry_keeps_its_own_id() -> None:
    record = read({b"id": b"mine", b"type": b"t", b"source": b"s"})
    assert record.event["id"] == "mine"


def test_a_direct_entry_with_data_that_is_not_json_is_flagged_and_kept_as_text() -> None:
    record = read({b"type": b"t", b"source": b"s", b"data": b"{amount: 3"})
    assert record.problems == ["data is not valid JSON"]
    assert to_json(record)["event"]["data"] == "{amount: 3"


def test_a_direct_entry_without_type_or_source_is_flagged() -> None:
    record = read({b"data": b"1"})
    assert sorted(record.problems) == ["missing source", "missing type"]


@pytest.mark.parametrize(("data", "problem"), [
    (b"[" * 5000 + b"]" * 5000, "data is nested too deeply"),
    (b'{"name": "\xed\xa0\x80"}', "data is not valid UTF-8"),
    (b'{"n": 1e400}', "data holds a number no JSON decoder can represent (beyond a double, or over 4300 digits)"),
    (b"9" * 5000, "data holds a number no JSON decoder can represent (beyond a double, or over 4300 digits)"),
])
def test_a_direct_entry_with_data_no_consumer_can_decode_is_flagged_not_raised(data: bytes, problem: str) -> None:
    # Raising here would crash-loop every consumer (and fail every query) that reads the entry.
    record = read({b"type": b"t", b"source": b"s", b"data": data})
    assert record.problems == [problem]
    assert isinstance(record.event["data"], str)
    msgspec.json.encode(record)  # and it can still be shown


def test_a_direct_entry_with_big_but_decodable_numbers_is_fine() -> None:
    record = read({b"type": b"t", b"source": b"s", b"data": b'{"n": 1e300, "i": 123456789012345678901234567890}'})
    assert record.problems == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"x"', b'{"a":' * 3000 + b"1" + b"}" * 3000,
                                 b'{"n": 1e400}'])
def test_a_direct_entry_with_a_broken_extensions_field_is_flagged_not_fatal(raw: bytes) -> None:
    record = read({b"type": b"t", b"source": b"s", b"_x": raw})
    assert record.direct
    assert record.problems == ["_x is not a JSON object"]
    assert to_json(record)["event"]["type"] == "t"


def test_a_direct_entry_with_invalid_utf8_is_read_with_replacement_characters() -> None:
    record = read({b"type": b"t\xff", b"source": b"s"})
    assert record.event["type"] == "t\ufffd"


def test_fresh_traceparents_are_valid_and_each_starts_its_own_trace() -> None:
    parents = fresh_traceparents(50)
    assert len(parents) == 50 and all(valid_traceparent(p) for p in parents)
    assert len({p[3:35] for p in parents}) == 50


@pytest.mark.parametrize("extra", [{}, {"subject": "order-1"}, {"partitionkey": "customer-7", "subject": "a"},
                                   {"partitionkey": 42}, {"partitionkey": True, "region": "eu"}])
def test_the_partition_key_read_back_from_the_log_is_the_one_ingest_chose(extra: dict[str, Any]) -> None:
    event = incoming({"type": "order.created", "data": {"n": 1}, **extra})
    fields = as_entry(enrich(event, "shop", None, "2026-11-27T06:00:00Z"))
    chosen = partition_key(event.extensions, "shop", event.subject)
    assert stored_partition_key(fields) == chosen
    assert chosen == (str(extra["partitionkey"]) if "partitionkey" in extra else f"shop\n{extra.get('subject', '')}")


def test_a_direct_writer_s_partitionkey_field_is_its_partition_key() -> None:
    assert stored_partition_key({b"type": b"t", b"source": b"s", b"partitionkey": b"k-1"}) == "k-1"
    assert stored_partition_key({b"type": b"t", b"source": b"s", b"subject": b"x"}) == "s\nx"
