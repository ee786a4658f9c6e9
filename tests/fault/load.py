"""Steady load: several producers posting events over HTTP, the way a careful client does.

Each producer is an asyncio task with its own connection. It sends one event at a time at a fixed
pace, with an id of its own, and repeats the same id until it gets a 202 (so a retry after a lost
answer is recognised as a duplicate, not appended twice). It files every answer into one of the
outcomes the issue allows — 202, 503 with Retry-After (problem+json), or a dropped connection — and
anything else (another status, a 503 without Retry-After, no answer within the timeout) as `bad`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

import httpx

HANG_S = 10.0  # an answer slower than this counts as a hang (the server's own bound is far lower)


@dataclass
class Load:
    url: str
    key: str
    tag: str
    producers: int = 6
    rate: float = 60.0  # events per second per producer
    event_type: str = "fault.test"
    count: int | None = None  # events per producer, then it stops (None: until told to stop)
    acked: dict[str, str] = field(default_factory=dict)  # event id -> entry id, from the 202 answers
    acked_at: dict[str, float] = field(default_factory=dict)  # event id -> monotonic time of its first 202
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    bad: list[str] = field(default_factory=list)
    slowest_refusal_s: float = 0.0  # the longest a 503 or a drop took to arrive
    started: float = 0.0
    stopped: float = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        self.started = time.monotonic()
        await asyncio.gather(*(self._producer(n, stop) for n in range(self.producers)))
        self.stopped = time.monotonic()

    async def _producer(self, n: int, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=self.url, timeout=HANG_S, limits=limits) as client:
            seq, pace = 0, 1.0 / self.rate
            next_at = time.monotonic()
            while not stop.is_set() and (self.count is None or seq < self.count):
                event_id = f"{self.tag}-{n}-{seq}"
                body = b'{"type":"%s","id":"%s","data":{"n":%d,"producer":%d}}' % (
                    self.event_type.encode(), event_id.encode(), seq, n)
                if await self._post(client, event_id, body, headers):
                    seq += 1
                    next_at = max(next_at + pace, time.monotonic() - 1.0)  # no catch-up burst after an outage
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                else:
                    await asyncio.sleep(0.05)  # retry the same id soon (a hurried client, not a polite one)

    async def _post(self, client: httpx.AsyncClient, event_id: str, body: bytes, headers: dict[str, str]) -> bool:
        started = time.monotonic()
        try:
            resp = await client.post("/v1/events", content=body, headers=headers)
        except httpx.TimeoutException as exc:
            self._bad(f"no answer within {HANG_S} s: {type(exc).__name__}")
            return False
        except httpx.TransportError:
            self.outcomes["dropped"] += 1
            self.slowest_refusal_s = max(self.slowest_refusal_s, time.monotonic() - started)
            return False
        if resp.status_code == 202:
            self.outcomes["202"] += 1
            if event_id not in self.acked:
                self.acked[event_id] = resp.json()["entry_id"]
                self.acked_at[event_id] = time.monotonic()
            return True
        self.slowest_refusal_s = max(self.slowest_refusal_s, time.monotonic() - started)
        problem = resp.headers.get("content-type", "").startswith("application/problem+json")
        if resp.status_code == 503 and resp.headers.get("retry-after", "").isdigit() and problem:
            self.outcomes["503"] += 1
        else:
            self._bad(f"{resp.status_code} {resp.headers.get('retry-after')!r}: {resp.text[:200]}")
        return False

    def _bad(self, what: str) -> None:
        self.outcomes["bad"] += 1
        if len(self.bad) < 20:
            self.bad.append(what)

    @property
    def rate_held(self) -> float:
        """Acknowledged events per second over the run."""
        return len(self.acked) / max(0.001, self.stopped - self.started)

    def acked_within(self, start: float, end: float) -> int:
        return sum(1 for t in self.acked_at.values() if start <= t <= end)

    def describe(self) -> str:
        return f"{self.producers} producers, {self.rate_held:.0f} ev/s"

    def answers(self) -> str:
        """The answers producers saw, e.g. `2,412x202, 31x503, 6 dropped, 0 other`."""
        o = self.outcomes
        slowest = f" (slowest refusal {self.slowest_refusal_s:.2f} s)" if o["503"] + o["dropped"] else ""
        return f"{o['202']:,}x202, {o['503']:,}x503, {o['dropped']:,} dropped, {o['bad']:,} other{slowest}"


async def run_for(load: Load, seconds: float, stop: asyncio.Event) -> None:
    """Run `load` until `stop` is set, or for `seconds` at most."""
    task = asyncio.create_task(load.run(stop))
    try:
        await asyncio.wait_for(asyncio.shield(stop.wait()), seconds)
    except TimeoutError:
        stop.set()
    await task


async def wait_acked(load: Load, count: int, timeout_s: float = 20.0) -> None:
    """Until `count` more events than now got their 202."""
    target = len(load.acked) + count
    deadline = time.monotonic() + timeout_s
    while len(load.acked) < target:
        assert time.monotonic() < deadline, f"load stalled at {len(load.acked)} acknowledged: {load.outcomes}"
        await asyncio.sleep(0.02)
