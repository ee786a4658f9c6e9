"""Decoding the three dialects producers speak: plain JSON, CloudEvents structured and binary mode."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from app.errors import InvalidEvent, MalformedBody, UnsupportedMediaType
from app.events import CE_BATCH, CE_JSON, Incoming, parse_batch, parse_request

JSON = "application/json"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def one(body: Any, content_type: str | None = JSON, headers: dict[str, str] | None = None) -> Incoming:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    events, is_batch = parse_request(raw, content_type, headers or {})
    assert not is_batch
    assert len(events) == 1
    return events[0]


def pointers(exc: pytest.ExceptionInfo[InvalidEvent]) -> list[str]:
    return [p.pointer for p in exc.value.problems]


def binary_headers(**attrs: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", **{f"ce-{k}": v for k, v in attrs.items()}}


# -- plain JSON ----------------------------------------------------------------------------------


def test_plain_json_needs_only_a_type() -> None:
    event = one({"type": "order.created"})
    assert event.type == "order.created"
    assert event.id is None
    assert event.time is None
    assert event.data is None


def test_plain_json_keeps_data_verbatim() -> None:
    event = one(b'{"type": "t", "data": {"amount": 3.10, "tags": ["a"]}}')
    assert bytes(event.data or b"") == b'{"amount": 3.10, "tags": ["a"]}'


def test_plain_json_takes_the_optional_attributes() -> None:
    event = one({
        "type": "t", "id": "e-1", "time": "2024-05-01T10:00:00Z", "subject": "order-7",
        "dataschema": "https://schemas.example/order", "traceparent": TRACEPARENT,
    })
    assert (event.id, event.time, event.subject) == ("e-1", "2024-05-01T10:00:00Z", "order-7")
    assert event.dataschema == "https://schemas.example/order"
    assert event.traceparent == TRACEPARENT


def test_null_data_counts_as_no_data() -> None:
    assert one({"type": "t", "data": None}).data is None


def test_content_type_parameters_are_ignored() -> None:
    assert one({"type": "t"}, "Application/JSON; charset=utf-8").type == "t"


# -- CloudEvents structured mode -----------------------------------------------------------------


def test_structured_mode_reads_every_context_attribute() -> None:
    event = one({
        "specversion": "1.0", "id": "A234-1234-1234", "source": "billing", "type": "com.example.created",
        "time": "2018-04-05T17:31:00+02:00", "datacontenttype": "application/json", "data": {"x": 1},
    }, CE_JSON)
    assert event.id == "A234-1234-1234"
    assert event.source == "billing"
    assert event.datacontenttype == "application/json"
    assert bytes(event.data or b"") == b'{"x": 1}'


def test_structured_mode_requires_specversion() -> None:
    with pytest.raises(InvalidEvent) as info:
        one({"type": "t", "id": "1", "source": "billing"}, CE_JSON)
    assert pointers(info) == ["/specversion"]


def test_plain_json_does_not_require_specversion_but_checks_it_when_sent() -> None:
    assert one({"type": "t"}).type == "t"
    with pytest.raises(InvalidEvent) as info:
        one({"type": "t", "specversion": "0.3"})
    assert pointers(info) == ["/specversion"]


def test_structured_data_base64_is_kept_as_base64() -> None:
    encoded = base64.b64encode(b"\x00\xffbinary").decode()
    event = one({"specversion": "1.0", "type": "t", "data_base64": encoded}, CE_JSON)
    assert event.data_base64 == encoded
    assert event.data is None


def test_data_and_data_base64_together_are_refused() -> None:
    with pytest.raises(InvalidEvent) as info:
        one({"type": "t", "data": 1, "data_base64": "AAE="})
    assert pointers(info) == ["/data_base64"]


def test_invalid_base64_is_refused() -> None:
    with pytest.raises(InvalidEvent) as info:
        one({"type": "t", "data_base64": "not base64!"})
    assert pointers(info) == ["/data_base64"]


# -- extension attributes --------------------------------------------------------------------------


def test_extensions_of_string_integer_and_boolean_are_kept() -> None:
    event = one({"type": "t", "tenant": "acme", "priority": 3, "replayed": True})
    assert event.extensions == {"tenant": "acme", "priority": 3, "replayed": True}


def test_null_extensions_are_dropped() -> None:
    assert one({"type": "t", "tenant": None}).extensions == {}


@pytest.mark.parametrize("name", ["orderId", "order_id", "x" * 21, "tenant-id"])
def test_extension_names_outside_the_spec_are_refused_by_pointer(name: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        one({"type": "t", name: "v"})
    assert pointers(info) == [f"/{name}"]


@pytest.mark.parametrize("value", [1.5, {"a": 1}, [1, 2]])
def test_extension_values_must_be_scalars(value: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        one({"type": "t", "tenant": value})
    assert pointers(info) == ["/tenant"]


def test_an_extension_value_longer_than_1024_characters_is_refused() -> None:
    with pytest.raises(InvalidEvent) as info:
        one({"type": "t", "tenant": "x" * 1025})
    assert pointers(info) == ["/tenant"]


# -- attribute checks ----------------------------------------------------------------------------


def test_missing_type_is_named() -> None:
    with pytest.raises(InvalidEvent) as info:
        one({"data": {}})
    assert pointers(info) == ["/type"]


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"type": ""}, "/type"),
        ({"type": 5}, "/type"),
        ({"type": "t", "id": 42}, "/id"),
        ({"type": "t", "subject": ""}, "/subject"),
        ({"type": "t", "source": "x" * 1025}, "/source"),
    ],
)
def test_context_attributes_must_be_non_empty_strings(body: dict[str, Any], pointer: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        one(body)
    assert pointers(info) == [pointer]


@pytest.mark.parametrize("value", ["2024-05-01T10:00:00Z", "2024-05-01T10:00:00.123456+02:00", "2024-05-01t10:00:00z"])
def test_rfc3339_times_are_accepted(value: str) -> None:
    assert one({"type": "t", "time": value}).time == value


@pytest.mark.parametrize("value", ["2024-05-01", "2024-05-01T10:00:00", "yesterday", "1714557600"])
def test_times_without_date_time_and_offset_are_refused(value: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        one({"type": "t", "time": value})
    assert pointers(info) == ["/time"]


@pytest.mark.parametrize(
    "value",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
def test_an_invalid_traceparent_is_refused(value: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        one({"type": "t", "traceparent": value})
    assert pointers(info) == ["/traceparent"]


def test_every_problem_of_one_event_is_reported_together() -> None:
    with pytest.raises(InvalidEvent) as info:
        one({"id": 1, "time": "later", "bad_name": 1})
    assert sorted(pointers(info)) == ["/bad_name", "/id", "/time", "/type"]


# -- malformed bodies and media types -------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"type": ', b"", b"not json", b'{"type": "t"} trailing'])
def test_malformed_json_is_a_malformed_body(body: bytes) -> None:
    with pytest.raises(MalformedBody):
        parse_request(body, JSON, {})


@pytest.mark.parametrize("body", [b"[]", b'"event"', b"3"])
def test_json_that_is_not_an_object_is_an_invalid_event(body: bytes) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_request(body, JSON, {})
    assert pointers(info) == ["/"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/xml", "multipart/form-data"])
def test_other_media_types_are_unsupported(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_request(b'{"type": "t"}', content_type, {})


# -- CloudEvents binary mode ----------------------------------------------------------------------


def test_binary_mode_reads_attributes_from_ce_headers_and_json_data_from_the_body() -> None:
    event = one(b'{"amount": 3}', JSON, binary_headers(type="order.created", id="e-9", source="billing",
                                                       subject="order-1", tenant="acme"))
    assert (event.type, event.id, event.source, event.subject) == ("order.created", "e-9", "billing", "order-1")
    assert bytes(event.data or b"") == b'{"amount": 3}'
    assert event.datacontenttype == JSON
    assert event.extensions == {"tenant": "acme"}


def test_binary_mode_header_names_are_case_insensitive() -> None:
    headers = {"CE-SpecVersion": "1.0", "Ce-Type": "t", "ce-specversion": "1.0"}
    assert one(b"{}", JSON, headers).type == "t"


def test_binary_mode_percent_decodes_header_values() -> None:
    event = one(b"{}", JSON, binary_headers(type="t", subject="caf%C3%A9%20au%20lait", tenant="100%25"))
    assert event.subject == "café au lait"
    assert event.extensions == {"tenant": "100%"}


def test_binary_mode_text_body_becomes_a_json_string() -> None:
    event = one("héllo \"world\"".encode(), "text/plain; charset=utf-8", binary_headers(type="t"))
    assert json.loads(bytes(event.data or b"")) == 'héllo "world"'
    assert event.datacontenttype == "text/plain; charset=utf-8"
    assert event.data_base64 is None


def test_binary_mode_text_body_must_be_utf8() -> None:
    with pytest.raises(InvalidEvent) as info:
        one(b"\xff\xfe", "text/plain", binary_headers(type="t"))
    assert pointers(info) == ["/data"]


def test_binary_mode_other_bodies_become_data_base64() -> None:
    payload = bytes(range(256))
    event = one(payload, "application/octet-stream", binary_headers(type="t"))
    assert event.data is None
    assert base64.b64decode(event.data_base64 or "") == payload
    assert event.datacontenttype == "application/octet-stream"


def test_binary_mode_empty_body_has_no_data() -> None:
    event = one(b"", JSON, binary_headers(type="t"))
    assert event.data is None
    assert event.data_base64 is None


def test_binary_mode_json_body_must_be_valid_json() -> None:
    with pytest.raises(MalformedBody):
        parse_request(b"{nope", JSON, binary_headers(type="t"))


def test_binary_mode_reports_bad_headers_by_attribute() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_request(b"{}", JSON, {"ce-specversion": "0.3", "ce-time": "noon", "ce-bad_ext": "x"})
    assert sorted(pointers(info)) == ["/bad_ext", "/specversion", "/time", "/type"]


def test_binary_mode_wins_over_the_content_type() -> None:
    # The body of a binary-mode request is data, even when it is a JSON object with a "type".
    event = one(b'{"type": "inner"}', JSON, binary_headers(type="outer"))
    assert event.type == "outer"
    assert json.loads(bytes(event.data or b"")) == {"type": "inner"}


# -- batches -------------------------------------------------------------------------------------


def test_a_batch_is_a_json_array_or_an_events_object() -> None:
    as_array = parse_batch(b'[{"type": "a"}, {"type": "b"}]', JSON)
    as_object = parse_batch(b'{"events": [{"type": "a"}, {"type": "b"}]}', JSON)
    assert [e.type for e in as_array] == [e.type for e in as_object] == ["a", "b"]


def test_a_cloudevents_batch_posted_to_the_single_endpoint_is_a_batch() -> None:
    body = json.dumps([{"specversion": "1.0", "type": "a"}, {"specversion": "1.0", "type": "b"}]).encode()
    events, is_batch = parse_request(body, CE_BATCH, {})
    assert is_batch
    assert [e.type for e in events] == ["a", "b"]


def test_a_cloudevents_batch_requires_specversion_on_each_event() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_batch(b'[{"specversion": "1.0", "type": "a"}, {"type": "b"}]', CE_BATCH)
    assert pointers(info) == ["/events/1/specversion"]


def test_batch_validation_lists_every_failing_item_by_index_and_field() -> None:
    body = json.dumps([
        {"type": "ok"},
        {"data": 1},
        {"type": "ok"},
        {"type": "t", "time": "soon", "id": 7},
        "not an object",
    ]).encode()
    with pytest.raises(InvalidEvent) as info:
        parse_batch(body, JSON)
    assert sorted(pointers(info)) == ["/events/1/type", "/events/3/id", "/events/3/time", "/events/4"]


@pytest.mark.parametrize("body", [b"[]", b'{"events": []}'])
def test_an_empty_batch_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_batch(body, JSON)
    assert pointers(info) == ["/events"]


@pytest.mark.parametrize("body", [b'{"items": []}', b'{"events": 3}', b'"x"', b"7"])
def test_a_batch_of_the_wrong_shape_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_batch(body, JSON)
    assert pointers(info) == ["/events"]


def test_a_malformed_batch_is_a_malformed_body() -> None:
    with pytest.raises(MalformedBody):
        parse_batch(b'[{"type": "a"},', JSON)


def test_a_batch_with_leading_whitespace_is_read() -> None:
    assert [e.type for e in parse_batch(b'  \n[{"type": "a"}]', JSON)] == ["a"]


def test_a_batch_of_another_media_type_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_batch(b'[{"type": "a"}]', "text/csv")


# -- hostile input (see also tests/property/test_bad_input.py, through the HTTP API) -------------------

DEEP = b"[" * 3000 + b"]" * 3000


@pytest.mark.parametrize("body", [b'{"type": "t", "data": ' + DEEP + b"}", b'{"type": "t", "x": ' + DEEP + b"}",
                                  b'{"type": "t", "data": {"a": "\xc3\x28"}}', b'{"type": "\xff"}',
                                  b'{"type": "t", "ext": "\xc0\xaf"}'])
def test_deep_nesting_and_invalid_utf8_are_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MalformedBody):
        one(body)
    with pytest.raises(MalformedBody):
        parse_batch(b"[" + body + b"]", JSON)


@pytest.mark.parametrize("body", [DEEP, b'{"a": "\xc3\x28"}'])
def test_binary_mode_json_data_nested_too_deeply_or_not_utf8_is_a_malformed_body(body: bytes) -> None:
    with pytest.raises(MalformedBody):
        one(body, JSON, binary_headers(type="t"))


@pytest.mark.parametrize("data", [b"1e400", b"-1E+999", b"[1, 2.5e308]", b"9" * 5000, b"1" + b"0" * 400 + b".5",
                                  b'{"a": "5e3a", "b": 1' + b"0" * 300 + b"e9}"])
def test_numbers_no_decoder_can_represent_are_refused_at_data(data: bytes) -> None:
    with pytest.raises(InvalidEvent) as exc:
        one(b'{"type": "t", "data": ' + data + b"}")
    assert pointers(exc) == ["/data"]
    with pytest.raises(InvalidEvent) as exc:
        parse_batch(b'[{"type": "t"}, {"type": "t", "data": ' + data + b', "ext": 1}, {"type": "t", "data": '
                    + data + b"}]", JSON)
    assert pointers(exc) == ["/events/1/data", "/events/2/data"]
    with pytest.raises(InvalidEvent) as exc:
        one(data, JSON, binary_headers(type="t"))
    assert pointers(exc) == ["/data"]


@pytest.mark.parametrize("data", [b"1e308", b"-2.5E-400", b"123456789012345678901234567890", b"9" * 4000,
                                  b'"1e999"', b'{"id": "5e3a", "n": 1.5e10}'])
def test_numbers_a_decoder_can_represent_are_kept_verbatim(data: bytes) -> None:
    assert bytes(one(b'{"type": "t", "data": ' + data + b"}").data or b"") == data


@pytest.mark.parametrize("value", [-(2**31), 0, 2**31 - 1])
def test_integer_extensions_within_32_bits_are_kept(value: int) -> None:
    assert one({"type": "t", "seq": value}).extensions == {"seq": value}


@pytest.mark.parametrize("raw", [str(2**31).encode(), str(-(2**31) - 1).encode(), b"9" * 30, b"9" * 5000, b"1e400"])
def test_integer_extensions_beyond_32_bits_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidEvent) as exc:
        one(b'{"type": "t", "seq": ' + raw + b"}")
    assert pointers(exc) == ["/seq"]


def test_a_bad_event_in_a_fast_batch_is_named_by_its_index() -> None:
    with pytest.raises(InvalidEvent) as exc:
        parse_batch(b'[{"type": "a"}, {"type": "a", "time": "yesterday"}, {"type": "a", "time": "never"}]', JSON)
    assert pointers(exc) == ["/events/1/time", "/events/2/time"]


@pytest.mark.parametrize("text", ["é", "YQ==é", "\u00e9"])
def test_non_ascii_data_base64_is_invalid(text: str) -> None:
    with pytest.raises(InvalidEvent) as exc:
        one({"type": "t", "data_base64": text})
    assert pointers(exc) == ["/data_base64"]
