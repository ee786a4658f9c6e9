"""Assertions and small fixtures shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from app.events import partition_key
from app.keys import Keys
from app.settings import Settings
from consumers.base import Consumer
from consumers.runner import Runner

JSON = {"Content-Type": "application/json"}
PROBLEM_JSON = "application/problem+json"


def assert_problem(resp: httpx.Response, status: int, *pointers: str) -> dict[str, Any]:
    """An RFC 9457 problem with this status; with `pointers`, exactly those fields are named."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].split(";")[0] == PROBLEM_JSON
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["type"].startswith("/problems/")
    assert body["instance"] == resp.request.url.path
    if pointers:
        assert sorted(e["pointer"] for e in body["errors"]) == sorted(pointers), body
    return body


async def wait_for(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Poll `check` (sync or async) until it is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def eventflow_cli(settings: Settings, *args: str) -> Any:
    """Run `eventflow ARGS` against `settings`' Redis and prefix; assert it exits 0 and return its JSON
    output (None when it prints nothing)."""
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "EVENTFLOW_PREFIX": settings.prefix}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    return json.loads(out) if out.strip() else None


def home_partition(settings: Settings, source: str = "billing", subject: str = "") -> int:
    """The partition that holds a source's events without a partition key (0 on one partition; any
    of them on a partitioned log, such as the cluster tests')."""
    return Keys(settings.prefix, settings.partitions).partition_of(partition_key({}, source, subject))


def home_stream(settings: Settings, source: str = "billing", subject: str = "") -> str:
    """The log stream of `home_partition`."""
    return Keys(settings.prefix, settings.partitions).stream(home_partition(settings, source, subject))


@contextlib.asynccontextmanager
async def consuming(redis: Any, settings: Settings, *consumers: Consumer, name: str = "w1") -> AsyncIterator[Runner]:
    """A worker (`name`) running these consumers until the block ends; then stopped, and waited for."""
    runner = Runner(list(consumers), redis, settings, name)
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.stop.set()
        await asyncio.wait_for(task, 10)
