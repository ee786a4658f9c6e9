"""The operator API's bulk dead-letter actions: a filter selects exactly what it says (a misspelt key
or an empty filter is a 422, never a selection of everything), and bodies' 422s name their field."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest

from app.deadletters import Filter
from app.events import parse_request
from app.service import Services
from app.settings import Settings
from consumers.base import Consumer, Delivery, Permanent
from tests.integration.helpers import assert_problem, consuming, wait_for

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
TOKEN = "operator-token"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api(make_client: MakeClient) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(api_token=TOKEN) as client:
        yield client


@pytest.fixture
async def three_dead_letters(services: Services, settings: Settings) -> AsyncIterator[None]:
    async def refuses(delivery: Delivery) -> None:
        raise Permanent("the downstream said no")

    async def dead() -> bool:
        return len(await services.dead_letters.list(Filter(group="picky"))) == 3

    async with consuming(services.redis, settings, Consumer("picky", refuses)):
        for n in range(3):
            events, _ = parse_request(f'{{"type": "t", "data": {n}}}'.encode(), "application/json", {})
            await services.ingest(events, "billing", {})
        await wait_for(dead)
        yield


@pytest.mark.usefixtures("three_dead_letters")
async def test_a_bulk_action_takes_exactly_what_its_filter_selects(api: httpx.AsyncClient, services: Services) -> None:
    long_ago = {"group": "picky", "until": "2000-01-01T00:00:00Z"}
    resp = await api.post("/v1/dead-letters/discard", headers=OPERATOR, json={"filter": long_ago})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"selected": 0, "discarded": 0}
    for flt, pointer in (({"grp": "picky"}, "/filter/grp"), ({}, "/filter"),
                         ({"group": "picky", "since": "yesterday"}, "/filter/since")):
        for action in ("discard", "replay"):
            assert_problem(await api.post(f"/v1/dead-letters/{action}", headers=OPERATOR, json={"filter": flt}),
                           422, pointer)
    assert len(await services.dead_letters.list(Filter(group="picky"))) == 3  # none of that touched them

    an_hour_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    resp = await api.post("/v1/dead-letters/discard", headers=OPERATOR,
                          json={"filter": {"group": "picky", "since": an_hour_ago}})
    assert resp.json() == {"selected": 3, "discarded": 3}
    assert await services.dead_letters.list(Filter(group="picky")) == []


@pytest.mark.usefixtures("three_dead_letters")
async def test_malformed_ids_in_a_bulk_action_are_named_by_their_place_in_ids(
    api: httpx.AsyncClient, services: Services
) -> None:
    good = (await services.dead_letters.list(Filter(group="picky")))[0].id
    for action in ("discard", "replay"):
        resp = await api.post(f"/v1/dead-letters/{action}", headers=OPERATOR, json={"ids": [good, "x", good, "7:1-0"]})
        assert_problem(resp, 422, "/ids/1", "/ids/3")
    assert len(await services.dead_letters.list(Filter(group="picky"))) == 3  # all or nothing
    assert_problem(await api.get("/v1/dead-letters/x", headers=OPERATOR), 422, "/id")


async def test_a_time_range_the_wrong_way_round_is_a_422_naming_until(api: httpx.AsyncClient) -> None:
    # It selected nothing, silently (GET /v1/stats already refused it).
    later, earlier = "2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"
    assert_problem(await api.get(f"/v1/dead-letters?since={later}&until={earlier}", headers=OPERATOR), 422, "/until")
    for flt in ({"since": later, "until": earlier}, {"since_ms": 5, "until_ms": 4}):
        resp = await api.post("/v1/dead-letters/replay", headers=OPERATOR, json={"filter": flt})
        assert_problem(resp, 422, "/filter/until")
    for path in ("/v1/replay", "/v1/archive/replay"):
        resp = await api.post(path, headers=OPERATOR, json={"group": "g", "since": later, "until": earlier})
        assert_problem(resp, 422, "/until")


async def test_a_history_replay_body_s_problems_name_their_field(api: httpx.AsyncClient) -> None:
    assert_problem(await api.post("/v1/replay", headers=OPERATOR, json={"since": "2026-01-01T00:00:00Z"}),
                   422, "/group")
    assert_problem(await api.post("/v1/replay", headers=OPERATOR,
                                  json={"group": "g", "since": "2026-01-01T00:00:00Z", "extra": 1}), 422, "/extra")
    assert_problem(await api.post("/v1/replay", headers=OPERATOR, json={"group": 5, "since": "x"}), 422, "/group")
    for since in (-1, True, 1.5):  # a number is milliseconds since the epoch: a whole one, not below 0
        resp = await api.post("/v1/replay", headers=OPERATOR, json={"group": "g", "since": since})
        assert_problem(resp, 422, "/since")


@pytest.mark.usefixtures("three_dead_letters")
async def test_the_dlq_cli_lists_shows_and_takes_only_what_its_filters_select(
    services: Services, settings: Settings
) -> None:
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix}

    async def cli(*args: str) -> tuple[int, Any, bytes]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", "dlq", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, json.loads(out) if out.strip() else None, err

    code, listed, err = await cli("list", "--group", "picky")
    assert code == 0, err
    assert len(listed) == 3 and {d["reason"] for d in listed} == {"permanent"}
    code, shown, err = await cli("show", listed[0]["id"])
    assert code == 0 and shown["error"] == listed[0]["error"], err
    code, done, err = await cli("discard", "--all", "--group", "picky", "--until", "2000-01-01T00:00:00Z")
    assert (code, done) == (0, {"selected": 0, "discarded": 0}), err
    code, _, err = await cli("discard", "--group", "picky")  # neither ids nor --all: refused
    assert code == 1 and b"--all" in err
    code, done, err = await cli("discard", listed[0]["id"])
    assert (code, done) == (0, {"selected": 1, "discarded": 1}), err
    assert len(await services.dead_letters.list(Filter(group="picky"))) == 2


async def test_a_history_replay_over_http_and_the_cli_goes_to_one_group_only(
    api: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    # `POST /v1/replay` and `eventflow replay --group G --since T [--until T]` deliver a time range of
    # the log again to the named group, and to no other.
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def recorder(group: str) -> Callable[[Delivery], Any]:
        async def handle(delivery: Delivery) -> None:
            seen[group].append(delivery.entry_id)
        return handle

    async with consuming(services.redis, settings, Consumer("a", recorder("a")), Consumer("b", recorder("b"))):
        ids = []
        for n in range(3):
            events, _ = parse_request(f'{{"type": "t", "data": {n}}}'.encode(), "application/json", {})
            ids.append((await services.ingest(events, "billing", {}))[0].entry_id)
        await wait_for(lambda: len(seen["a"]) == len(seen["b"]) == 3)
        first_ms, last_ms = int(ids[0].split("-")[0]), int(ids[-1].split("-")[0])
        since = dt.datetime.fromtimestamp(first_ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")
        resp = await api.post("/v1/replay", headers=OPERATOR, json={"group": "a", "since": since})
        assert resp.status_code == 202, resp.text
        assert resp.json() == {"group": "a", "queued": 3}
        await wait_for(lambda: len(seen["a"]) == 6)

        env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "replay", "--group", "a", "--since", str(first_ms),
            "--until", str(last_ms + 1), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err
        assert json.loads(out) == {"group": "a", "queued": 3}
        await wait_for(lambda: len(seen["a"]) == 9)
        # Milliseconds as JSON numbers, as the CLI and GET /v1/events take them (they were a 422).
        resp = await api.post("/v1/replay", headers=OPERATOR, json={"group": "a", "since": first_ms,
                                                                     "until": last_ms + 1})
        assert resp.status_code == 202, resp.text
        assert resp.json() == {"group": "a", "queued": 3}
        await wait_for(lambda: len(seen["a"]) == 12)
        await asyncio.sleep(0.2)  # time for a wrong delivery to "b" to show
    assert sorted(seen["a"]) == sorted(ids * 4)
    assert seen["b"] == ids
    assert_problem(await api.post("/v1/replay", headers=OPERATOR, json={"group": "nobody", "since": since}), 404)
