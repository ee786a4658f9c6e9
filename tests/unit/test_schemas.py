"""Schema validation without a server: pointers and keywords, modes, unknown types, the registry on
fakeredis (versions, the recent-events check, the per-process cache)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from app.errors import ConfigError, InvalidEvent, NotFound
from app.events import Incoming, parse_request
from app.schemas import FLAG, Mode, SchemaConflict, Schemas, TypeChange, dataschema_uri
from app.service import Services
from app.settings import Settings
from app.validation import compile_schema, flag_text, incoming_instance, problems

ORDER = {
    "type": "object",
    "properties": {
        "amount": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD"]},
        "items": {"type": "array", "items": {"type": "integer"}},
        "a/b~c": {"type": "string"},
    },
    "required": ["amount"],
    "additionalProperties": False,
}


@pytest.fixture
async def fake() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


def event(body: dict[str, Any]) -> Incoming:
    return parse_request(json.dumps(body).encode(), "application/json", {})[0][0]


def found(data: Any) -> list[tuple[str, str | None]]:
    return [(p.pointer, p.keyword) for p in problems(compile_schema(ORDER), data)]


# -- validation ------------------------------------------------------------------------------------
def test_every_failing_field_gets_a_json_pointer_and_the_failing_keyword() -> None:
    assert found({"amount": -1, "currency": "GBP"}) == [("/data/amount", "minimum"), ("/data/currency", "enum")]


def test_a_missing_property_is_pointed_at_itself() -> None:
    assert found({}) == [("/data/amount", "required")]


def test_each_unexpected_property_is_named() -> None:
    assert sorted(found({"amount": 1, "x": 1, "y": 2})) == [
        ("/data/x", "additionalProperties"), ("/data/y", "additionalProperties")]


def test_pointers_reach_into_arrays_and_escape_slashes_and_tildes() -> None:
    assert found({"amount": 1, "items": [1, "two"], "a/b~c": 3}) == [
        ("/data/items/1", "type"), ("/data/a~1b~0c", "type")]


def test_a_batch_prefixes_pointers_with_the_event_index() -> None:
    [problem] = problems(compile_schema(ORDER), {"amount": "x"}, "/events/3")
    assert (problem.pointer, problem.keyword) == ("/events/3/data/amount", "type")


def test_problems_per_event_are_bounded() -> None:
    many = {"type": "object", "additionalProperties": {"type": "string"}}
    assert len(problems(compile_schema(many), {f"k{i}": i for i in range(100)})) == 20


def test_only_draft_2020_12_schemas_are_accepted() -> None:
    with pytest.raises(InvalidEvent) as exc:
        compile_schema({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"})
    assert exc.value.problems[0].pointer == "/schema/$schema"
    compile_schema({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"})


def test_an_invalid_schema_is_rejected_with_a_pointer_into_it() -> None:
    with pytest.raises(InvalidEvent) as exc:
        compile_schema({"type": "object", "properties": {"a": {"type": "nope"}}})
    assert exc.value.problems[0].pointer == "/schema/properties/a/type"
    with pytest.raises(InvalidEvent):
        compile_schema(["not", "a", "schema"])


def test_remote_references_are_never_fetched() -> None:
    with pytest.raises(InvalidEvent) as exc:
        compile_schema({"$ref": "https://example.com/order.json"})
    assert "disabled" in exc.value.problems[0].message.lower() or "retriev" in exc.value.problems[0].message


def test_formats_are_asserted() -> None:
    validator = compile_schema({"type": "string", "format": "date-time"})
    assert [p.keyword for p in problems(validator, "yesterday")] == ["format"]
    assert problems(validator, "2026-11-26T10:00:00Z") == []


def test_binary_data_cannot_be_checked_against_a_schema() -> None:
    binary = Incoming(type="t", data_base64="AAEC")
    _instance, problem = incoming_instance(binary)
    assert problem is not None and problem.pointer == "/data_base64"
    assert incoming_instance(Incoming(type="t")) == (None, None)  # no data: checked as null


def test_the_flag_names_pointers_and_keywords() -> None:
    assert flag_text(problems(compile_schema(ORDER), {"amount": -1, "z": 0})) in (
        "/data/amount minimum; /data/z additionalProperties", "/data/z additionalProperties; /data/amount minimum")


def test_dataschema_is_an_absolute_uri_naming_type_and_version() -> None:
    assert dataschema_uri("order.created", 3) == "urn:eventflow:schema:order.created:3"
    assert dataschema_uri("a b/c", 1) == "urn:eventflow:schema:a%20b%2Fc:1"


def test_unknown_types_setting_is_checked() -> None:
    assert Settings.from_env({"EVENTFLOW_UNKNOWN_TYPES": "reject"}).unknown_types == "reject"
    with pytest.raises(ConfigError, match="EVENTFLOW_UNKNOWN_TYPES"):
        Settings.from_env({"EVENTFLOW_UNKNOWN_TYPES": "maybe"})


# -- the registry and the cache, on fakeredis ------------------------------------------------------
async def registry(fake: fakeredis.FakeAsyncRedis, mode: Mode = Mode.ENFORCE, **changes: Any) -> Schemas:
    schemas = Schemas(fake, Settings(prefix="unit").replace(**changes))
    await schemas.register("order.created", TypeChange(mode=mode, schema=ORDER))
    return schemas


async def test_enforce_rejects_the_whole_batch_naming_every_failing_field(fake: fakeredis.FakeAsyncRedis) -> None:
    schemas = await registry(fake)
    batch = [event({"type": "order.created", "data": {"amount": 1}}),
             event({"type": "order.created", "data": {"amount": -5, "x": 1}})]
    with pytest.raises(InvalidEvent) as exc:
        await schemas.check_incoming(batch, "billing")
    assert [(p.pointer, p.keyword) for p in exc.value.problems] == [
        ("/events/1/data/amount", "minimum"), ("/events/1/data/x", "additionalProperties")]
    assert schemas.totals[("order.created", "rejected")] == 1


async def test_a_checked_event_records_the_schema_version_unless_the_producer_named_one(
    fake: fakeredis.FakeAsyncRedis,
) -> None:
    schemas = await registry(fake)
    mine = event({"type": "order.created", "data": {"amount": 1}, "dataschema": "https://example.com/s"})
    theirs = event({"type": "order.created", "data": {"amount": 1}})
    await schemas.check_incoming([mine, theirs], "billing")
    assert mine.dataschema == "https://example.com/s"
    assert theirs.dataschema == "urn:eventflow:schema:order.created:1"


async def test_warn_accepts_flags_and_counts(fake: fakeredis.FakeAsyncRedis) -> None:
    schemas = await registry(fake, Mode.WARN)
    bad = event({"type": "order.created", "data": {"amount": -1}})
    await schemas.check_incoming([bad], "billing")
    assert bad.extensions[FLAG] == "/data/amount minimum"
    assert bad.dataschema == "urn:eventflow:schema:order.created:1"
    await schemas.flush()
    assert (await schemas.failure_counts()) == {"order.created": {"flagged": 1}}
    [failure] = await schemas.recent_failures("order.created")
    assert (failure.outcome, failure.source, failure.errors[0]["pointer"]) == ("flagged", "billing", "/data/amount")


async def test_off_checks_nothing_and_records_no_version(fake: fakeredis.FakeAsyncRedis) -> None:
    schemas = await registry(fake, Mode.OFF)
    bad = event({"type": "order.created", "data": "anything"})
    await schemas.check_incoming([bad], "billing")
    assert bad.dataschema is None and FLAG not in bad.extensions


async def test_unregistered_types_are_accepted_by_default_and_rejected_when_configured(
    fake: fakeredis.FakeAsyncRedis,
) -> None:
    await (await registry(fake)).check_incoming([event({"type": "other"})], "billing")
    strict = await registry(fake, unknown_types="reject")
    with pytest.raises(InvalidEvent) as exc:
        await strict.check_incoming([event({"type": "other"})], "billing")
    assert exc.value.problems[0].pointer == "/type"
    await strict.check_incoming([event({"type": "order.created", "data": {"amount": 0}})], "billing")


async def test_a_type_without_a_schema_is_registered_but_not_checked(fake: fakeredis.FakeAsyncRedis) -> None:
    schemas = Schemas(fake, Settings(prefix="unit", unknown_types="reject"))
    registered, version = await schemas.register("ping", TypeChange(description="liveness", owner="ops"))
    assert (registered.version, version, registered.owner) == (0, None, "ops")
    anything = event({"type": "ping", "data": [1, 2]})
    await schemas.check_incoming([anything], "billing")
    assert anything.dataschema is None


async def test_versions_are_numbered_and_old_ones_stay_readable(fake: fakeredis.FakeAsyncRedis) -> None:
    schemas = await registry(fake)
    v2 = await schemas.add_version("order.created", {**ORDER, "required": ["amount", "currency"]}, note="currency")
    assert (v2.version, v2.note, v2.dataschema) == (2, "currency", "urn:eventflow:schema:order.created:2")
    assert [v.version for v in await schemas.versions("order.created")] == [1, 2]
    assert (await schemas.version("order.created", 1)).schema == ORDER
    assert (await schemas.get("order.created")).version == 2
    again = await schemas.add_version("order.created", {**ORDER, "required": ["amount", "currency"]})
    assert again.version == 2  # the same schema saves nothing
    with pytest.raises(InvalidEvent):
        await schemas.check_incoming([event({"type": "order.created", "data": {"amount": 1}})], "billing")


async def test_adding_a_version_to_an_unknown_type_is_404(fake: fakeredis.FakeAsyncRedis) -> None:
    with pytest.raises(NotFound):
        await Schemas(fake, Settings(prefix="unit")).add_version("nope", ORDER)


async def test_a_version_that_rejects_recent_events_needs_force(fake: fakeredis.FakeAsyncRedis) -> None:
    services = Services(fake, Settings(prefix="unit", schema_check_recent=10))
    await services.ingest([event({"type": "order.created", "data": {"amount": n}}) for n in (-1, 2, -3)], "billing", {})
    with pytest.raises(SchemaConflict) as exc:
        await services.schemas.register("order.created", TypeChange(description="orders", schema=ORDER))
    check = exc.value.check
    assert (check.checked, check.failing) == (3, 2)
    assert {e.errors[0]["pointer"] for e in check.examples} == {"/data/amount"}
    with pytest.raises(NotFound):  # nothing was saved, not even the description
        await services.schemas.get("order.created")
    _registered, version = await services.schemas.register("order.created", TypeChange(schema=ORDER, force=True))
    assert version is not None and version.forced and version.recent_check is not None


async def test_a_dry_run_reports_without_storing(fake: fakeredis.FakeAsyncRedis) -> None:
    schemas = await registry(fake)
    verdict = await schemas.dry_run(event({"type": "order.created", "data": {"amount": -1}}))
    assert (verdict.valid, verdict.outcome, verdict.version) == (False, "rejected", 1)
    assert verdict.errors == [{"pointer": "/data/amount", "detail": "-1 is less than the minimum of 0",
                               "keyword": "minimum"}]
    assert (await schemas.dry_run(event({"type": "order.created", "data": {"amount": 1}}))).outcome == "accepted"
    unknown = await schemas.dry_run(event({"type": "other"}))
    assert (unknown.registered, unknown.outcome) == (False, "accepted")
    assert await schemas.failure_counts() == {}


async def test_another_process_sees_a_change_after_its_next_poll(fake: fakeredis.FakeAsyncRedis) -> None:
    here = await registry(fake)
    there = Schemas(fake, Settings(prefix="unit"))
    ok = event({"type": "order.created", "data": {"amount": 1, "currency": "GBP"}})
    with pytest.raises(InvalidEvent):
        await there.check_incoming([ok], "billing")  # the first use loads the registry
    await here.add_version("order.created", {"type": "object"})
    with pytest.raises(InvalidEvent):  # until its next poll it validates with the version it has
        await there.check_incoming([ok], "billing")
    there._next_check = 0.0  # the poll is due (REFRESH_S later)
    await there.check_incoming([ok], "billing")
