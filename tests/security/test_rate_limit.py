"""Per-producer rate limits (EVENTFLOW_PRODUCER_RATE_LIMIT): atomic in Redis and shared by every web
process, 429 problem+json with Retry-After beyond the allowance, nothing stored for a refused request,
other producers unaffected, and no cost (no limiter at all) while the setting is 0."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import httpx
from redis.asyncio import Redis

from app.keys import Keys
from app.service import Services
from app.settings import Settings
from tests.integration.helpers import assert_problem

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
NewProducer = Callable[[str], Awaitable[dict[str, str]]]
RATE = 20  # events per second; the burst is one second's worth


async def test_beyond_the_burst_a_producer_gets_429_with_retry_after_and_nothing_is_stored(
    make_client: MakeClient, new_producer: NewProducer, redis: Redis, settings: Settings
) -> None:
    billing, shipping = await new_producer("billing"), await new_producer("shipping")
    stream = Keys(settings.prefix).stream(0)
    async with make_client(producer_rate_limit=RATE) as client:
        burst = await client.post("/v1/events/batch", json=[{"type": "t"}] * RATE, headers=billing)
        assert burst.status_code == 202, burst.text
        before = await redis.xlen(stream)
        refused = await client.post("/v1/events", json={"type": "t", "id": "over"}, headers=billing)
        problem = assert_problem(refused, 429)
        assert refused.headers["retry-after"] == str(problem["retry_after"]) == "1"
        assert "EVENTFLOW_PRODUCER_RATE_LIMIT" in problem["detail"]
        assert await redis.xlen(stream) == before
        assert (await client.post("/v1/events", json={"type": "t"}, headers=shipping)).status_code == 202
        await asyncio.sleep(1.0)  # what Retry-After said
        assert (await client.post("/v1/events", json={"type": "t", "id": "over"}, headers=billing)).status_code == 202


async def test_the_limit_is_shared_atomically_by_every_web_process(
    make_client: MakeClient, new_producer: NewProducer
) -> None:
    auth = await new_producer("billing")
    async with make_client(producer_rate_limit=RATE) as one, make_client(producer_rate_limit=RATE) as two:
        started = time.monotonic()
        answers = await asyncio.gather(*(
            client.post("/v1/events", json={"type": "t"}, headers=auth) for client in (one, two) * 40))
        elapsed = time.monotonic() - started
    accepted = sum(a.status_code == 202 for a in answers)
    assert {a.status_code for a in answers} == {202, 429}
    assert RATE <= accepted <= RATE + RATE * elapsed + 1, (accepted, elapsed)  # the burst, plus what refilled


async def test_a_batch_larger_than_the_burst_passes_once_and_its_debt_throttles_what_follows(
    make_client: MakeClient, new_producer: NewProducer
) -> None:
    auth = await new_producer("billing")
    async with make_client(producer_rate_limit=RATE) as client:
        big = await client.post("/v1/events/batch", json=[{"type": "t"}] * (5 * RATE), headers=auth)
        assert big.status_code == 202, big.text  # never refused for good
        after = await client.post("/v1/events", json={"type": "t"}, headers=auth)
        assert_problem(after, 429)
        assert 3 <= int(after.headers["retry-after"]) <= 5  # the 5 s of allowance it used up, less the burst


async def test_the_rejection_is_counted_in_the_metrics(make_client: MakeClient, new_producer: NewProducer) -> None:
    auth = await new_producer("billing")
    metrics_auth = {"Authorization": "Bearer metrics-token-for-tests"}

    async def rejected(client: httpx.AsyncClient) -> float:
        text = (await client.get("/metrics", headers=metrics_auth)).text
        found = re.search(r'^eventflow_events_rejected_total\{reason="too-many-requests"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0  # the registry is the process's: count the change

    async with make_client(producer_rate_limit=1, metrics_token="metrics-token-for-tests") as client:
        await client.post("/v1/events", json={"type": "t"}, headers=auth)
        before = await rejected(client)
        assert (await client.post("/v1/events", json={"type": "t"}, headers=auth)).status_code == 429
        assert await rejected(client) == before + 1


def test_no_limiter_exists_while_the_setting_is_zero(services: Services) -> None:
    assert services.settings.producer_rate_limit == 0
    assert services.rate_limit is None  # ingest checks one attribute and goes on
