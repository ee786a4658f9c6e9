"""Event types and schemas against the real server: the API, ingest in every mode, dry runs, versions,
the recent-events check, direct writes dead-lettered by the dispatcher, and the cache across processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.deadletters import Filter
from app.errors import InvalidEvent
from app.events import parse_request
from app.schemas import REFRESH_S, TypeChange
from app.service import Services
from app.settings import Settings
from consumers.base import Consumer, Delivery
from consumers.runner import Runner
from tests.integration.helpers import assert_problem

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
TOKEN = "operator-token"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
JSON_CONTENT = {"Content-Type": "application/json"}
ORDER = {
    "type": "object",
    "properties": {"amount": {"type": "number", "minimum": 0}, "currency": {"enum": ["EUR", "USD"]}},
    "required": ["amount"],
}


@pytest.fixture
async def api(make_client: MakeClient) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(api_token=TOKEN) as c:
        yield c


async def register(api: httpx.AsyncClient, mode: str = "enforce", schema: Any = ORDER, **more: Any) -> httpx.Response:
    resp = await api.put("/v1/event-types/order.created", headers=OPERATOR,
                         json={"description": "an order was placed", "owner": "billing-team", "mode": mode,
                               "schema": schema, **more})
    return resp


async def stored(redis: Redis, settings: Settings) -> list[dict[str, str]]:
    from app.keys import Keys

    raw = await redis.xrange(Keys(settings.prefix).stream(0))
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in raw]


async def test_an_operator_registers_a_type_with_a_schema(api: httpx.AsyncClient, auth: dict[str, str]) -> None:
    resp = await register(api)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["type"]["name"] == "order.created"
    assert (body["type"]["owner"], body["type"]["mode"], body["type"]["version"]) == ("billing-team", "enforce", 1)
    assert body["version"]["dataschema"] == "urn:eventflow:schema:order.created:1"
    listed = (await api.get("/v1/event-types", headers=auth)).json()["types"]
    assert [t["name"] for t in listed] == ["order.created"]
    one = (await api.get("/v1/event-types/order.created", headers=auth)).json()
    assert one["schema"]["schema"] == ORDER
    assert_problem(await api.put("/v1/event-types/x", headers=auth, json={"mode": "off"}), 403)


async def test_enforce_answers_422_with_a_pointer_and_keyword_per_failing_field(
    api: httpx.AsyncClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    await register(api)
    resp = await api.post("/v1/events", headers=auth,
                          json={"type": "order.created", "data": {"amount": -1, "currency": "GBP"}})
    body = assert_problem(resp, 422, "/data/amount", "/data/currency")
    assert {e["keyword"] for e in body["errors"]} == {"minimum", "enum"}
    batch = [{"type": "order.created", "data": {"amount": 1}}, {"type": "order.created", "data": {}}]
    body = assert_problem(await api.post("/v1/events/batch", headers=auth, json=batch), 422, "/events/1/data/amount")
    assert body["errors"][0]["keyword"] == "required"
    assert await stored(redis, settings) == []  # all or nothing


async def test_a_valid_event_records_the_schema_version_as_dataschema(
    api: httpx.AsyncClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    await register(api)
    resp = await api.post("/v1/events", headers=auth, json={"type": "order.created", "data": {"amount": 2}})
    assert resp.status_code == 202, resp.text
    [entry] = await stored(redis, settings)
    assert entry["dataschema"] == "urn:eventflow:schema:order.created:1"
    read = (await api.get(f"/v1/events/{resp.json()['id']}", headers=auth)).json()
    assert read["event"]["dataschema"] == "urn:eventflow:schema:order.created:1"
    for given, kept in (("urn:eventflow:schema:order.created:99", "urn:eventflow:schema:order.created:1"),
                        ("https://schemas.example.com/order.json", "https://schemas.example.com/order.json")):
        resp = await api.post("/v1/events", headers=auth,
                              json={"type": "order.created", "dataschema": given, "data": {"amount": 2}})
        read = (await api.get(f"/v1/events/{resp.json()['id']}", headers=auth)).json()
        assert read["event"]["dataschema"] == kept


async def test_warn_accepts_flags_the_event_and_counts_it(
    api: httpx.AsyncClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    await register(api, mode="warn")
    resp = await api.post("/v1/events", headers=auth, json={"type": "order.created", "data": {"amount": -3}})
    assert resp.status_code == 202, resp.text
    [entry] = await stored(redis, settings)
    assert json.loads(entry["_x"]) == {"schemaerrors": "/data/amount minimum"}
    read = (await api.get(f"/v1/events/{resp.json()['id']}", headers=auth)).json()
    assert read["event"]["schemaerrors"] == "/data/amount minimum"
    failures = (await api.get("/v1/event-types/order.created/failures", headers=auth)).json()
    assert failures["counts"] == {"flagged": 1}
    assert failures["recent"][0]["errors"][0]["pointer"] == "/data/amount"


async def test_off_accepts_anything_unchecked(api: httpx.AsyncClient, auth: dict[str, str], redis: Redis,
                                              settings: Settings) -> None:
    await register(api, mode="off")
    resp = await api.post("/v1/events", headers=auth, json={"type": "order.created", "data": "no object"})
    assert resp.status_code == 202
    [entry] = await stored(redis, settings)
    assert "dataschema" not in entry and "_x" not in entry


async def test_unregistered_types_are_accepted_unless_the_setting_rejects_them(
    make_client: MakeClient, auth: dict[str, str]
) -> None:
    async with make_client() as c:
        assert (await c.post("/v1/events", headers=auth, json={"type": "anything"})).status_code == 202
    async with make_client(unknown_types="reject", api_token=TOKEN) as c:
        assert_problem(await c.post("/v1/events", headers=auth, json={"type": "anything"}), 422, "/type")
        await c.put("/v1/event-types/anything", headers=OPERATOR, json={"description": "now known"})
        assert (await c.post("/v1/events", headers=auth, json={"type": "anything"})).status_code == 202


async def test_the_dry_run_validates_a_sample_without_storing_it(
    api: httpx.AsyncClient, auth: dict[str, str], redis: Redis, settings: Settings
) -> None:
    await register(api)
    bad = await api.post("/v1/event-types/order.created/validate", headers=auth, json={"data": {"amount": -1}})
    assert bad.status_code == 200, bad.text
    verdict = bad.json()
    assert (verdict["valid"], verdict["outcome"], verdict["version"]) == (False, "rejected", 1)
    assert verdict["errors"] == [{"pointer": "/data/amount", "detail": "-1 is less than the minimum of 0",
                                  "keyword": "minimum"}]
    good = await api.post("/v1/event-types/order.created/validate", headers=auth,
                          json={"type": "order.created", "data": {"amount": 1}})
    assert good.json()["outcome"] == "accepted"
    ce = await api.post("/v1/event-types/order.created/validate",
                        headers={**auth, "ce-specversion": "1.0", "ce-type": "order.created", "ce-id": "x",
                                 "Content-Type": "application/json"}, content=b'{"amount": "3"}')
    assert ce.json()["errors"][0]["keyword"] == "type"
    assert_problem(await api.post("/v1/event-types/order.created/validate", headers=auth,
                                  json={"type": "other"}), 422, "/type")
    assert await stored(redis, settings) == []


@pytest.mark.parametrize("body", [b'{"data": "caf\xe9"}', b'{"data": ' * 3000 + b"1" + b"}" * 3000])
async def test_a_dry_run_of_invalid_utf8_or_too_deep_json_is_a_400(
    api: httpx.AsyncClient, auth: dict[str, str], body: bytes
) -> None:
    # The sample is decoded once to add the path's type: that decode's errors were a 500.
    resp = await api.post("/v1/event-types/order.created/validate", headers={**auth, **JSON_CONTENT}, content=body)
    assert_problem(resp, 400)


async def test_new_versions_apply_to_new_events_and_old_versions_stay_readable(
    api: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await register(api)
    v2 = {**ORDER, "required": ["amount", "currency"]}
    resp = await api.post("/v1/event-types/order.created/schemas", headers=OPERATOR, json={"schema": v2, "note": "c"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["version"] == 2
    versions = (await api.get("/v1/event-types/order.created/schemas", headers=auth)).json()["versions"]
    assert [(v["version"], v["schema"]) for v in versions] == [(1, ORDER), (2, v2)]
    assert (await api.get("/v1/event-types/order.created/schemas/1", headers=auth)).json()["schema"] == ORDER
    assert_problem(await api.get("/v1/event-types/order.created/schemas/9", headers=auth), 404)
    assert_problem(await api.post("/v1/events", headers=auth, json={"type": "order.created", "data": {"amount": 1}}),
                   422, "/data/currency")
    old = await api.post("/v1/event-types/order.created/validate?version=1", headers=auth, json={"data": {"amount": 1}})
    assert (old.json()["valid"], old.json()["version"]) == (True, 1)


async def test_a_version_that_would_reject_recent_events_needs_force(
    api: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await register(api, mode="warn")
    for amount in (1, -2, 3):
        await api.post("/v1/events", headers=auth, json={"type": "order.created", "data": {"amount": amount}})
    stricter = {**ORDER, "properties": {"amount": {"type": "number", "minimum": 2}}}
    refused = await api.post("/v1/event-types/order.created/schemas", headers=OPERATOR, json={"schema": stricter})
    body = assert_problem(refused, 409)
    check = body["recent_check"]
    assert (check["checked"], check["failing"]) == (3, 2)
    assert all(e["errors"][0]["pointer"] == "/data/amount" for e in check["examples"])
    assert (await api.get("/v1/event-types/order.created", headers=auth)).json()["type"]["version"] == 1
    forced = await api.post("/v1/event-types/order.created/schemas", headers=OPERATOR,
                            json={"schema": stricter, "force": True})
    assert forced.status_code == 201
    assert (forced.json()["version"], forced.json()["forced"]) == (2, True)


async def test_an_invalid_schema_is_refused_with_a_pointer_into_it(api: httpx.AsyncClient) -> None:
    resp = await register(api, schema={"type": "object", "properties": {"amount": {"minimum": "zero"}}})
    assert_problem(resp, 422, "/schema/properties/amount/minimum")
    for dialect in (None, 5, ["x"]):
        assert_problem(await register(api, schema={"$schema": dialect, "type": "object"}), 422, "/schema/$schema")
    assert_problem(await api.get("/v1/event-types/order.created", headers=OPERATOR), 404)


@pytest.mark.parametrize(("field", "cap"), [("description", 2000), ("owner", 200), ("note", 2000)])
async def test_free_text_longer_than_its_cap_is_a_422_naming_it(api: httpx.AsyncClient, field: str, cap: int) -> None:
    # Stored as sent, whatever its size (a megabyte of description went into the registry and onto
    # every Types page).
    assert_problem(await register(api, **{field: "x" * (cap + 1)}), 422, f"/{field}")
    assert_problem(await api.get("/v1/event-types/order.created", headers=OPERATOR), 404)
    assert (await register(api, **{field: "é" * cap})).status_code == 200  # characters, not bytes
    if field == "note":
        version = {"schema": {"type": "object"}, "note": "x" * (cap + 1)}
        refused = await api.post("/v1/event-types/order.created/schemas", headers=OPERATOR, json=version)
        assert_problem(refused, 422, "/note")
        assert len((await api.get("/v1/event-types/order.created/schemas", headers=OPERATOR)).json()["versions"]) == 1


@pytest.fixture
async def run_consumers(redis: Redis, settings: Settings) -> AsyncIterator[Callable[..., Runner]]:
    runners: list[tuple[Runner, asyncio.Task[None]]] = []

    def start(*consumers: Consumer) -> Runner:
        runner = Runner(list(consumers), redis, settings, "w1")
        runners.append((runner, asyncio.create_task(runner.run())))
        return runner

    yield start
    for runner, task in runners:
        runner.stop.set()
        await asyncio.wait_for(task, 10)


async def test_direct_writes_failing_the_schema_are_dead_lettered_with_the_errors(
    services: Services, redis: Redis, run_consumers: Callable[..., Runner]
) -> None:
    await services.schemas.register("order.created", TypeChange(schema=ORDER))
    seen: list[Any] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.data)

    run_consumers(Consumer("orders", handler))
    stream = services.log.keys.stream(0)
    await redis.xadd(stream, {"type": "order.created", "source": "pos", "data": '{"amount": -4}'})
    await redis.xadd(stream, {"type": "order.created", "source": "pos", "data": '{"amount": 4}'})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (seen and await services.dead_letters.list(Filter())):
        await asyncio.sleep(0.05)
    assert seen == [{"amount": 4}]
    [letter] = await services.dead_letters.list(Filter())
    assert letter.reason == "invalid"
    assert "/data/amount" in letter.error and "minimum" in letter.error and "schema v1" in letter.error
    assert (await services.schemas.failure_counts())["order.created"] == {"dead-lettered": 1}


async def test_a_schema_change_reaches_another_process_within_the_poll_interval(
    redis: Redis, settings: Settings
) -> None:
    here, there = Services(redis, settings), Services(redis, settings)  # two web processes
    await here.schemas.register("order.created", TypeChange(schema=ORDER))
    gbp = parse_request(b'{"type": "order.created", "data": {"amount": 1, "currency": "GBP"}}',
                        "application/json", {})[0]
    with pytest.raises(InvalidEvent):
        await there.ingest(gbp, "billing", {})  # compiled and cached there
    await here.schemas.add_version("order.created", {"type": "object"}, force=True)
    changed = time.monotonic()
    while True:
        try:
            await there.ingest(gbp, "billing", {})
            break
        except InvalidEvent:
            assert time.monotonic() - changed < REFRESH_S + 0.5, "the other process kept the old schema"
            await asyncio.sleep(0.05)
    assert time.monotonic() - changed <= REFRESH_S + 0.5


async def test_the_cli_registers_versions_and_dry_runs(services: Services, settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix}

    async def cli(*args: str) -> tuple[int, Any, bytes]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, json.loads(out) if out.strip() else None, err

    schema = tmp_path / "order.json"
    schema.write_text(json.dumps(ORDER))
    code, body, err = await cli("types", "register", "order.created", "--owner", "billing-team",
                                "--schema", str(schema))
    assert code == 0, err
    assert (body["type"]["version"], body["type"]["owner"]) == (1, "billing-team")
    await services.ingest(parse_request(b'{"type":"order.created","data":{"amount":1}}', "application/json", {})[0],
                          "billing", {})
    stricter = tmp_path / "v2.json"
    stricter.write_text(json.dumps({**ORDER, "required": ["amount", "currency"]}))
    code, report, err = await cli("types", "add-version", "order.created", str(stricter))
    assert code == 1 and b"would fail" in err
    assert b"--force" in err  # the CLI's way to save it anyway, not the HTTP body's force=true
    assert (report["checked"], report["failing"]) == (1, 1)
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"data": {"amount": -1}}))
    code, verdict, err = await cli("types", "validate", "order.created", str(sample))
    assert code == 1, err  # a failing sample fails the command, so a build can check its samples
    assert (verdict["outcome"], verdict["errors"][0]["pointer"]) == ("rejected", "/data/amount")
    sample.write_text(json.dumps({"data": {"amount": 1}}))
    code, verdict, err = await cli("types", "validate", "order.created", str(sample))
    assert (code, verdict["outcome"], verdict["valid"]) == (0, "accepted", True), err
    code, _, err = await cli("types", "validate", "order.created", str(tmp_path / "missing.json"))
    assert code != 0 and b"cannot read" in err and b"Traceback" not in err


async def test_producers_create_names_its_option_when_the_description_is_too_long(
    services: Services, settings: Settings
) -> None:
    # Walking the text caps: `types register --owner` said "--owner: at most 200 characters", but
    # `producers create --description` said "/description: ...", the API's pointer, on the CLI.
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "producers", "create", "walker", "--description", "x" * 501, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, out, err) == (1, b"", b"eventflow: --description: at most 500 characters\n")
    assert "walker" not in [p.name for p in await services.producers.list()]


@pytest.mark.parametrize(("field", "cap"), [("description", 2000), ("owner", 200), ("note", 2000)])
async def test_the_cli_refuses_free_text_longer_than_its_cap_in_one_line(
    services: Services, settings: Settings, field: str, cap: int
) -> None:
    # `eventflow types register` stored free text of any size, while the API refused it.
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix}

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await cli("types", "register", "order.created", f"--{field}", "x" * (cap + 1))
    assert (code, out) == (1, "")
    assert err == f"eventflow: --{field}: at most {cap} characters\n"
    assert await services.schemas.registered() == []
    code, _, err = await cli("types", "register", "order.created", f"--{field}", "é" * cap)  # characters
    assert code == 0, err
    if field == "note":
        # The note is refused before the schema file is read (this one does not exist).
        code, out, err = await cli("types", "add-version", "order.created", "/nonexistent/schema.json",
                                   "--note", "x" * (cap + 1))
        assert (code, out, err) == (1, "", f"eventflow: --note: at most {cap} characters\n")
    with pytest.raises(InvalidEvent) as refused:  # and the service itself, whoever calls it
        await services.schemas.register("order.created", TypeChange(**{field: "x" * (cap + 1)}))
    assert [p.pointer for p in refused.value.problems] == [f"/{field}"]
