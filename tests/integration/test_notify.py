"""The notify consumer end to end: real server, real runner, a real HTTP receiver on 127.0.0.1.

The receiver is on loopback, so these tests set EVENTFLOW_ALLOW_PRIVATE_WEBHOOKS (except the one
that checks the guard refuses it)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from app.events import Incoming
from app.keys import Keys
from app.service import Services
from app.settings import Settings
from app.web import create_app
from app.webhooks import SubscriptionIn, Webhooks
from consumers import notify
from consumers.base import Backoff
from consumers.runner import Runner
from tests.integration.helpers import consuming, eventflow_cli

pytestmark = pytest.mark.timeout(30)

FAST = Backoff(base_s=0.1, factor=2.0, cap_s=0.5, jitter=0.0)
TOKEN = "operator-token-for-tests"


# -- a scripted HTTP receiver --------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers each path from a script of (status, headers, delay_s) responses; then 200."""

    script: dict[str, list[tuple[int, dict[str, str], float]]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    port: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(path, headers, body, time.monotonic()))
            queue = self.script.get(path) or [(200, {}, 0.0)]
            status, extra, delay_s = queue.pop(0) if len(queue) > 1 else queue[0]
            await asyncio.sleep(delay_s)
            lines = [f"HTTP/1.1 {status} Scripted", "Content-Length: 2", "Connection: close",
                     *(f"{k}: {v}" for k, v in extra.items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\nok").encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    server = await asyncio.start_server(rec._serve, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    yield rec
    server.close()


# -- the consumer, running ----------------------------------------------------------------------


@pytest.fixture
def wh_settings(settings: Settings) -> Settings:
    return settings.replace(allow_private_webhooks=True, shutdown_grace_s=2.0)


@pytest.fixture
def webhooks(redis: Redis, wh_settings: Settings) -> Webhooks:
    return Webhooks(redis, wh_settings)


@contextlib.asynccontextmanager
async def running(settings: Settings, redis: Redis, **options: Any) -> AsyncIterator[Runner]:
    options.setdefault("backoff", FAST)
    consumer = notify.make(settings, redis, **options)
    try:
        async with consuming(redis, settings, consumer, name="notify-test") as runner:
            yield runner
    finally:
        assert consumer.close is not None
        await consumer.close()


async def post(services: Services, event_type: str, data: bytes = b'{"n":1}') -> str:
    appended = await services.ingest([Incoming(type=event_type, data=msgspec.Raw(data))], "billing", {})
    return appended[0].id


async def until(predicate: Callable[[], bool], timeout_s: float = 8.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def subscribe(webhooks: Webhooks, url: str, types: list[str], enabled: bool = True) -> tuple[str, str]:
    issued = await webhooks.create(SubscriptionIn(url=url, types=types, enabled=enabled))
    return issued.id, issued.secret


def verified(secret: str, request: Received) -> dict[str, Any]:
    """The body, after the independent Standard Webhooks implementation checked its signature."""
    headers = {k: request.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    return Webhook(secret).verify(request.body, headers)  # type: ignore[no-any-return]


# -- delivery -----------------------------------------------------------------------------------


async def test_each_event_reaches_each_matching_subscription_once_signed(
    receiver: Receiver, webhooks: Webhooks, services: Services, redis: Redis, wh_settings: Settings,
) -> None:
    _, secret_a = await subscribe(webhooks, receiver.url("/a"), ["order.*"])
    id_b, secret_b = await subscribe(webhooks, receiver.url("/b"), ["order.created"])
    await subscribe(webhooks, receiver.url("/c"), ["user.*"])  # matches nothing posted
    await subscribe(webhooks, receiver.url("/d"), ["*"], enabled=False)
    async with running(wh_settings, redis):
        created = await post(services, "order.created", b'{"amount":3}')
        paid = await post(services, "order.paid")
        await post(services, "invoice.sent")
        await until(lambda: len(receiver.at("/a")) == 2 and len(receiver.at("/b")) == 1)
        await asyncio.sleep(0.5)  # time for any duplicate to show up
    assert len(receiver.at("/a")) == 2 and len(receiver.at("/b")) == 1
    assert receiver.at("/c") == [] and receiver.at("/d") == []
    by_id = {r.headers["webhook-id"]: r for r in receiver.at("/a")}
    assert set(by_id) == {created, paid}
    event = verified(secret_a, by_id[created])
    assert (event["id"], event["type"], event["source"], event["data"]) == (created, "order.created", "billing",
                                                                          {"amount": 3})
    assert event["specversion"] == "1.0"
    assert by_id[created].headers["content-type"].startswith("application/cloudevents+json")
    b = receiver.at("/b")[0]
    assert verified(secret_b, b)["id"] == created
    assert abs(int(b.headers["webhook-timestamp"]) - time.time()) < 30
    last = (await webhooks.get(id_b)).last_delivery
    assert last is not None and last.ok and last.status == 200 and last.event_id == created
    assert last.error is None and last.latency_ms >= 0


async def test_a_500_is_retried_and_the_subscription_that_succeeded_is_not_sent_again(
    receiver: Receiver, webhooks: Webhooks, services: Services, redis: Redis, wh_settings: Settings,
) -> None:
    receiver.script["/flaky"] = [(500, {}, 0.0), (500, {}, 0.0), (200, {}, 0.0)]
    id_flaky, secret = await subscribe(webhooks, receiver.url("/flaky"), ["order.*"])
    await subscribe(webhooks, receiver.url("/steady"), ["order.*"])
    async with running(wh_settings, redis):
        event_id = await post(services, "order.created")
        await until(lambda: len(receiver.at("/flaky")) == 3)
        await asyncio.sleep(0.5)
    flaky = receiver.at("/flaky")
    assert len(flaky) == 3 and len(receiver.at("/steady")) == 1
    assert {r.headers["webhook-id"] for r in flaky} == {event_id}  # stable across retries
    for request in flaky:
        verified(secret, request)
    gaps = [b.at - a.at for a, b in itertools.pairwise(flaky)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # the fast backoff: 0.1 s, then 0.2 s
    last = (await webhooks.get(id_flaky)).last_delivery
    assert last is not None and last.ok and last.attempt == 3


async def test_retry_after_from_a_429_is_honoured(
    receiver: Receiver, webhooks: Webhooks, services: Services, redis: Redis, wh_settings: Settings,
) -> None:
    receiver.script["/busy"] = [(429, {"Retry-After": "1"}, 0.0), (200, {}, 0.0)]
    id_busy, _ = await subscribe(webhooks, receiver.url("/busy"), ["*"])
    async with running(wh_settings, redis, backoff=Backoff(base_s=0.05, factor=1.0, cap_s=0.05, jitter=0.0)):
        await post(services, "order.created")
        await until(lambda: len(receiver.at("/busy")) == 2)
    first, second = receiver.at("/busy")
    assert 0.95 <= second.at - first.at < 3.0  # Retry-After 1, not the 0.05 s backoff
    last = (await webhooks.get(id_busy)).last_delivery
    assert last is not None and last.ok


async def test_a_redirect_is_a_failed_delivery_and_is_not_followed(
    receiver: Receiver, webhooks: Webhooks, services: Services, redis: Redis, wh_settings: Settings,
) -> None:
    receiver.script["/moved"] = [(302, {"Location": receiver.url("/elsewhere")}, 0.0)]
    id_moved, _ = await subscribe(webhooks, receiver.url("/moved"), ["*"])
    async with running(wh_settings, redis, max_attempts=2):
        await post(services, "order.created")
        await until(lambda: len(receiver.at("/moved")) == 2)
        await until_dead_lettered(redis, wh_settings)
    assert receiver.at("/elsewhere") == []
    last = (await webhooks.get(id_moved)).last_delivery
    assert last is not None and not last.ok and last.status == 302
    assert "redirects are not followed" in (last.error or "")
    assert len(await dead_letters(redis, wh_settings)) == 1


async def test_a_slow_subscription_does_not_hold_up_the_others(
    receiver: Receiver, webhooks: Webhooks, services: Services, redis: Redis, wh_settings: Settings,
) -> None:
    receiver.script["/slow"] = [(200, {}, 2.0)]
    id_slow, _ = await subscribe(webhooks, receiver.url("/slow"), ["*"])
    await subscribe(webhooks, receiver.url("/fast"), ["*"])
    async with running(wh_settings, redis, timeout_s=0.3, max_attempts=1):
        started = time.monotonic()
        await post(services, "order.created")
        await until(lambda: len(receiver.at("/fast")) == 1)
        fast_after = receiver.at("/fast")[0].at - started
        await until_dead_lettered(redis, wh_settings)  # max_attempts=1: the timeout dead-letters it
    assert fast_after < 0.3
    last = (await webhooks.get(id_slow)).last_delivery
    assert last is not None and not last.ok and last.error == "timed out after 0.3 s"
    assert last.latency_ms < 1000


async def test_the_guard_refuses_loopback_unless_allowed_and_dead_letters_at_once(
    receiver: Receiver, webhooks: Webhooks, services: Services, redis: Redis, settings: Settings,
) -> None:
    # Created while private targets were allowed, delivered after the setting was turned off.
    id_local, _ = await subscribe(webhooks, receiver.url("/local", host="localhost"), ["*"])
    strict = settings.replace(allow_private_webhooks=False, shutdown_grace_s=2.0)
    async with running(strict, redis, max_attempts=5):
        await post(services, "order.created")
        await until_dead_lettered(redis, strict)  # at the first attempt: the guard's refusal is permanent
    assert receiver.requests == []
    [(_, dead)] = await dead_letters(redis, strict)
    assert (dead[b"_reason"], dead[b"_attempts"]) == (b"permanent", b"1")
    error = await webhooks_error(webhooks, id_local)
    assert "refused" in error and "EVENTFLOW_ALLOW_PRIVATE_WEBHOOKS" in error


async def test_a_host_name_is_pinned_to_the_checked_address_with_its_host_header(
    receiver: Receiver, webhooks: Webhooks, services: Services, redis: Redis, wh_settings: Settings,
) -> None:
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    await subscribe(webhooks, receiver.url("/named", host="hooks.example.test"), ["*"])
    async with running(wh_settings, redis, resolve=resolve):
        await post(services, "order.created")
        await until(lambda: len(receiver.at("/named")) == 1)
    assert receiver.at("/named")[0].headers["host"] == f"hooks.example.test:{receiver.port}"
    assert calls == ["hooks.example.test"]


async def webhooks_error(webhooks: Webhooks, ident: str) -> str:
    last = (await webhooks.get(ident)).last_delivery
    assert last is not None and not last.ok
    return last.error or ""


async def dead_letters(redis: Redis, settings: Settings) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The dead-letter entries of every partition."""
    keys = Keys(settings.prefix, settings.partitions)
    return [entry for p in range(keys.partitions) for entry in await redis.xrange(keys.dead_letters(p))]


async def until_dead_lettered(redis: Redis, settings: Settings, timeout_s: float = 8.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await dead_letters(redis, settings):
        assert time.monotonic() < deadline, "never dead-lettered"
        await asyncio.sleep(0.05)


# -- the API ------------------------------------------------------------------------------------


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(settings.replace(api_token=TOKEN))) as test_client:
        yield test_client


OPERATOR = {"Authorization": f"Bearer {TOKEN}"}


async def test_webhooks_api_crud(api: AsyncTestClient) -> None:  # type: ignore[type-arg]
    body = {"url": "https://hooks.example.com/in", "types": ["order.*"], "description": "shop"}
    created = await api.post("/v1/webhooks", json=body, headers=OPERATOR)
    assert created.status_code == 201, created.text
    ident, secret = created.json()["id"], created.json()["secret"]
    assert secret.startswith("whsec_") and created.headers["location"] == f"/v1/webhooks/{ident}"
    assert created.json()["subscription"]["enabled"] is True

    listed = await api.get("/v1/webhooks", headers=OPERATOR)
    assert [w["id"] for w in listed.json()["webhooks"]] == [ident]
    assert secret not in listed.text and "secret" not in listed.text

    changed = await api.patch(f"/v1/webhooks/{ident}", json={"enabled": False, "types": ["order.paid"]},
                              headers=OPERATOR)
    assert changed.status_code == 200, changed.text
    assert (changed.json()["enabled"], changed.json()["types"]) == (False, ["order.paid"])
    assert changed.json()["url"] == body["url"] and changed.json()["updated_ms"] is not None

    rotated = await api.post(f"/v1/webhooks/{ident}/rotate-secret", headers=OPERATOR)
    assert rotated.status_code == 200 and rotated.json()["secret"] not in (secret, None)

    got = await api.get(f"/v1/webhooks/{ident}", headers=OPERATOR)
    assert got.status_code == 200 and got.json()["last_delivery"] is None and secret not in got.text

    assert (await api.delete(f"/v1/webhooks/{ident}", headers=OPERATOR)).status_code == 204
    missing = await api.get(f"/v1/webhooks/{ident}", headers=OPERATOR)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(("body", "status", "pointer"), [
    ({"url": "http://127.0.0.1/hook", "types": ["*"]}, 422, "/url"),
    ({"url": "http://2130706433/", "types": ["*"]}, 422, "/url"),
    ({"url": "http://[::ffff:127.0.0.1]/", "types": ["*"]}, 422, "/url"),
    ({"url": "http://169.254.169.254/", "types": ["*"]}, 422, "/url"),
    ({"url": "gopher://example.com/", "types": ["*"]}, 422, "/url"),
    ({"url": "https://example.com/"}, 422, "/types"),
    ({"url": "https://example.com/", "types": []}, 422, "/types"),
    ({"url": "https://example.com/", "types": [1]}, 422, "/types/0"),
    ({"url": "https://example.com/", "types": ["*"], "secret": "mine"}, 422, "/secret"),
])
async def test_webhooks_api_refuses_bad_subscriptions(
    api: AsyncTestClient, body: dict[str, Any], status: int, pointer: str,  # type: ignore[type-arg]
) -> None:
    response = await api.post("/v1/webhooks", json=body, headers=OPERATOR)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["pointer"] == pointer


async def test_webhooks_api_refuses_bad_json_and_bad_patches(api: AsyncTestClient) -> None:  # type: ignore[type-arg]
    bad = await api.post("/v1/webhooks", content=b"{nope", headers=OPERATOR)
    assert bad.status_code == 400
    created = await api.post("/v1/webhooks", json={"url": "https://example.com/", "types": ["*"]}, headers=OPERATOR)
    ident = created.json()["id"]
    patched = await api.patch(f"/v1/webhooks/{ident}", json={"url": "http://localhost/"}, headers=OPERATOR)
    assert patched.status_code == 422 and "loopback" in patched.json()["detail"]
    assert (await api.patch("/v1/webhooks/wh_nope", json={}, headers=OPERATOR)).status_code == 404


async def test_webhooks_api_is_for_the_operator_token_only(
    api: AsyncTestClient, auth: dict[str, str],  # type: ignore[type-arg]
) -> None:
    calls = [("GET", "/v1/webhooks"), ("POST", "/v1/webhooks"), ("GET", "/v1/webhooks/wh_x"),
             ("PATCH", "/v1/webhooks/wh_x"), ("DELETE", "/v1/webhooks/wh_x"),
             ("POST", "/v1/webhooks/wh_x/rotate-secret")]
    body = json.dumps({"url": "https://example.com/", "types": ["*"]}).encode()
    for method, path in calls:
        anonymous = await api.request(method, path, content=body)
        assert anonymous.status_code == 401, (method, path)
        wrong = await api.request(method, path, content=body, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401, (method, path)
        producer = await api.request(method, path, content=body, headers=auth)
        assert producer.status_code == 403, (method, path)
        assert producer.headers["content-type"] == "application/problem+json"


async def test_webhooks_cli_creates_lists_changes_and_deletes(services: Services, settings: Settings) -> None:
    # Subscriptions are managed by API and CLI: `eventflow webhooks create URL --type P`, list, update,
    # disable, delete. The secret is printed at creation only.
    async def cli(*args: str) -> Any:
        return await eventflow_cli(settings, "webhooks", *args)

    created = await cli("create", "https://hooks.example.com/in", "--type", "order.*", "-t", "refund.issued")
    ident = created["id"]
    assert created["secret"].startswith("whsec_")
    assert created["subscription"]["types"] == ["order.*", "refund.issued"]
    listed = await cli("list")
    assert [w["id"] for w in listed] == [ident] and "secret" not in json.dumps(listed)
    await cli("update", ident, "--type", "order.paid")
    await cli("disable", ident)
    stored = await services.webhooks.get(ident)
    assert (stored.types, stored.enabled) == (["order.paid"], False)
    await cli("delete", ident)
    assert await services.webhooks.list() == []
