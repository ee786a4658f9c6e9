"""The FastAPI baseline: what a user would write instead of EventFlow, served by uvicorn.

Runs in the bench-only venv (see extras.py), so it imports nothing from EventFlow. One route, the
plain way: FastAPI validates the body into a pydantic model, one XADD per request with redis-py
(hiredis). Environment: REDIS_URL (required), BENCH_NAIVE_STREAM (default `naive:fastapi`).

    uvicorn fastapi_app:app --app-dir ops/bench --no-access-log
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from redis.asyncio import Redis


class Event(BaseModel):
    type: str
    data: dict[str, Any] | None = None
    id: str | None = None
    source: str | None = None
    time: str | None = None


class Accepted(BaseModel):
    entry_ids: list[str]


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.redis = Redis.from_url(os.environ["REDIS_URL"])
    app.state.stream = os.environ.get("BENCH_NAIVE_STREAM", "naive:fastapi")
    try:
        yield
    finally:
        await app.state.redis.aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/naive/events", status_code=202)
async def naive_one(event: Event) -> Accepted:
    fields = {"type": event.type, "source": event.source or "naive", "data": json.dumps(event.data)}
    entry_id = await app.state.redis.xadd(app.state.stream, fields)
    return Accepted(entry_ids=[entry_id.decode()])
