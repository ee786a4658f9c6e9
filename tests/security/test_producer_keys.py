"""Producer keys: 256 random bits each, stored only as their SHA-256, looked up by that hash (so no
secret is ever compared byte by byte: the constant-time question does not arise), and optionally
limited to some event types — a limit that reaches every web process within CHANGE_CHECK_S."""

from __future__ import annotations

import asyncio
import collections
import json
import math
import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.connections import connect
from app.errors import Forbidden, InvalidEvent
from app.keys import Keys
from app.producers import CHANGE_CHECK_S, Producers, hash_key
from app.service import Services
from app.settings import Settings
from tests.integration.helpers import assert_problem, eventflow_cli

MakeClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
KEY = re.compile(r"^efk_[A-Za-z0-9_-]{43}$")  # token_urlsafe(32): 43 base64url characters = 256 bits


async def test_keys_are_256_random_bits_in_base64url(services: Services) -> None:
    keys = [(await services.producers.create(f"p{n}")).key for n in range(200)]
    assert all(KEY.match(k) for k in keys)
    assert len(set(keys)) == len(keys)
    counts = collections.Counter("".join(k[4:] for k in keys))
    total = sum(counts.values())
    entropy = -sum(n / total * math.log2(n / total) for n in counts.values())
    assert entropy > 5.9, f"{entropy:.2f} bits per character (6 for uniform base64url)"  # 43 x 6 ≥ 256


async def test_only_the_keys_sha256_is_stored(services: Services, redis: Redis, settings: Settings) -> None:
    key = (await services.producers.create("billing")).key
    keys = Keys(settings.prefix)
    assert await redis.hget(keys.producer_keys, hash_key(key)) == b"billing"
    record = await redis.hget(keys.producers, "billing")
    assert record is not None and key.encode() not in record and hash_key(key).encode() in record


class Recording:
    """A Redis stand-in that records every argument the producer lookup sends."""

    def __init__(self, inner: Redis) -> None:
        self.inner = inner
        self.sent: list[Any] = []

    async def hget(self, *args: Any) -> Any:
        self.sent += args
        return await self.inner.hget(*args)


async def test_a_key_is_looked_up_by_its_hash_and_never_leaves_the_process(redis: Redis, settings: Settings) -> None:
    key = (await Producers(redis, settings).create("billing")).key
    recording = Recording(redis)
    producers = Producers(recording, settings)  # type: ignore[arg-type]
    assert await producers.authenticate(f"Bearer {key}") == "billing"
    assert hash_key(key) in recording.sent
    assert not any(key in str(arg) or key[4:] in str(arg) for arg in recording.sent)


async def test_a_key_limited_to_some_types_is_refused_for_the_others_and_nothing_is_stored(
    make_client: MakeClient, services: Services, redis: Redis, settings: Settings
) -> None:
    key = (await services.producers.create("billing", types=["order.*", "invoice.sent"])).key
    auth = {"Authorization": f"Bearer {key}"}
    stream = Keys(settings.prefix).stream(0)
    async with make_client() as client:
        assert (await client.post("/v1/events", json={"type": "order.created"}, headers=auth)).status_code == 202
        assert (await client.post("/v1/events", json={"type": "invoice.sent"}, headers=auth)).status_code == 202
        before = await redis.xlen(stream)
        refused = await client.post("/v1/events", json={"type": "user.deleted"}, headers=auth)
        assert "/type" in assert_problem(refused, 403)["detail"]
        batch = await client.post("/v1/events/batch", headers=auth,
                                  json=[{"type": "order.paid"}, {"type": "invoice.voided"}])
        assert "/events/1/type" in assert_problem(batch, 403)["detail"]
        assert await redis.xlen(stream) == before  # all or nothing
    assert (await services.producers.get("billing")).types == ["order.*", "invoice.sent"]


async def test_changing_the_limit_reaches_another_web_process_at_once(
    redis: Redis, settings: Settings, new_producer: Callable[[str], Awaitable[dict[str, str]]]
) -> None:
    settings = settings.replace(auth_cache_s=60.0)  # without the change feed, a minute of grace
    here = Producers(redis, settings)
    other_client = connect(settings)
    there = Producers(other_client, settings)  # "another web process": its own client and caches
    try:
        await here.create("billing")
        await there.check_types("billing", ["user.deleted"])  # allowed, and now cached there
        await here.limit_types("billing", ["order.*"])
        assert await settles(there, refused=True) < 1.0, "the new limit never reached the other process"
        await here.limit_types("billing", [])  # lifted
        assert await settles(there, refused=False) < 1.0
    finally:
        await other_client.aclose()


async def settles(producers: Producers, *, refused: bool) -> float:
    """Seconds until `user.deleted` is refused (or allowed) by this process's cached view."""
    started = asyncio.get_running_loop().time()
    for _ in range(100):
        try:
            await producers.check_types("billing", ["user.deleted"])
            now_refused = False
        except Forbidden:
            now_refused = True
        if now_refused == refused:
            return asyncio.get_running_loop().time() - started
        await asyncio.sleep(CHANGE_CHECK_S / 2)
    raise AssertionError("the change never arrived")


@pytest.mark.parametrize("types", [[""], ["has space"], ["x" * 201], [f"t{n}" for n in range(51)]])
async def test_bad_type_limits_are_refused(services: Services, types: list[str]) -> None:
    with pytest.raises(InvalidEvent):
        await services.producers.create("billing", types=types)


async def test_the_cli_creates_a_limited_key_and_changes_or_lifts_the_limit(
    services: Services, settings: Settings
) -> None:
    async def cli(*args: str) -> Any:
        return await eventflow_cli(settings, "producers", *args)

    issued = await cli("create", "billing", "--types", "order.*", "invoice.sent")
    assert KEY.match(issued["key"])
    assert (await services.producers.get("billing")).types == ["order.*", "invoice.sent"]
    assert (await cli("limit", "billing", "refund.*"))["types"] == ["refund.*"]
    with pytest.raises(Forbidden):
        await Services(services.redis, settings).producers.check_types("billing", ["order.created"])
    assert (await cli("limit", "billing"))["types"] == []
    await Services(services.redis, settings).producers.check_types("billing", ["order.created"])


async def test_the_cli_creates_a_key_shown_once_and_revokes_it_at_once(
    services: Services, settings: Settings, make_client: MakeClient
) -> None:
    # `eventflow producers create NAME` prints the key (only its hash is kept); `eventflow producers
    # revoke NAME` stops it at once.
    async def cli(*args: str) -> Any:
        return await eventflow_cli(settings, "producers", *args)

    issued = await cli("create", "billing")
    assert issued["name"] == "billing" and KEY.match(issued["key"])
    assert issued["key"] not in json.dumps(await cli("list"))
    event = {"type": "t", "data": 1}
    async with make_client(auth_cache_s=0.0) as client:
        headers = {"Authorization": f"Bearer {issued['key']}"}
        assert (await client.post("/v1/events", json=event, headers=headers)).status_code == 202
        assert (await cli("revoke", "billing"))["revoked_ms"] is not None
        assert_problem(await client.post("/v1/events", json=event, headers=headers), 401)
