"""Who reads what: a producer key reads its own events; the operator token (EVENTFLOW_API_TOKEN) all."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from tests.integration.helpers import assert_problem

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
OPERATOR = {"Authorization": "Bearer operator-token"}


@pytest.fixture
async def scoped(
    make_client: MakeClient, auth: dict[str, str], new_producer: Callable[[str], Awaitable[dict[str, str]]]
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], dict[str, str]]]:
    """A client on an app with an operator token, and events from `billing` (b-1, b-2) and `shipping` (s-1)."""
    shipping = await new_producer("shipping")
    async with make_client(api_token="operator-token") as c:
        for who, event_id in ((auth, "b-1"), (shipping, "s-1"), (auth, "b-2")):
            resp = await c.post("/v1/events", json={"type": "t", "id": event_id}, headers=who)
            assert resp.status_code == 202, resp.text
        yield c, auth, shipping


async def listed(c: httpx.AsyncClient, headers: dict[str, str], **params: str) -> list[str]:
    resp = await c.get("/v1/events", params=params, headers=headers)
    assert resp.status_code == 200, resp.text
    return [r["event"]["id"] for r in resp.json()["events"]]


async def test_a_producer_lists_only_its_own_events(
    scoped: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]],
) -> None:
    c, billing, shipping = scoped
    assert await listed(c, billing) == ["b-2", "b-1"]
    assert await listed(c, shipping) == ["s-1"]
    assert await listed(c, billing, type="t") == ["b-2", "b-1"]
    assert await listed(c, billing, source="billing") == ["b-2", "b-1"]


async def test_the_operator_token_lists_every_source(
    scoped: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]],
) -> None:
    c, _, _ = scoped
    assert await listed(c, OPERATOR) == ["b-2", "s-1", "b-1"]
    assert await listed(c, OPERATOR, source="shipping") == ["s-1"]


async def test_a_producer_asking_for_another_source_is_403(
    scoped: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]],
) -> None:
    c, billing, _ = scoped
    assert_problem(await c.get("/v1/events", params={"source": "shipping"}, headers=billing), 403)


async def test_a_producer_cannot_fetch_another_producers_event(
    scoped: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]],
) -> None:
    c, billing, shipping = scoped
    assert (await c.get("/v1/events/s-1", headers=shipping)).status_code == 200
    entry_id = (await c.get("/v1/events/s-1", headers=OPERATOR)).json()["entry_id"]
    # 404, not 403: another producer's event ids are not disclosed.
    assert_problem(await c.get("/v1/events/s-1", headers=billing), 404)
    assert_problem(await c.get(f"/v1/events/{entry_id}", headers=billing), 404)


async def test_a_wrong_operator_token_is_401(scoped: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]]) -> None:
    c, _, _ = scoped
    for value in ("Bearer operator-token-2", "Bearer operator-toke", "operator-token", "bearer  operator-token"):
        assert_problem(await c.get("/v1/events", headers={"Authorization": value}), 401)


async def test_the_operator_token_does_not_ingest(
    scoped: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]],
) -> None:
    # Events always carry a producer's source; the operator is not a producer.
    c, _, _ = scoped
    assert_problem(await c.post("/v1/events", json={"type": "t"}, headers=OPERATOR), 401)


async def test_without_an_operator_token_no_bearer_value_reads_everything(
    make_client: MakeClient, auth: dict[str, str]
) -> None:
    async with make_client(api_token=None) as c:
        await c.post("/v1/events", json={"type": "t"}, headers=auth)
        for value in ("Bearer ", "Bearer None", "Bearer null"):
            assert_problem(await c.get("/v1/events", headers={"Authorization": value}), 401)


async def test_each_producer_fetches_its_own_event_when_two_used_the_same_id(
    scoped: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]],
) -> None:
    # CloudEvents ids are unique per source only: (source, id) is the identity.
    c, billing, shipping = scoped
    for who, n in ((billing, 1), (shipping, 2)):
        resp = await c.post("/v1/events", json={"type": "t", "id": "shared", "data": n}, headers=who)
        assert (resp.status_code, resp.json()["duplicate"]) == (202, False)
    mine = await c.get("/v1/events/shared", headers=billing)
    theirs = await c.get("/v1/events/shared", headers=shipping)
    assert (mine.status_code, theirs.status_code) == (200, 200)
    assert (mine.json()["event"]["source"], mine.json()["event"]["data"]) == ("billing", 1)
    assert (theirs.json()["event"]["source"], theirs.json()["event"]["data"]) == ("shipping", 2)
