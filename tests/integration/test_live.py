"""The live feed: one reader fans log entries out to subscribers; cursors resume without gaps, slow
subscribers catch up from the log, and a closed stream releases everything (litestar#3772)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from app.events import parse_request
from app.live import LiveHub, Reset, Subscriber
from app.service import Services
from app.settings import Settings
from app.web import create_app
from app.web.dashboard.auth import SESSION_COOKIE
from tests.integration.dashboard_helpers import cheap_hashing  # noqa: F401

pytestmark = pytest.mark.usefixtures("cheap_hashing")


async def post(services: Services, n: int, *, type_: str = "t", source: str = "billing") -> list[str]:
    ids = []
    for i in range(n):
        events, _ = parse_request(f'{{"type": "{type_}", "data": {i}}}'.encode(), "application/json", {})
        ids.append((await services.ingest(events, source, {}))[0].entry_id)
    return ids


@pytest.fixture
async def hub(redis: Redis, settings: Settings) -> AsyncIterator[LiveHub]:
    live = LiveHub(redis, settings, queue_size=4, catch_up_max=20)
    await live.start()
    yield live
    await live.stop()


async def take(sub: Subscriber, count: int, timeout_s: float = 5.0) -> list[str]:
    got: list[str] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < count:
            got += [m.entry_id for batch in await sub.next(0.5) for m in batch.messages]
    return got


async def settled(hub: LiveHub, last_id: str) -> None:
    """Wait until the reader has read up to `last_id` or gone to sleep (it reads the tail on waking):
    a subscriber joining now catches up to there (the reader waits `flush_s` between reads)."""
    async with asyncio.timeout(5):
        while hub._ready.is_set() and hub.positions[0] != last_id:
            await asyncio.sleep(0.01)


async def test_every_subscriber_gets_every_new_entry_in_order(hub: LiveHub, services: Services) -> None:
    async with hub.subscribe(lambda r: True) as a, hub.subscribe(lambda r: True) as b:
        ids = await post(services, 3)
        assert await take(a, 3) == ids
        assert await take(b, 3) == ids
    assert hub.subscribers == set()


async def test_a_filter_passes_only_matching_events_and_the_cursor_moves_past_the_rest(
    hub: LiveHub, services: Services
) -> None:
    async with hub.subscribe(lambda r: r.event.get("type") == "wanted") as sub:
        await post(services, 2, type_="other")
        [wanted] = await post(services, 1, type_="wanted")
        assert await take(sub, 1) == [wanted]
        others = await post(services, 2, type_="other")
        await asyncio.sleep(0.3)
        assert await sub.next(0.3) == []
        # The cursor is past the filtered entries: a reconnect need not read them again.
        assert sub.cursor == others[-1]


async def test_a_cursor_resumes_exactly_after_the_last_entry_seen(hub: LiveHub, services: Services) -> None:
    async with hub.subscribe(lambda r: True) as sub:
        first = await post(services, 2)
        assert await take(sub, 2) == first
        cursor = sub.cursor
    missed = await post(services, 3)  # while the browser was away
    async with hub.subscribe(lambda r: True, cursor) as sub:
        later = await post(services, 2)
        assert await take(sub, 5) == missed + later  # no gap, no duplicate


async def test_a_slow_subscriber_drops_its_oldest_and_then_reads_the_gap_from_the_log(
    hub: LiveHub, services: Services
) -> None:
    async with hub.subscribe(lambda r: True) as slow, hub.subscribe(lambda r: True) as fast:
        ids = await post(services, 10)  # queue_size is 4
        assert await take(fast, 10) == ids
        await asyncio.sleep(0.2)
        assert slow.dropped >= 6
        assert await take(slow, 10) == ids


async def test_a_gap_longer_than_the_catch_up_limit_resets_the_subscriber(hub: LiveHub, services: Services) -> None:
    async with hub.subscribe(lambda r: True) as sub:
        cursor = sub.cursor
    ids = await post(services, 25)  # catch_up_max is 20
    await settled(hub, ids[-1])
    async with hub.subscribe(lambda r: True, cursor) as sub:
        with pytest.raises(Reset):
            await sub.next(1.0)
        assert sub.cursor == hub.positions[0]
        [fresh] = await post(services, 1)
        assert await take(sub, 1) == [fresh]


async def test_an_invalid_cursor_starts_from_now(hub: LiveHub, services: Services) -> None:
    await post(services, 2)
    async with hub.subscribe(lambda r: True, "not-a-cursor") as sub:
        [fresh] = await post(services, 1)
        assert await take(sub, 1) == [fresh]


async def test_several_partitions_are_merged_and_resumed_per_partition(redis: Redis, settings: Settings) -> None:
    settings = settings.replace(partitions=3)
    services = Services(redis, settings)
    hub = LiveHub(redis, settings)
    await hub.start()
    try:
        async with hub.subscribe(lambda r: True) as sub:
            ids = [i for n in range(6) for i in await post(services, 1, source=f"s{n}")]
            assert sorted(await take(sub, 6)) == sorted(ids)
            cursor = sub.cursor
        assert len(cursor.split(",")) == 3
        missed = [i for n in range(6) for i in await post(services, 1, source=f"s{n}")]
        async with hub.subscribe(lambda r: True, cursor) as sub:
            assert sorted(await take(sub, 6)) == sorted(missed)
    finally:
        await hub.stop()


async def test_the_reader_sleeps_while_nobody_watches(hub: LiveHub, services: Services) -> None:
    async with hub.subscribe(lambda r: True) as sub:
        await post(services, 1)
        await take(sub, 1)
    await asyncio.sleep(hub.block_ms / 1000 + 0.3)
    assert not hub._wanted.is_set()
    await post(services, 5)
    async with hub.subscribe(lambda r: True) as sub:  # starts at the tail, not at the old position
        [fresh] = await post(services, 1)
        assert await take(sub, 1) == [fresh]


# -- the SSE endpoint: closing the stream releases everything -------------------------------------
class _Client:
    """Drives one ASGI request by hand: read until the first event, then disconnect."""

    def __init__(self, app: Any, path: str, cookie: str, last_event_id: str | None = None) -> None:
        headers = [(b"host", b"testserver"), (b"cookie", f"{SESSION_COOKIE}={cookie}".encode())]
        if last_event_id:
            headers.append((b"last-event-id", last_event_id.encode()))
        path, _, query = path.partition("?")
        self.scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                      "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                      "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
                      "server": ("testserver", 80)}
        self.app = app
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self._asked = False

    async def receive(self) -> dict[str, Any]:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        await self.sent.put(message)

    async def until(self, text: str, timeout_s: float = 5.0) -> tuple[int, str]:
        """Start the request and read the body until it contains `text`; returns (status, body)."""
        self.task = asyncio.create_task(self.app(self.scope, self.receive, self.send))
        status, body = 0, ""
        async with asyncio.timeout(timeout_s):
            while not (text and text in body):
                message = await self.sent.get()
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif message["type"] == "http.response.body":
                    body += message.get("body", b"").decode()
                    if not message.get("more_body", False):
                        break
        return status, body

    async def leave(self) -> None:
        self.gone.set()
        await asyncio.wait_for(self.task, 5)


@contextlib.asynccontextmanager
async def live_app(settings: Settings, services: Services) -> AsyncIterator[tuple[Any, str, Services]]:
    """The web app (lifespan running) and a viewer's session cookie."""
    app = create_app(settings.replace(live_ping_s=0.2))
    await services.users.create("watcher", "viewer", "watcher-password")
    token, _ = await services.sessions.start(await services.users.get("watcher"))
    async with app.lifespan():
        yield app, token, app.state.services


