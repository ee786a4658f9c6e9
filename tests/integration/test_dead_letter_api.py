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


async def test_a_history_replay_body_s_problems_name_their_field(api: httpx.AsyncClient) -> None:
    assert_problem(await api.post("/v1/replay", headers=OPERATOR, json={"since": "2026-01-01T00:00:00Z"}),
                   422, "/group")
    assert_problem(await api.post("/v1/replay", headers=OPERATOR,
                                  json={"group": "g", "since": "2026-01-01T00:00:00Z", "extra": 1}), 422, "/extra")
    assert_problem(await api.post("/v1/replay", headers=OPERATOR, json={"group": 5, "since": "x"}), 422, "/group")


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
