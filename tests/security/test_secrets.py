"""Canary secrets never show up where they must not: not in the logs of the web and worker processes,
not in the metrics, not in error pages or any dashboard page, and — for what is stored hashed
(producer keys, operator passwords, session tokens) — nowhere in Redis, its keys, values or AOF.

The world is the production one: the web process under granian and a worker process, with JSON logs
(`EVENTFLOW_ACCESS_LOG=all`), on a Valkey of the test's own. The one place a new producer key or
webhook secret may appear is the answer that creates it (shown once, by design); a webhook secret is
stored as is in Redis (signing needs it; docs/security.md says so).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from app.users import Users
from tests.fault.stack import Stack
from tests.integration.dashboard_helpers import logged_in

pytestmark = pytest.mark.timeout(120)

CANARY = uuid.uuid4().hex[:12]
OPERATOR_TOKEN = f"canary-operator-{CANARY}"
METRICS_TOKEN = f"canary-metrics-{CANARY}"
PASSWORD = f"canary-password-{CANARY}"
URL_TOKEN = f"canary-url-token-{CANARY}"


async def redis_dump(redis: Redis) -> bytes:
    """Every key name and every value of every key on the server, as one blob."""
    out = bytearray()
    async for key in redis.scan_iter(count=1000):
        out += key + b"\n"
        kind = (await redis.type(key)).decode()
        if kind == "string":
            out += await redis.get(key) or b""
        elif kind == "hash":
            out += b"".join(k + v for k, v in (await redis.hgetall(key)).items())
        elif kind == "list":
            out += b"".join(await redis.lrange(key, 0, -1))
        elif kind == "set":
            out += b"".join(await redis.smembers(key))
        elif kind == "zset":
            out += b"".join(m for m, _ in await redis.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            for entry_id, fields in await redis.xrange(key):
                out += entry_id + b"".join(k + v for k, v in fields.items())
    return bytes(out)


def aof_bytes(stack: Stack) -> bytes:
    return b"".join(p.read_bytes() for p in Path(stack.server.data_dir).rglob("*.aof"))


@pytest.fixture
async def world(make_stack: Callable[..., Stack]) -> AsyncIterator[tuple[Stack, Redis]]:
    stack = make_stack(EVENTFLOW_API_TOKEN=OPERATOR_TOKEN, EVENTFLOW_METRICS_TOKEN=METRICS_TOKEN,
                       EVENTFLOW_ACCESS_LOG="all", EVENTFLOW_LOG_LEVEL="INFO")
    redis = stack.redis()
    await Users(redis, stack.settings).create("ada", "admin", PASSWORD)
    stack.start_worker("w1")
    await stack.start_web()
    await stack.wait_workers(redis)
    try:
        yield stack, redis
    finally:
        await redis.aclose()


async def exercise(stack: Stack, client: httpx.AsyncClient, key: str) -> dict[str, str]:
    """Use every surface once with the canaries in play; returns the secrets issued on the way."""
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    producer = {"Authorization": f"Bearer {key}"}
    assert (await client.post("/v1/events", json={"type": "order.created", "data": {"n": 1}},
                              headers=producer)).status_code == 202
    assert (await client.post("/v1/events", json={"type": "t"},
                              headers={"Authorization": f"Bearer {key}x"})).status_code == 401
    assert (await client.get(f"/v1/events?token={URL_TOKEN}", headers=producer)).status_code == 200
    assert (await client.get("/v1/consumers", headers=producer)).status_code == 403
    created = await client.post("/v1/webhooks", headers=operator, json={
        "url": f"http://127.0.0.1:9/hook?token={URL_TOKEN}", "types": ["order.*"]})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert (await client.get(f"/v1/webhooks/{hook['id']}", headers=operator)).status_code == 200
    assert (await client.get("/v1/errors", headers=operator)).status_code == 200
    assert (await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).status_code == 200
    assert (await client.get("/v1/events/no-such-event", headers=producer)).status_code == 404
    return {"webhook secret": hook["secret"]}


DASHBOARD = ("/", "/events", "/producers", "/consumers", "/dead-letters", "/webhooks", "/errors",
             "/events/no-such-event", "/no-such-page")


async def test_canary_secrets_stay_out_of_logs_metrics_pages_and_redis(world: tuple[Stack, Redis]) -> None:
    stack, redis = world
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
        token = await logged_in(client, "ada", PASSWORD)
        session = client.cookies["eventflow_session"]
        registered = await client.post("/producers", data={"csrf_token": token, "name": "canary-producer"})
        key = re.search(r"efk_[A-Za-z0-9_-]{43}", registered.text)
        assert key, "the key page shows the new key once"
        issued = await exercise(stack, client, key.group(0))
        pages = {path: (await client.get(path)).text for path in DASHBOARD}
        hooks = (await client.get("/v1/webhooks", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})).json()
        pages["webhook"] = (await client.get(f"/webhooks/{hooks['webhooks'][0]['id']}")).text
        metrics = (await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).text
    stack.stop()  # flush the processes' logs
    logs = "".join(p.read_text(errors="replace") for p in stack.folder.glob("*.log"))
    everything = {"producer key": key.group(0), "key body": key.group(0)[4:], "operator token": OPERATOR_TOKEN,
                  "metrics token": METRICS_TOKEN, "admin password": PASSWORD, "session token": session,
                  "token in a URL": URL_TOKEN, **issued}
    assert "POST /v1/events" in logs or '"route":"/v1/events"' in logs, "the access log is on"
    leaks = [f"{name} in the logs" for name, secret in everything.items() if secret in logs]
    leaks += [f"{name} in the metrics" for name, secret in everything.items() if secret in metrics]
    leaks += [f"{name} on {path}" for path, html in pages.items() for name, secret in everything.items()
              if secret in html and not (name == "token in a URL" and path in ("/webhooks", "webhook"))]
    stored = await redis_dump(redis) + aof_bytes(stack)
    hashed = ("producer key", "key body", "admin password", "session token", "operator token", "metrics token")
    leaks += [f"{name} in Redis" for name in hashed if everything[name].encode() in stored]
    assert not leaks, leaks
    assert issued["webhook secret"].encode() in stored  # by design: signing needs the secret itself

