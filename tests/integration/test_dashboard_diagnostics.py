"""The dashboard's diagnostic views over HTTP (no browser), with real data: the Errors page (failure
groups from running consumers), the Types pages (schemas, counts from the analytics consumer, warn-mode
failures), the event page's trace, and retention held back by a slow group."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from redis.asyncio import Redis

from app.dispatch import Dispatch
from app.events import parse_request
from app.schemas import Mode, TypeChange
from app.service import Services
from app.settings import Settings
from app.stats import MAX_SERIES, MINUTE_MS, Stats, StatsWriter, now_ms
from app.web.dashboard import pages
from consumers import analytics
from consumers.base import Backoff, Consumer, Delivery, Permanent, Retry
from consumers.runner import Runner
from tests.integration.dashboard_helpers import cheap_hashing, logged_in  # noqa: F401
from tests.integration.test_dashboard_pages import wait_for

pytestmark = pytest.mark.usefixtures("cheap_hashing")

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
ADMIN = ("ada", "ada-password-1")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
async def admin(services: Services, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue("cheap_hashing")
    await services.users.create(ADMIN[0], "admin", ADMIN[1])


@pytest.fixture
async def run(redis: Redis, settings: Settings) -> AsyncIterator[Callable[..., Runner]]:
    """`run(consumer, ...)`: run consumers in this process until the test ends."""
    started: list[tuple[Runner, asyncio.Task[None]]] = []

    def start(*consumers: Consumer) -> Runner:
        runner = Runner(list(consumers), redis, settings, f"w{len(started) + 1}")
        started.append((runner, asyncio.create_task(runner.run())))
        return runner

    yield start
    for runner, task in started:
        runner.stop.set()
        await asyncio.wait_for(task, 10)


async def post(services: Services, body: str, source: str = "billing", headers: dict[str, str] | None = None) -> str:
    events, _ = parse_request(body.encode(), "application/json", {})
    return (await services.ingest(events, source, headers or {}))[0].entry_id


async def test_the_errors_page_groups_failures_newest_first_and_filters_by_consumer(
    make_client: MakeClient, services: Services, run: Callable[..., Runner]
) -> None:
    async def refuse(delivery: Delivery) -> None:
        raise Permanent(f"order {delivery.data['order']} refused by the warehouse")

    async def slow_once(delivery: Delivery) -> None:
        if delivery.attempt == 1:
            raise TimeoutError(f"no answer in {900 + delivery.data['order']} ms")

    run(Consumer("warehouse", refuse), Consumer("mailer", slow_once, types=("order.*",), backoff=Backoff(base_s=0.05)))
    for n in range(3):
        await post(services, f'{{"type": "order.created", "id": "order-{n}", "data": {{"order": {n}}}}}')

    async def counted(expected: dict[str, int]) -> bool:
        return {g.consumer: g.count for g in await services.error_groups()} == expected

    await wait_for(lambda: counted({"warehouse": 3, "mailer": 3}))
    await post(services, '{"type": "order.created", "id": "order-9", "data": {"order": 9}}')
    await wait_for(lambda: counted({"warehouse": 4, "mailer": 4}))
    await post(services, '{"type": "stock.counted", "id": "stock-1", "data": {"order": 1}}')  # the warehouse only
    await wait_for(lambda: counted({"warehouse": 5, "mailer": 4}))

    async with make_client() as client:
        await logged_in(client, *ADMIN)
        page = (await client.get("/errors")).text
        assert '<a href="/errors" aria-current="page">Errors</a>' in page
        by_consumer = {g.consumer: g for g in await services.error_groups()}
        rows = re.findall(r'data-error-group="([0-9a-f]+)"', page)
        assert rows == [by_consumer["warehouse"].id, by_consumer["mailer"].id]  # the one seen last comes first
        assert "order &lt;n&gt; refused by the warehouse" in page and "no answer in &lt;n&gt; ms" in page
        assert "Permanent" in page and "TimeoutError" in page
        assert re.search(r"order [012] refused by the warehouse", page)  # the raw example, as first raised
        warehouse = _row(page, by_consumer["warehouse"].id)
        assert "<strong>5</strong>" in warehouse and "5 dead" in warehouse
        assert 'href="/dead-letters?group=warehouse"' in warehouse
        samples = re.findall(r'class="sample" href="([^"]+)"', warehouse)
        assert samples[:2] == ["/events/stock-1", "/events/order-9"]  # newest first
        assert sorted(samples[2:]) == ["/events/order-0", "/events/order-1", "/events/order-2"]
        sample = await client.get(samples[0])
        assert sample.status_code == 200 and "<h1>stock.counted</h1>" in sample.text
        mailer = _row(page, by_consumer["mailer"].id)
        assert "<strong>4</strong>" in mailer and " dead" not in mailer

        only = (await client.get("/errors?consumer=warehouse")).text
        assert re.findall(r'data-error-group="([0-9a-f]+)"', only) == [by_consumer["warehouse"].id]
        assert '<option value="warehouse" selected>' in only and '<option value="mailer">' in only
        none = (await client.get("/errors?consumer=nobody")).text
        assert "data-error-group" not in none and "No errors in nobody" in none


def _row(page: str, group_id: str) -> str:
    start = page.index(f'data-error-group="{group_id}"')
    return page[start:page.index("</tr>", start)]


async def test_the_errors_page_is_empty_without_failures(make_client: MakeClient) -> None:
    async with make_client() as client:
        await logged_in(client, *ADMIN)
        page = (await client.get("/errors")).text
        assert "No errors" in page and "data-error-group" not in page


ORDER_SCHEMA = {"type": "object", "required": ["amount"],
                "properties": {"amount": {"type": "number", "minimum": 0}}}


async def test_the_types_page_lists_seen_and_registered_types_with_schemas_and_failures(
    make_client: MakeClient, services: Services, redis: Redis, settings: Settings, run: Callable[..., Runner]
) -> None:
    await services.schemas.register("order.created", TypeChange(
        description="A customer placed an order", owner="shop-team", mode=Mode.WARN, schema=ORDER_SCHEMA))
    await services.schemas.register("refund.issued", TypeChange(description="Not sent yet"))
    for amount in (10, 25):
        await post(services, f'{{"type": "order.created", "data": {{"amount": {amount}}}}}')
    await post(services, '{"type": "order.created", "id": "bad-order", "data": {"amount": -5}}')
    await post(services, '{"type": "user.signed_up", "data": {}}', source="accounts")

    async with make_client() as client:  # nothing counts events yet: registered types are listed anyway
        await logged_in(client, *ADMIN)
        page = (await client.get("/types")).text
        assert "the analytics consumer keeps them, and it does not run" in page
        assert 'data-type="order.created"' in page and 'data-type="refund.issued"' in page
        assert 'data-type="user.signed_up"' not in page

    run(analytics.build(settings, redis))

    async def counted() -> bool:
        counts = {c.type: c.count for c in await Stats(redis, settings).type_counts()}  # a fresh cache each time
        return counts == {"order.created": 3, "user.signed_up": 1}

    await wait_for(counted)
    await services.schemas.add_version("order.created", {**ORDER_SCHEMA, "required": ["amount", "currency"]},
                                       force=True, note="currency is required from now on")

    async with make_client() as client:
        await logged_in(client, *ADMIN)
        page = (await client.get("/types")).text
        assert '<a href="/types" aria-current="page">Types</a>' in page
        assert "does not run" not in page
        assert re.findall(r'data-type="([^"]+)"', page) == ["order.created", "user.signed_up", "refund.issued"]
        order = _type_row(page, "order.created")
        assert 'href="/events?type=order.created">3</a>' in order
        assert '<a href="/types/order.created#versions">v2</a>' in order and "2 versions" in order
        assert 'badge-warn">warn</span>' in order and "flagged 1" in order
        signed_up = _type_row(page, "user.signed_up")
        assert "not registered" in signed_up and ">1</a>" in signed_up
        assert re.search(r">(this minute|1 min ago)</time>", signed_up)  # counted to the minute
        refund = _type_row(page, "refund.issued")
        assert "no schema yet" in refund and ">0</td>" in refund
        recent = page[page.index("Recent validation failures"):]
        assert "/data/amount: " in recent and "(minimum)" in recent and 'href="/events/bad-order"' in recent

        detail = (await client.get("/types/order.created")).text
        assert "A customer placed an order" in detail and "shop-team" in detail
        assert "events that fail are accepted and flagged" in detail
        versions = re.findall(r'<details class="version" id="v(\d)"( open)?>', detail)
        assert versions == [("2", " open"), ("1", "")]
        assert "currency is required from now on" in detail and "forced" in detail
        assert "3 of 3 recent events failed it" in detail
        assert "&#34;currency&#34;" in detail and "&#34;minimum&#34;: 0" in detail
        assert "urn:eventflow:schema:order.created:2" in detail

        missing = await client.get("/types/user.signed_up")
        assert missing.status_code == 404 and "no registered event type" in missing.text


def _type_row(page: str, name: str) -> str:
    start = page.index(f'data-type="{name}"')
    return page[start:page.index("</tr>", start)]


async def test_type_counts_list_every_type_with_its_newest_minute(redis: Redis, settings: Settings) -> None:
    writer = StatsWriter(redis, settings)
    now = now_ms()
    for n in range(MAX_SERIES + 5):  # more than a chart shows: none is folded into "(other)"
        for _ in range(n + 1):
            writer.add(f"type.{n:02d}", "src", now - 3 * MINUTE_MS)
    writer.add("type.00", "src", now)
    await writer.close()
    counts = await Stats(redis, settings).type_counts()
    expected = [f"type.{n:02d}" for n in range(MAX_SERIES + 4, 1, -1)] + ["type.00", "type.01"]  # ties: by name
    assert [c.type for c in counts] == expected
    assert [c.count for c in counts][-3:] == [3, 2, 2]
    assert counts[-2].last_minute_ms == now // MINUTE_MS * MINUTE_MS
    assert counts[-1].last_minute_ms == (now - 3 * MINUTE_MS) // MINUTE_MS * MINUTE_MS


async def test_the_event_page_shows_the_trace_with_each_attempt_s_span(
    make_client: MakeClient, services: Services, run: Callable[..., Runner]
) -> None:
    async def once_more(delivery: Delivery) -> None:
        if delivery.attempt == 1:
            raise Retry(delay_s=0.05, reason="inventory locked")

    async def steady(delivery: Delivery) -> None:
        return None

    run(Consumer("inventory", once_more), Consumer("ledger", steady))
    entry = await post(services, '{"type": "order.created", "data": {}}', headers={"traceparent": TRACEPARENT})

    async def settled() -> bool:
        detail = await services.get_event(entry, None)
        return [d.state for d in detail.deliveries] == ["succeeded", "succeeded"]

    await wait_for(settled)
    detail = await services.get_event(entry, None)
    [inventory, ledger] = detail.deliveries
    spans = [a.span_id for a in inventory.attempts]
    assert [a.outcome for a in inventory.attempts] == ["failed", "succeeded"] and all(spans)
    assert ledger.attempts == []

    async with make_client() as client:
        await logged_in(client, *ADMIN)
        page = (await client.get(f"/events/{entry}")).text
    trace = page[page.index('id="trace-title"'):]
    assert "<code data-trace-id>4bf92f3577b34da6a3ce929d0e0e4736</code>" in trace
    assert "<code>00f067aa0ba902b7</code>" in trace  # the parent every attempt hangs under
    rows = re.findall(r'<tr class="span-child" data-span="([0-9a-f]{16})">', trace)
    assert rows == spans
    assert "<strong>inventory</strong> attempt 1" in trace and "<strong>inventory</strong> attempt 2" in trace
    assert "ledger: succeeded at the first attempt. Such attempts keep no record" in trace
    # The live update of the page carries the trace too.
    assert 'data-span="' + spans[1] in pages.lifecycle_partial(detail)


async def test_retention_held_back_by_a_slow_group_shows_on_the_overview_and_consumers_pages(
    make_client: MakeClient, services: Services, redis: Redis, settings: Settings
) -> None:
    await Dispatch(redis, settings).ensure_groups("slow")  # deployed, but its worker is down
    for n in range(20):
        await post(services, f'{{"type": "t", "data": {n}}}')

    async with make_client() as client:  # no retention policy: nothing to say
        await logged_in(client, *ADMIN)
        assert "Retention is held back" not in (await client.get("/")).text
        assert "Holds back retention" not in (await client.get("/consumers")).text
    async with make_client(retention_max_entries=50) as client:  # a policy the log is within
        await logged_in(client, *ADMIN)
        assert "Retention is held back" not in (await client.get("/")).text

    async with make_client(retention_max_entries=5, retention_s=7 * 86_400) as client:
        await logged_in(client, *ADMIN)
        overview = (await client.get("/")).text
        assert "Retention is held back" in overview and "policy: keep 7 d, at most 5 entries per partition" in overview
        held = overview[overview.index('data-held-group="slow"'):]
        held = held[:held.index("</tr>")]
        assert "15 entries" in held and ">20</td>" in held  # 15 over the limit; 20 not yet delivered (lag)
        consumers = (await client.get("/consumers")).text
        assert "Holds back retention:</strong> 15 entries over the size limit." in consumers
