"""Server-sent events for the dashboard: the live events feed, and live snapshots of the overview,
the consumers page and one event's lifecycle.

These are raw ASGI handlers rather than Litestar's `ServerSentEvent`: in Litestar 2.x a streaming
response's generator is not closed when the client goes away (litestar#3772), so its clean-up runs
late or never. Here one coroutine owns the connection: it watches `receive()` for the disconnect,
and its `finally` releases the subscription and every task it started, whatever ended the stream.

The events feed scales with viewers by sharing work (app/live.py): each entry is encoded into its
SSE frame once, the frames of one read are joined once per filter, and each viewer gets whatever
is pending in one write. A viewer that cannot keep up drops what it had pending and reads the gap
back from the log, or gets a `reset` event when the gap is too long (see app/live.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import asgi
from litestar.connection import ASGIConnection
from litestar.types import Receive, Scope, Send

from app.connections import cancel_and_wait
from app.errors import EventFlowError, NotFound, Unavailable
from app.events import Record
from app.live import Message, Reset, Subscriber
from app.service import Services
from app.web.dashboard import pages
from app.web.dashboard.auth import SESSION_COOKIE
from app.web.ingest import RAW_SEND

log = logging.getLogger("eventflow.web.sse")

SNAPSHOT_INTERVAL_S = 1.0
RETRY_MS = 2000  # how soon a browser reconnects after losing the stream
Body = Callable[["EventStream"], Awaitable[None]]


class EventStream:
    """One text/event-stream response: writes events, pings, and notices the client leaving."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope, self.receive, self._send = scope, receive, send
        # Body chunks skip the middleware (they only look at the start: its status and headers):
        # with 1,000 viewers the three wrappers were a tenth of the fan-out's cost.
        self._body = scope.get(RAW_SEND, send)
        self.connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope, receive)
        self.svc: Services = self.connection.app.state.services
        self.settings = self.svc.settings
        self._token = self.connection.cookies.get(SESSION_COOKIE, "")
        self._next_check = time.monotonic() + self.settings.live_ping_s

    async def serve(self, body: Body) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),  # nginx and friends: do not buffer the stream
        ]})
        await self.write(f"retry: {RETRY_MS}\n\n")
        watcher = asyncio.create_task(self._until_disconnect())
        writer = asyncio.create_task(body(self))
        try:
            await asyncio.wait({watcher, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer.done() and not writer.cancelled() and writer.exception() is not None:
                exc = writer.exception()
                if not isinstance(exc, OSError | EventFlowError | _SessionEnded):
                    log.error("live stream failed", exc_info=exc)
        finally:
            await cancel_and_wait(watcher, writer)
            with contextlib.suppress(Exception):  # the client may be gone already
                await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _until_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def write(self, text: str) -> None:
        await self.write_bytes(text.encode())

    async def write_bytes(self, body: bytes) -> None:
        await self._body({"type": "http.response.body", "body": body, "more_body": True})

    async def event(self, data: str, *, event: str | None = None, ident: str | None = None) -> None:
        lines = [f"id: {ident}"] if ident is not None else []
        if event:
            lines.append(f"event: {event}")
        lines += [f"data: {line}" for line in data.splitlines() or [""]]
        await self.write("\n".join(lines) + "\n\n")

    def check_due(self) -> bool:
        """True when the session check (done by `keep_alive`) is due."""
        return time.monotonic() >= self._next_check

    async def keep_alive(self, ident: str | None = None) -> None:
        """A comment (keeps proxies from closing an idle stream), carrying the cursor when given;
        every ping interval the session is checked, so logging out ends the stream."""
        await self.write((f"id: {ident}\n" if ident else "") + ": ping\n\n")
        if self.check_due():
            self._next_check = time.monotonic() + self.settings.live_ping_s
            if not await self.svc.sessions.alive(self._token):
                raise _SessionEnded


class _SessionEnded(Exception):
    pass


# -- the events feed ------------------------------------------------------------------------------
# The same filter gets the same function, so the hub filters each entry once per distinct filter,
# not once per viewer (a bounded cache: an evicted filter only means a second group).
@functools.lru_cache(maxsize=256)
def _matcher(type_: str | None, source: str | None) -> Callable[[Record], bool]:
    def match(record: Record) -> bool:
        return (type_ is None or record.event.get("type") == type_) and (
            source is None or record.event.get("source") == source)

    return match


def _frame(message: Message) -> bytes:
    """One entry as an SSE event: its cursor as the id, the row's fields as one line of JSON."""
    return b"id: %s\nevent: event\ndata: %s\n\n" % (message.ident.encode(), msgspec.json.encode(message.data))


async def _feed(stream: EventStream, sub: Subscriber) -> None:
    await stream.keep_alive(sub.cursor)  # a reconnect from here on misses nothing
    while True:
        try:
            batches = await sub.next(stream.settings.live_ping_s)
        except Reset:
            await stream.event("{}", event="reset", ident=sub.cursor)
            continue
        if batches:  # everything pending, in one write
            await stream.write_bytes(b"".join([batch.wire(_frame) for batch in batches]))
        if not batches or stream.check_due():
            await stream.keep_alive(sub.cursor)


@asgi("/live/events", opt={"stream": True}, copy_scope=False, include_in_schema=False)
async def live_events(scope: Scope, receive: Receive, send: Send) -> None:
    stream = EventStream(scope, receive, send)
    params = stream.connection.query_params
    match = _matcher(params.get("type") or None, params.get("source") or None)
    cursor = stream.connection.headers.get("last-event-id") or params.get("cursor")
    try:
        async with stream.svc.live.subscribe(match, cursor) as sub:
            await stream.serve(lambda s: _feed(s, sub))
    except Unavailable as exc:
        await _refuse(send, 503, exc.detail)


# -- snapshots ------------------------------------------------------------------------------------
async def _snapshots(stream: EventStream, compute: Callable[[], Awaitable[str]]) -> None:
    """Send the partial whenever it changes (relative times aside: the browser ages those itself);
    keep the stream alive and check the session every ping interval."""
    last = ""
    while True:
        try:
            html = await compute()
        except Unavailable:
            html = ""  # keep what the page shows; the next round tries again
        if html and _AGO.sub(r"\1\2", html) != _AGO.sub(r"\1\2", last):
            await stream.event(html, event="update")
            last = html
        if stream.check_due():
            await stream.keep_alive()
        await asyncio.sleep(SNAPSHOT_INTERVAL_S)


_AGO = re.compile(r"(<time [^>]*data-ago>)[^<]*(</time>)")  # "12 s ago" changes every second


async def _serve_snapshots(
    scope: Scope, receive: Receive, send: Send, compute: Callable[[Services], Awaitable[str]]
) -> None:
    stream = EventStream(scope, receive, send)
    await stream.serve(lambda s: _snapshots(s, lambda: compute(s.svc)))


async def _overview_html(svc: Services) -> str:
    return pages.overview_partial(await pages.overview_context(svc))


async def _consumers_html(svc: Services) -> str:
    return pages.consumers_partial(await pages.consumers_context(svc))


@asgi("/live/overview", opt={"stream": True}, copy_scope=False, include_in_schema=False)
async def live_overview(scope: Scope, receive: Receive, send: Send) -> None:
    await _serve_snapshots(scope, receive, send, _overview_html)


@asgi("/live/consumers", opt={"stream": True}, copy_scope=False, include_in_schema=False)
async def live_consumers(scope: Scope, receive: Receive, send: Send) -> None:
    await _serve_snapshots(scope, receive, send, _consumers_html)


# The entry id is a query parameter: Litestar 2.25's router fails (KeyError 'GET') on an ASGI route
# with a path parameter.
@asgi("/live/lifecycle", opt={"stream": True}, copy_scope=False, include_in_schema=False)
async def live_lifecycle(scope: Scope, receive: Receive, send: Send) -> None:
    entry_id = ASGIConnection(scope, receive).query_params.get("entry", "")
    svc: Services = scope["app"].state.services
    try:
        await svc.get_event(entry_id, None)
    except NotFound as exc:
        await _refuse(send, 404, exc.detail)
        return

    async def lifecycle(svc: Services) -> str:
        return pages.lifecycle_partial(await svc.get_event(entry_id, None))

    await _serve_snapshots(scope, receive, send, lifecycle)


async def _refuse(send: Send, status: int, detail: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": detail.encode(), "more_body": False})


ROUTES = [live_events, live_overview, live_consumers, live_lifecycle]
