"""The ingest hot path: `POST /v1/events` and `POST /v1/events/batch` as plain ASGI.

Producers post far more often than anything else is asked of the web process, and a Litestar route
(routing, signature parsing, DI, response objects) costs more than the whole ingest itself. So an
outermost middleware answers these two routes directly; the Litestar handlers in app/web/api.py
call the same `ingest` function and exist for the OpenAPI document. Errors are the same RFC 9457
problems as everywhere else (app/web/problems.py builds both).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from app.connections import is_unavailable, unavailable
from app.errors import EventFlowError, MalformedHeader, PayloadTooLarge, RequestTimeout
from app.events import parse_batch, parse_request
from app.service import Services
from app.settings import Settings
from app.web.problems import PROBLEM_JSON, problem_parts

log = logging.getLogger("eventflow.web")

ONE, BATCH = "/v1/events", "/v1/events/batch"
RAW_SEND = "eventflow.raw_send"  # the server's own `send`, for SSE bodies (app/web/sse.py)
_SWEEP_S = 1.0  # how often body reads are checked against EVENTFLOW_BODY_TIMEOUT_S
_EXPIRED = -1.0
_encode = msgspec.json.Encoder().encode
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+").fullmatch  # what quote(safe='') leaves as it is
_JSON = [(b"content-type", b"application/json")]
# What app/web/security.py adds to API answers (no CSP: these are not documents).
_API_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                (b"x-frame-options", b"DENY")]


class Answer(msgspec.Struct):
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
    problem_type: str | None = None


async def ingest(svc: Services, path: str, headers: Mapping[str, str], body: bytes,
                 raw_headers: Iterable[tuple[bytes, bytes]] = ()) -> Answer:
    """Authenticate, decode, append; the answer as status, body and headers (never raises). Pass the
    request's `raw_headers` when `headers` may have lost a repeated one."""
    try:
        single_headers(raw_headers)
        source = await svc.producers.authenticate(headers.get("authorization"))
        content_type = headers.get("content-type")
        if path == BATCH:
            events, is_batch = parse_batch(body, content_type), True
        else:
            events, is_batch = parse_request(body, content_type, headers)
        appended = await svc.ingest(events, source, headers)
    except EventFlowError as exc:
        return _problem(path, exc)
    except Exception as exc:
        if is_unavailable(exc):
            return _problem(path, unavailable(exc, svc.settings))
        log.exception("unhandled error on POST %s", path)
        svc.errors.note("web", type(exc).__name__, str(exc), exc=exc)
        return _problem(path, EventFlowError("an unexpected error occurred; it has been logged"))
    if is_batch:
        return Answer(202, _encode({"events": appended}), list(_JSON))
    # Event ids are any string: encode it, a raw non-Latin-1 id cannot go in a header at all
    # (ids EventFlow makes, and most producers', need no quoting: skip the call for those).
    ident = appended[0].id
    location = f"{ONE}/{ident if _UNRESERVED(ident) else quote(ident, safe='')}".encode()
    return Answer(202, _encode(appended[0]), [*_JSON, (b"location", location)])


_SINGLE = (b"authorization", b"content-type", b"traceparent")


def single_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> None:
    """MalformedHeader when a header ingest reads (Authorization, Content-Type, traceparent, ce-*) is
    given more than once: taking one copy would be a guess (two ce-type headers stored the last)."""
    seen: set[bytes] = set()
    for name, _ in raw_headers:
        lower = name.lower()
        if lower in _SINGLE or lower.startswith(b"ce-"):
            if lower in seen:
                raise MalformedHeader(f"the {lower.decode('latin-1')} header is given more than once: send it once")
            seen.add(lower)


def _problem(path: str, exc: EventFlowError) -> Answer:
    body, headers, problem_type = problem_parts(exc, path)
    return Answer(exc.status, body, [(b"content-type", PROBLEM_JSON.encode()), *headers], problem_type)


class IngestFastPath:
    """ASGI middleware answering the two ingest routes; everything else goes to `app`.

    Inside Litestar (`create_app` lists it first) it finds the app state in the scope; granian runs
    it outside Litestar altogether (`create_app_from_env` passes `litestar`), which also skips
    Litestar's own per-request layers."""

    def __init__(self, app: Any, litestar: Any = None) -> None:
        self.app = app
        self.litestar = litestar
        # Body reads in progress and their deadlines (_EXPIRED once cancelled), swept once a second:
        # a timer per request (asyncio.timeout) cost ~9 µs of a single-event POST's ~110 under uvloop.
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None

    async def _body_in_time(self, receive: Any, headers: Mapping[str, str], settings: Settings) -> bytes | None:
        """The body (None: too large); RequestTimeout when it has not all arrived within
        EVENTFLOW_BODY_TIMEOUT_S (a producer that stalls, or declares more than it sends, would
        otherwise hold its connection and a task for as long as the socket lives)."""
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is None:  # not in a task (never under an ASGI server): no watch
            return await _read_body(receive, headers, settings.max_body_bytes)
        self._reading[task] = loop.time() + settings.body_timeout_s
        if self._sweep is None or self._sweep_loop is not loop:
            self._sweep, self._sweep_loop = loop.call_later(_SWEEP_S, self._cancel_late, loop), loop
        try:
            return await _read_body(receive, headers, settings.max_body_bytes)
        except asyncio.CancelledError:
            if self._reading.get(task) != _EXPIRED:
                raise
            task.uncancel()
            raise RequestTimeout(
                f"the body did not arrive within {settings.body_timeout_s:g} s (EVENTFLOW_BODY_TIMEOUT_S)") from None
        finally:
            self._reading.pop(task, None)

    def _cancel_late(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, deadline in list(self._reading.items()):
            if _EXPIRED < deadline <= now:
                self._reading[task] = _EXPIRED
                task.cancel()
        self._sweep = loop.call_later(_SWEEP_S, self._cancel_late, loop) if self._reading else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in (ONE, BATCH):
            if scope["type"] == "http":
                scope[RAW_SEND] = send
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Litestar's State by key: as attributes each lookup is a failed one first (~1.2 µs apiece).
        state = (self.litestar or scope["app"]).state
        svc: Services = state["services"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._body_in_time(receive, headers, svc.settings)
            if body is None:
                raise PayloadTooLarge(
                    f"the body is larger than {svc.settings.max_body_bytes} bytes (EVENTFLOW_MAX_BODY_BYTES)")
        except (RequestTimeout, PayloadTooLarge) as exc:
            answer = _problem(path, exc)
        else:
            # Fewer names than header lines: some header is repeated (the dict kept its last copy).
            raw = scope["headers"] if len(headers) < len(scope["headers"]) else ()
            answer = await ingest(svc, path, headers, body, raw)
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [*answer.headers, *_API_HEADERS]})
        await send({"type": "http.response.body", "body": answer.body})
        web = state.get("web_metrics")
        if web is not None:
            scope["path_template"] = path
            if answer.problem_type is not None:
                web.problem(scope, answer.status, answer.problem_type)
            web.request(scope, answer.status, time.perf_counter() - started)


async def _read_body(receive: Any, headers: Mapping[str, str], limit: int) -> bytes | None:
    """The request body, or None when it is larger than `limit` (read no further than that)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
