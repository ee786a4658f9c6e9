"""Baseline endpoints: what a user would write instead of EventFlow, served under the same granian flags.

One Litestar app serves three routes, each the plain way (Litestar decodes the body into a msgspec
Struct, a redis-py asyncio client with hiredis talks to Redis):

    POST /naive/events        decode one event, one XADD per request
    POST /naive/events/batch  decode a list of events, one pipeline of XADDs per request
    POST /decode/events       decode one event and answer; no Redis at all (the upper bound)

Environment: REDIS_URL (required), BENCH_NAIVE_STREAM (default `naive:events`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Litestar, Request, post
from litestar.logging import LoggingConfig
from litestar.params import JSONBody
from redis.asyncio import Redis

_encode = msgspec.json.Encoder().encode


class Event(msgspec.Struct):
    """The event a naive producer endpoint accepts (the same body EventFlow's plain JSON takes)."""

    type: str
    data: dict[str, Any] | None = None
    id: str | None = None
    source: str | None = None
    time: str | None = None


class Accepted(msgspec.Struct):
    entry_ids: list[str]


def _fields(event: Event) -> dict[Any, Any]:  # redis-py's xadd typing wants its own invariant dict type
    return {"type": event.type, "source": event.source or "naive", "data": _encode(event.data)}


def _text(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def _redis(request: Request[Any, Any, Any]) -> Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


@post("/naive/events", status_code=202)
async def naive_one(request: Request[Any, Any, Any], data: JSONBody[Event]) -> Accepted:
    entry_id = await _redis(request).xadd(request.app.state.stream, _fields(data))
    return Accepted([_text(entry_id)])


@post("/naive/events/batch", status_code=202)
async def naive_batch(request: Request[Any, Any, Any], data: JSONBody[list[Event]]) -> Accepted:
    pipe = _redis(request).pipeline(transaction=False)
    for event in data:
        pipe.xadd(request.app.state.stream, _fields(event))
    return Accepted([_text(entry_id) for entry_id in await pipe.execute()])


@post("/decode/events", status_code=202)
async def decode_only(data: JSONBody[Event]) -> Accepted:
    return Accepted([data.type])


def create_app(redis_url: str, stream: str) -> Litestar:
    """The baseline app; one Redis client per process, opened in the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.redis = Redis.from_url(redis_url)
        app.state.stream = stream
        try:
            yield
        finally:
            await app.state.redis.aclose()

    return Litestar(
        route_handlers=[naive_one, naive_batch, decode_only],
        lifespan=[lifespan],
        logging_config=LoggingConfig(log_exceptions="always"),  # a 500 in a benchmark must say why
        debug=False,
    )


def create_app_from_env() -> Litestar:
    """Entry point for granian (`--factory ops.bench.baselines:create_app_from_env`)."""
    return create_app(os.environ["REDIS_URL"], os.environ.get("BENCH_NAIVE_STREAM", "naive:events"))