def _connections(svc: Services) -> int:
    """Connections the app's Redis pool holds (the server's CLIENT LIST is shared by the whole session)."""
    pool = svc.redis.connection_pool
    return len(pool._in_use_connections) + len(pool._available_connections)  # type: ignore[attr-defined]


async def test_200_connects_and_disconnects_leave_no_task_subscriber_or_connection_behind(
    settings: Settings, services: Services
) -> None:
    async with live_app(settings, services) as (app, cookie, svc):
        await _cycles(app, cookie, svc)


async def _cycles(app: Any, cookie: str, svc: Services) -> None:
    paths = ["/live/events", "/live/events?type=t", "/live/overview", "/live/consumers"]
    for path in paths:  # warm up: the reader task and the pool's connections exist from here on
        client = _Client(app, path, cookie)
        await client.until("\n\n")
        await client.leave()
    await asyncio.sleep(0.1)
    tasks, connections = len(asyncio.all_tasks()), _connections(svc)
    for n in range(200):
        client = _Client(app, paths[n % len(paths)], cookie)
        status, _ = await client.until("retry:")
        assert status == 200
        await client.leave()
    await asyncio.sleep(0.1)
    assert svc.live.subscribers == set()
    assert len(asyncio.all_tasks()) == tasks
    assert _connections(svc) == connections


async def test_the_feed_sends_rows_with_cursor_ids_and_resumes_from_last_event_id(
    settings: Settings, services: Services
) -> None:
    async with live_app(settings, services) as (app, cookie, _svc):
        await _feed_and_resume(app, cookie, services)


async def _feed_and_resume(app: Any, cookie: str, services: Services) -> None:
    client = _Client(app, "/live/events", cookie)
    await client.until(": ping")
    [first] = await post(services, 1)
    _, body = await client.until(first)
    await client.leave()
    frame = body[body.index(f"id: {first}\nevent: event\ndata: "):]
    row = json.loads(frame.split("data: ", 1)[1].split("\n", 1)[0])
    assert row == {"entry_id": first, "type": "t", "source": "billing", "subject": None,
                   "id": row["id"], "invalid": False}
    assert (await services.log.get(row["id"])).entry_id == first
    missed = await post(services, 2)
    again = _Client(app, "/live/events", cookie, last_event_id=first)
    _, body = await again.until(missed[1])
    await again.leave()
    assert body.index(missed[0]) < body.index(missed[1])


async def test_a_stream_without_a_session_is_refused_and_ends_when_the_session_does(
    settings: Settings, services: Services
) -> None:
    async with live_app(settings, services) as (app, cookie, svc):
        await _session_checks(app, cookie, svc)


async def _session_checks(app: Any, cookie: str, svc: Services) -> None:
    refused = _Client(app, "/live/events", "forged")
    status, _ = await refused.until("")
    await refused.leave()
    assert status == 401
    client = _Client(app, "/live/overview", cookie)
    await client.until("event: update")
    await svc.sessions.end(cookie)
    await asyncio.wait_for(client.task, 5)  # the next keep-alive finds the session gone
    assert svc.live.subscribers == set()
