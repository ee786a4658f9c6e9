"""The event envelope: the only definition of EventFlow's wire and log formats.

Producers speak three dialects to `POST /v1/events` (plain JSON, CloudEvents structured mode and
CloudEvents binary mode); all three become one `Incoming` event. `enrich` turns it into the flat
field list that is appended to the log, and `Record.from_entry` reads any log entry back, including
entries that producers wrote straight into the stream with XADD.

Log entry fields (documented in the README for direct writers):

    _v               "1" on entries written by EventFlow itself (absent: written directly)
    id type source   CloudEvents attributes, always present on `_v` entries
    time             RFC 3339
    subject datacontenttype dataschema traceparent     when present
    data             the data as JSON text, or
    data_base64      binary data, base64 (CloudEvents JSON format)
    _x               the remaining extension attributes as a JSON object
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any
from urllib.parse import unquote

import msgspec

from app.errors import FieldProblem, InvalidEvent, MalformedBody, UnsupportedMediaType
from app.ids import new_traceparent, valid_traceparent

SPECVERSION = "1.0"
FORMAT_VERSION = "1"
# The `_v` field ingest writes: an entry with any other (or none) was written straight into the
# stream, and is checked, never trusted (a junk `_v` is no pass).
INGESTED = FORMAT_VERSION.encode()
CE_JSON = "application/cloudevents+json"
CE_BATCH = "application/cloudevents-batch+json"

# CloudEvents attribute names: lowercase letters and digits; we keep the spec's 20-char advice.
# Matched whole (`$` alone would take a name ending in a newline).
_EXT_NAME = re.compile(r"[a-z0-9]{1,20}").fullmatch
_CONTEXT = ("id", "type", "source", "time", "subject", "datacontenttype", "dataschema", "traceparent")
_STRING_ATTRS = frozenset(_CONTEXT) | {"specversion"}
_MAX_ATTR_LEN = 1024

# CloudEvents integer attributes are 32-bit signed.
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
_raw_array = msgspec.json.Decoder(list[msgspec.Raw])
_raw_any = msgspec.json.Decoder(msgspec.Raw)
_any = msgspec.json.Decoder()
_json = msgspec.json.Encoder()


class Incoming(msgspec.Struct, kw_only=True):
    """An event as a producer sent it, checked for shape but not yet enriched."""

    type: str
    id: str | None = None
    source: str | None = None
    time: str | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    traceparent: str | None = None
    data: msgspec.Raw | None = None  # JSON text, kept verbatim (never decoded and re-encoded)
    data_base64: str | None = None
    extensions: dict[str, str | int | bool] = {}


# -- decoding the three dialects ----------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_media(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def parse_request(body: bytes, content_type: str | None, headers: Mapping[str, str]) -> tuple[list[Incoming], bool]:
    """Decode a `POST /v1/events` body in whichever dialect it uses; returns (events, is_batch)."""
    media = media_type(content_type)
    if media == CE_BATCH:
        return parse_batch(body, content_type), True
    if "ce-specversion" in headers:
        return [parse_binary(body, content_type, headers)], False
    if media in (CE_JSON, "application/json"):
        return [parse_structured(body, structured=media == CE_JSON)], False
    raise UnsupportedMediaType(
        f"Content-Type {media or '(none)'!r} is not accepted: send application/json, "
        f"{CE_JSON}, {CE_BATCH}, or CloudEvents binary mode (ce-* headers)"
    )


_NULL = msgspec.Raw(b"null")


_Attr = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_ATTR_LEN)]


class _Plain(msgspec.Struct, forbid_unknown_fields=True):
    """The common shape (no extension attributes), decoded and length-checked in one C call: the
    fast path. Anything it rejects goes to the precise path, which names the problem."""

    type: _Attr
    id: _Attr | None = None
    source: _Attr | None = None
    time: _Attr | None = None
    subject: _Attr | None = None
    datacontenttype: _Attr | None = None
    dataschema: _Attr | None = None
    traceparent: _Attr | None = None
    specversion: str | None = None
    data: msgspec.Raw = _NULL  # (msgspec cannot decode `Raw | None`: absent and null both end up here)


_plain = msgspec.json.Decoder(_Plain)
_plain_array = msgspec.json.Decoder(list[_Plain])


def _from_plain(event: _Plain, structured: bool) -> Incoming | None:
    """An Incoming from a fast-decoded event; None when the precise path must report a problem."""
    spec = event.specversion
    if (spec is None and structured) or (spec is not None and spec != SPECVERSION):
        return None
    if event.time is not None and not _valid_time(event.time):
        return None
    if event.traceparent is not None and not valid_traceparent(event.traceparent):
        return None
    return Incoming(
        type=event.type, id=event.id, source=event.source, time=event.time, subject=event.subject,
        datacontenttype=event.datacontenttype, dataschema=event.dataschema, traceparent=event.traceparent,
        data=None if event.data == _NULL else event.data,
    )


def parse_structured(body: bytes, *, structured: bool = False, pointer: str = "") -> Incoming:
    """Plain JSON or CloudEvents structured mode: one JSON object."""
    _check_utf8(body)
    event = _parse_object(body, structured, pointer)
    if event.data is not None and _may_overflow(body):
        _check_numbers([event], lambda _: pointer)
    return event


def _parse_object(body: bytes, structured: bool, pointer: str) -> Incoming:
    """One event object from UTF-8-checked bytes (its data's numbers are not checked here)."""
    try:
        fast = _from_plain(_plain.decode(body), structured)
    except (msgspec.ValidationError, msgspec.DecodeError):
        fast = None  # extension attributes, or a problem the precise path below will name
    except RecursionError:
        raise _too_deep() from None
    if fast is not None:
        return fast
    try:
        obj = _raw_object.decode(body)
    except msgspec.ValidationError:
        raise InvalidEvent([FieldProblem(pointer or "/", "an event must be a JSON object")]) from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    return _from_attributes(obj, pointer, structured=structured)


def parse_batch(body: bytes, content_type: str | None) -> list[Incoming]:
    """A JSON array of events, or `{"events": [...]}`; all-or-nothing validation."""
    media = media_type(content_type)
    if media not in (CE_BATCH, "application/json", CE_JSON):
        raise UnsupportedMediaType(f"Content-Type {media or '(none)'!r} is not accepted for a batch")
    _check_utf8(body)
    fast = _fast_batch(body, media == CE_BATCH)
    if fast is not None:
        if _may_overflow(body):
            _check_numbers(fast, lambda i: f"/events/{i}")
        return fast
    try:
        top = _raw_any.decode(body)
        items = _raw_array.decode(top) if bytes(top)[:1] == b"[" else _batch_object(top)
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    if not items:
        raise InvalidEvent([FieldProblem("/events", "a batch needs at least one event")])
    events: list[Incoming] = []
    problems: list[FieldProblem] = []
    for i, item in enumerate(items):
        pointer = f"/events/{i}"
        try:
            event = _parse_object(item, media == CE_BATCH, pointer)
            if _may_overflow(bytes(item)):
                _check_numbers([event], lambda _: pointer)  # noqa: B023 - called at once
            events.append(event)
        except InvalidEvent as exc:
            problems.extend(exc.problems)
    if problems:
        raise InvalidEvent(problems)
    return events


def _fast_batch(body: bytes, structured: bool) -> list[Incoming] | None:
    """The whole batch in one C call; None when the precise path must look (and name each problem)."""
    try:
        plain = _plain_array.decode(body)
        events = [_from_plain(p, structured) for p in plain]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    except RecursionError:
        raise _too_deep() from None
    return events if events and None not in events else None  # type: ignore[return-value]


def _batch_object(top: msgspec.Raw) -> list[msgspec.Raw]:
    try:
        obj = _raw_object.decode(top)
        return _raw_array.decode(obj["events"])
    except (KeyError, msgspec.ValidationError):
        raise InvalidEvent(
            [FieldProblem("/events", 'a batch is a JSON array of events or {"events": [...]}')]
        ) from None


def parse_binary(body: bytes, content_type: str | None, headers: Mapping[str, str]) -> Incoming:
    """CloudEvents binary mode: attributes in `ce-*` headers, the body is the data."""
    attrs: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("ce-"):
            attrs[lower[3:]] = unquote(value)
    problems: list[FieldProblem] = []
    fields = _string_fields(attrs, "", problems)
    media = media_type(content_type)
    data: msgspec.Raw | None = None
    data_base64: str | None = None
    if body:
        if is_json_media(media) or not media:
            _check_utf8(body)
            try:
                data = _raw_any.decode(body)
            except msgspec.DecodeError as exc:
                raise MalformedBody(f"body is not valid JSON: {exc}") from None
            except RecursionError:
                raise _too_deep() from None
            problem = _numbers_problem(data) if _may_overflow(body) else None
            if problem is not None:
                problems.append(FieldProblem("/data", problem))
        elif media.startswith("text/"):
            try:
                data = msgspec.Raw(_json.encode(body.decode("utf-8")))
            except UnicodeDecodeError:
                problems.append(FieldProblem("/data", f"body is not valid UTF-8 for {media}"))
        else:
            data_base64 = base64.b64encode(body).decode()
    extensions = {k: v for k, v in attrs.items() if k not in _STRING_ATTRS}
    _check_extensions(extensions, "", problems)
    fields.setdefault("datacontenttype", content_type or None)
    return _build(fields, data, data_base64, extensions, "", problems)


def _from_attributes(obj: dict[str, msgspec.Raw], pointer: str, *, structured: bool) -> Incoming:
    problems: list[FieldProblem] = []
    strings: dict[str, Any] = {}
    extensions: dict[str, Any] = {}
    data: msgspec.Raw | None = None
    data_base64: str | None = None
    for name, raw in obj.items():
        if name == "data":
            data = None if bytes(raw) == b"null" else raw
        elif name in _STRING_ATTRS or name == "data_base64":
            strings[name] = _decode_scalar(raw)
        elif _EXT_NAME(name):
            extensions[name] = _decode_scalar(raw)
        else:
            problems.append(FieldProblem(
                f"{pointer}/{name}",
                "unknown attribute: extension names are 1-20 lowercase letters or digits; "
                "put application fields inside `data`",
            ))
    fields = _string_fields(strings, pointer, problems)
    if structured and "specversion" not in strings:
        problems.append(FieldProblem(f"{pointer}/specversion", "required in CloudEvents structured mode"))
    if "data_base64" in fields:
        data_base64 = fields.pop("data_base64")
        if data is not None:
            problems.append(FieldProblem(f"{pointer}/data_base64", "send either data or data_base64"))
        else:
            try:
                base64.b64decode(data_base64, validate=True)
            except ValueError:  # binascii.Error, or a plain ValueError for non-ASCII text
                problems.append(FieldProblem(f"{pointer}/data_base64", "not valid base64"))
    _check_extensions(extensions, pointer, problems)
    return _build(fields, data, data_base64, extensions, pointer, problems)


_NOT_SCALAR = object()
_OUT_OF_RANGE = object()


def _decode_scalar(raw: msgspec.Raw) -> Any:
    try:
        value = _any.decode(raw)
    except msgspec.ValidationError:
        return _OUT_OF_RANGE  # a number msgspec cannot represent (beyond a double, or > 4300 digits)
    except RecursionError:
        return _NOT_SCALAR
    return value if value is None or isinstance(value, str | int | bool) else _NOT_SCALAR


def _string_fields(attrs: Mapping[str, Any], pointer: str, problems: list[FieldProblem]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in attrs.items():
        if name not in _STRING_ATTRS and name != "data_base64":
            continue
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(FieldProblem(f"{pointer}/{name}", "must be a string"))
        elif not value:
            problems.append(FieldProblem(f"{pointer}/{name}", "must not be empty"))
        elif len(value) > _MAX_ATTR_LEN and name != "data_base64":
            problems.append(FieldProblem(f"{pointer}/{name}", f"longer than {_MAX_ATTR_LEN} characters"))
        else:
            fields[name] = value
    return fields


def _check_extensions(extensions: dict[str, Any], pointer: str, problems: list[FieldProblem]) -> None:
    for name, value in list(extensions.items()):
        if value is None:
            del extensions[name]
        elif value is _NOT_SCALAR:
            problems.append(FieldProblem(
                f"{pointer}/{name}", "extension attributes must be a string, integer or boolean"
            ))
        elif value is _OUT_OF_RANGE or (type(value) is int and not _INT32_MIN <= value <= _INT32_MAX):
            problems.append(FieldProblem(
                f"{pointer}/{name}", "integer extension attributes are 32-bit signed (CloudEvents)"
            ))
        elif not _EXT_NAME(name):
            problems.append(FieldProblem(f"{pointer}/{name}", "extension names are 1-20 lowercase letters or digits"))
        elif isinstance(value, str) and len(value) > _MAX_ATTR_LEN:
            problems.append(FieldProblem(f"{pointer}/{name}", f"longer than {_MAX_ATTR_LEN} characters"))


def _build(
    fields: dict[str, Any],
    data: msgspec.Raw | None,
    data_base64: str | None,
    extensions: dict[str, Any],
    pointer: str,
    problems: list[FieldProblem],
) -> Incoming:
    if fields.pop("specversion", SPECVERSION) != SPECVERSION:
        problems.append(FieldProblem(f"{pointer}/specversion", f'must be "{SPECVERSION}"'))
    if "type" not in fields and not any(p.pointer == f"{pointer}/type" for p in problems):
        problems.append(FieldProblem(f"{pointer}/type", "required"))
    if "time" in fields and not _valid_time(fields["time"]):
        problems.append(FieldProblem(f"{pointer}/time", "must be an RFC 3339 timestamp with a UTC offset"))
    if "traceparent" in fields and not valid_traceparent(fields["traceparent"]):
        problems.append(FieldProblem(f"{pointer}/traceparent", "must be a W3C traceparent"))
    if problems:
        raise InvalidEvent(problems)
    return Incoming(data=data, data_base64=data_base64, extensions=extensions, **fields)


def _check_utf8(body: bytes) -> None:
    # msgspec keeps `data` as Raw bytes, which it never decodes: check the text once, here
    # (`isascii` is a word-at-a-time scan, so most bodies never pay for the decode).
    if not body.isascii() and not _is_utf8(body):
        raise MalformedBody("body is not valid UTF-8")


def _too_deep() -> MalformedBody:
    return MalformedBody("body is nested too deeply")


# Digits become "0", e/E become "e", everything else a space: a number with an exponent then shows
# as "0e", and a run of 309 digits (the shortest that overflows a double) as 309 zeros.
_NUMBER_SHAPES = bytes(
    ord("0") if c in b"0123456789" else ord("e") if c in b"eE" else ord(" ") for c in range(256)
)
_LONG_DIGITS = b"0" * 309


def _may_overflow(text: bytes) -> bool:
    """False when no number in `text` can be out of range: it needs an exponent or 309+ digits.

    Two C scans, so the common body never decodes its data (a string such as "5e3a" costs one
    needless decode, never a wrong answer)."""
    shapes = text.translate(_NUMBER_SHAPES)
    return b"0e" in shapes or (len(text) >= len(_LONG_DIGITS) and _LONG_DIGITS in shapes)


def _numbers_problem(data: msgspec.Raw) -> str | None:
    """Why `data` holds a number msgspec cannot decode, or None."""
    try:
        _any.decode(data)
    except msgspec.ValidationError:
        return "holds a number no JSON decoder can represent (beyond a double, or over 4300 digits)"
    except RecursionError:
        raise _too_deep() from None
    return None


def _check_numbers(events: list[Incoming], pointer: Callable[[int], str]) -> None:
    """Raise InvalidEvent naming `<pointer(i)>/data` for each event whose data cannot be decoded."""
    problems = []
    for i, event in enumerate(events):
        problem = None if event.data is None else _numbers_problem(event.data)
        if problem is not None:
            problems.append(FieldProblem(f"{pointer(i)}/data", problem))
    if problems:
        raise InvalidEvent(problems)


def _valid_time(value: str) -> bool:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return parsed.tzinfo is not None and "T" in value.upper()


def parse_time(value: str | None, name: str) -> int | None:
    """RFC 3339 (UTC when no offset) or milliseconds since the epoch."""
    if not value:
        return None
    if value.isascii() and value.isdigit():  # str.isdigit() alone also takes "²", which int() refuses
        return int(value)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent([FieldProblem(f"/{name}", "an RFC 3339 time or milliseconds since the epoch")]) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    # Integer arithmetic: float `timestamp() * 1000` lands 1 ms low for some values.
    return (parsed - _EPOCH) // dt.timedelta(milliseconds=1)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# -- enrichment and the log format --------------------------------------------------------------


_clock: list[Any] = [-1, ""]  # (ms, its RFC 3339 text): requests within one millisecond share it


def now_rfc3339() -> str:
    ms = time.time_ns() // 1_000_000
    if ms != _clock[0]:
        seconds, millis = divmod(ms, 1000)
        _clock[:] = [ms, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"]
    return str(_clock[1])


def fresh_traceparents(n: int) -> list[str]:
    """`n` new sampled traces (random trace and parent span ids), from one draw of the process's
    PRNG: trace ids need to be unique, not secret, and a urandom call is a system call per request
    (the random module reseeds itself in every forked worker)."""
    ids = random.randbytes(24 * n).hex()  # (formatting one big integer as hex cost twice as much)
    return [f"00-{ids[i : i + 32]}-{ids[i + 32 : i + 48]}-01" for i in range(0, 48 * n, 48)]


def enrich(event: Incoming, source: str, traceparent: str | None, now: str) -> list[str]:
    """Fill in time, source and traceparent; return the flat XADD field list, all text.

    An event without an id gets one from the append script (a UUIDv7 that encodes its entry id).
    append.lua reads the id, type and source at fixed places: keep `_v 1 [id <id>] type <t> source
    <s>` first. The data is text too (it is JSON from a UTF-8-checked body): the append script's
    MessagePack decoder takes strings, not binary."""
    parent = event.traceparent or traceparent or new_traceparent()
    if event.id is None:
        fields = ["_v", FORMAT_VERSION, "type", event.type, "source", source,
                  "time", event.time or now, "traceparent", parent]
    else:
        fields = ["_v", FORMAT_VERSION, "id", event.id, "type", event.type, "source", source,
                  "time", event.time or now, "traceparent", parent]
    if event.subject is not None:
        fields += ("subject", event.subject)
    if event.datacontenttype is not None:
        fields += ("datacontenttype", event.datacontenttype)
    if event.dataschema is not None:
        fields += ("dataschema", event.dataschema)
    if event.data is not None:
        fields += ("data", str(event.data, "utf-8"))
    elif event.data_base64 is not None:
        fields += ("data_base64", event.data_base64)
    if event.extensions:
        fields += ("_x", _json.encode(event.extensions).decode())
    return fields


def partition_key(extensions: Mapping[str, Any], source: str, subject: str | None) -> str:
    """What picks an event's partition, and its lane in an ordered consumer: the `partitionkey`
    extension (as text), else the source and subject."""
    key = extensions.get("partitionkey")
    return f"{source}\n{subject or ''}" if key is None else str(key)


def stored_partition_key(fields: Mapping[bytes, bytes]) -> str:
    """`partition_key` read back from a log entry: EventFlow keeps extensions in `_x` (JSON); a direct
    writer's top-level `partitionkey` field counts too (`_x` wins, as in `Record.from_entry`)."""
    extensions: dict[str, Any] = {}
    packed = fields.get(b"_x")
    if packed is not None and b"partitionkey" in packed:  # most events carry no extensions at all
        _extensions_of(packed, extensions, [])
    if "partitionkey" not in extensions and b"partitionkey" in fields:
        extensions["partitionkey"] = fields[b"partitionkey"].decode("utf-8", "replace")
    subject = fields.get(b"subject")
    return partition_key(extensions, fields.get(b"source", b"").decode("utf-8", "replace"),
                         subject.decode("utf-8", "replace") if subject is not None else None)


class Record(msgspec.Struct, kw_only=True):
    """One log entry as the query API returns it: the CloudEvent plus where it sits in the log."""

    entry_id: str
    partition: int
    direct: bool
    event: dict[str, Any]
    problems: list[str] = []

    @classmethod
    def from_entry(cls, entry_id: str, partition: int, fields: Mapping[bytes, bytes]) -> Record:
        """Read a log entry; entries written directly with XADD are checked, never trusted."""
        direct = fields.get(b"_v") != INGESTED
        event: dict[str, Any] = {"specversion": SPECVERSION}
        problems: list[str] = []
        extensions: dict[str, Any] = {}
        for key, value in fields.items():
            name = key.decode("utf-8", "replace")
            if name == "data":
                event["data"] = _data_of(value, direct, problems)
            elif name == "_x":
                _extensions_of(value, extensions, problems)
            elif name.startswith("_"):
                continue  # EventFlow's own bookkeeping (format version, dead-letter metadata)
            else:
                event[name] = value.decode("utf-8", "replace")
        event.update(extensions)
        if direct:
            problems += [f"missing {n}" for n in ("type", "source") if n not in event]
            problems += _attribute_problems(fields, extensions)
            event.setdefault("id", entry_id)
        return cls(entry_id=entry_id, partition=partition, direct=direct, event=event, problems=problems)


def _attribute_problems(fields: Mapping[bytes, bytes], extensions: Mapping[str, Any]) -> list[str]:
    """What ingest would refuse in a directly written entry's attributes (names, empty or overlong
    values, specversion, time, traceparent, base64, extension values), as `<pointer>: <problem>`."""
    attributes: dict[str, msgspec.Raw] = {}
    problems: list[str] = []
    for key, value in fields.items():
        name = key.decode("utf-8", "replace")
        if name.startswith("_"):
            continue
        if name == "data":
            attributes[name] = msgspec.Raw(b"null" if value == b"null" else b"0")  # data itself: _data_of
            continue
        if not value.isascii() and not _is_utf8(value):
            problems.append(f"/{name}: not valid UTF-8")
        attributes[name] = msgspec.Raw(_json.encode(value.decode("utf-8", "replace")))
    for name, value in extensions.items():
        try:
            attributes[name] = msgspec.Raw(_json.encode(value))
        except (TypeError, ValueError, RecursionError):
            problems.append(f"/_x/{name}: not a JSON value")
    try:
        _from_attributes(attributes, "", structured=False)
    except InvalidEvent as exc:
        problems += [f"{p.pointer}: {p.message}" for p in exc.problems
                     if p.pointer not in ("/type", "/source") or p.message != "required"]
    return problems


def _extensions_of(value: bytes, extensions: dict[str, Any], problems: list[str]) -> None:
    # Direct writers may put anything in `_x`: flag it rather than fail every query that reads it.
    try:
        decoded = _any.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        decoded = None
    if isinstance(decoded, dict):
        extensions.update(decoded)
    else:
        problems.append("_x is not a JSON object")


def _data_of(value: bytes, direct: bool, problems: list[str]) -> msgspec.Raw | str:
    if not direct:
        return msgspec.Raw(value)
    # Direct writers get the checks ingest makes. A problem marks the record, so that a consumer
    # dead-letters it as invalid: raising here would crash-loop every consumer that reads it.
    try:
        data = _raw_any.decode(value)
        problem = None if value.isascii() or _is_utf8(value) else "data is not valid UTF-8"
        if problem is None and _may_overflow(value):
            problem = _numbers_problem(data)
    except msgspec.DecodeError:
        problem = "data is not valid JSON"
    except (RecursionError, MalformedBody):  # MalformedBody: _numbers_problem's "nested too deeply"
        problem = "data is nested too deeply"
    if problem is None:
        return data
    problems.append(problem if problem.startswith("data ") else f"data {problem}")
    return value.decode("utf-8", "replace")


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True
