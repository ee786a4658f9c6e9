"""Validating event data against compiled JSON Schemas (draft 2020-12, jsonschema-rs): no I/O.

Problems come back as `FieldProblem`s with a JSON pointer to the failing field (`/data/amount`; for a
missing or unexpected property, the property itself) and the schema keyword that failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jsonschema_rs
import msgspec

from app.errors import FieldProblem, InvalidEvent
from app.events import Incoming, Record

DRAFT = "https://json-schema.org/draft/2020-12/schema"
MAX_PROBLEMS = 20  # per event: enough to fix a payload, bounded for a hostile one
EXAMPLES = 5  # failing recent events shown when a new version is tested

_decode = msgspec.json.Decoder().decode


class Failing(msgspec.Struct, kw_only=True):
    """A stored event that a candidate schema would reject."""

    entry_id: str
    partition: int
    id: str
    errors: list[dict[str, str]]


class RecentCheck(msgspec.Struct, kw_only=True):
    """How the most recent stored events of a type fare against a candidate schema."""

    checked: int
    failing: int
    examples: list[Failing] = []


def compile_schema(schema: Any) -> Any:
    """A compiled validator; InvalidEvent pointing into `/schema` when it is not a usable 2020-12 schema.

    `format` is asserted (a `date-time` must be one), and `$ref` resolves only inside the schema:
    fetching remote documents is off, so registering a schema never makes a network call."""
    if not isinstance(schema, dict | bool):
        raise InvalidEvent([FieldProblem("/schema", "a JSON Schema is an object or a boolean")])
    dialect = schema.get("$schema", DRAFT) if isinstance(schema, dict) else DRAFT
    if not isinstance(dialect, str) or dialect.rstrip("#") != DRAFT:
        raise InvalidEvent([FieldProblem("/schema/$schema", f"only JSON Schema draft 2020-12 ({DRAFT})", "$schema")])
    try:
        jsonschema_rs.meta.validate(schema)
        return jsonschema_rs.Draft202012Validator(schema, validate_formats=True, offline=True)
    except jsonschema_rs.ValidationError as exc:
        pointer = "/schema" + "".join("/" + _escape(str(p)) for p in exc.instance_path)
        raise InvalidEvent([FieldProblem(pointer, _first_line(exc.message), exc.kind.name)]) from None
    except (jsonschema_rs.ReferencingError, ValueError) as exc:
        raise InvalidEvent([FieldProblem("/schema", _first_line(str(exc)))]) from None


def problems(validator: Any, instance: Any, prefix: str = "") -> list[FieldProblem]:
    """Every failing field of `instance` (an event's data) as a pointer under `<prefix>/data`."""
    out: list[FieldProblem] = []
    for error in validator.iter_errors(instance):
        base = prefix + "/data" + "".join("/" + _escape(str(p)) for p in error.instance_path)
        kind = error.kind
        keyword = kind.name
        if keyword == "required":
            out.append(FieldProblem(f"{base}/{_escape(kind.property)}", "required by the schema", keyword))
        elif keyword in ("additionalProperties", "unevaluatedProperties"):
            out += [FieldProblem(f"{base}/{_escape(n)}", "not allowed by the schema", keyword) for n in kind.unexpected]
        else:
            out.append(FieldProblem(base, _first_line(error.message)[:300], keyword))
        if len(out) >= MAX_PROBLEMS:
            break
    return out[:MAX_PROBLEMS]


def incoming_instance(event: Incoming) -> tuple[Any, FieldProblem | None]:
    """The data a schema checks (`null` when absent), or why it cannot be checked."""
    if event.data_base64 is not None:
        return None, FieldProblem("/data_base64", "binary data cannot be checked against the type's JSON Schema")
    return (None if event.data is None else _decode(event.data)), None


def record_instance(record: Record) -> tuple[Any, FieldProblem | None]:
    data = record.event.get("data")
    if "data_base64" in record.event:
        return None, FieldProblem("/data_base64", "binary data cannot be checked against the type's JSON Schema")
    if data is None:
        return None, None
    if not isinstance(data, msgspec.Raw):  # a direct write whose data is not JSON (Record says so)
        return None, FieldProblem("/data", "data is not valid JSON")
    try:
        return _decode(data), None
    except msgspec.DecodeError:
        return None, FieldProblem("/data", "data is not valid JSON")


def check_records(validator: Any, records: Sequence[Record]) -> RecentCheck:
    """Test stored events against a validator; a few failing ones come back as examples."""
    failing: list[Failing] = []
    count = 0
    for record in records:
        instance, unusable = record_instance(record)
        found = [unusable] if unusable else problems(validator, instance)
        if found:
            count += 1
            if len(failing) < EXAMPLES:
                failing.append(Failing(entry_id=record.entry_id, partition=record.partition,
                                       id=str(record.event.get("id", record.entry_id)),
                                       errors=[p.to_dict() for p in found]))
    return RecentCheck(checked=len(records), failing=count, examples=failing)


def flag_text(found: list[FieldProblem]) -> str:
    """The warn-mode flag: failing pointers and keywords, e.g. "/data/amount minimum; /data/x required"."""
    return "; ".join(f"{p.pointer} {p.keyword or 'invalid'}" for p in found)[:1000]


def _escape(token: str) -> str:
    """A JSON pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
