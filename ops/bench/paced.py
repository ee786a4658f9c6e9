"""A paced producer for the latency rows: POSTs at a fixed offered rate over a few keep-alive
connections, noting when each request was sent and which entry id its 202 named.

wrk drives the throughput rows flat out; latency needs the opposite, a steady known load. This is a
bare HTTP/1.1 client on asyncio streams (the answers are small and have a Content-Length), so the
client costs little next to the server on the same two cores.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ENTRY_ID = re.compile(rb'"entry_id":"([0-9]+-[0-9]+)"')


@dataclass
class Sent:
    """What the producer did: send time (time.monotonic) by sequence number, entry ids by sequence
    number, how many requests failed and how far behind schedule the producer fell."""

    planned: int = 0
    sent_at: dict[int, float] = field(default_factory=dict)
    entry_ids: dict[int, str] = field(default_factory=dict)
    errors: int = 0
    first_error: str = ""
    max_lag_ms: float = 0.0

    @property
    def unsent(self) -> int:
        """Requests the schedule held that were never sent (the server stopped answering in time)."""
        return self.planned - len(self.sent_at)

    @property
    def accepted(self) -> int:
        return len(self.entry_ids)


async def produce(
    url: str, headers: Mapping[str, str], body: Callable[[int], bytes], rate_s: float, duration_s: float,
    connections: int = 16, overrun_s: float = 5.0,
) -> Sent:
    """POST `body(n)` for n = 0, 1, ... at `rate_s` a second for `duration_s`, spread over
    `connections` keep-alive connections. Bounded: at most rate_s * duration_s requests, and an answer
    still missing `overrun_s` after the schedule ends counts as an error (the connection is dropped)."""
    target = urlsplit(url)
    total = int(rate_s * duration_s)
    sent = Sent(planned=total)
    next_n = 0
    started = time.monotonic() + 0.05
    hard_stop = started + duration_s + overrun_s

    async def connection() -> None:
        nonlocal next_n
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        try:
            while next_n < total:
                n, next_n = next_n, next_n + 1
                due = started + n / rate_s
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                data = body(n)
                request = (f"POST {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n{head}"
                           f"Content-Length: {len(data)}\r\n\r\n").encode() + data
                at = time.monotonic()
                sent.max_lag_ms = max(sent.max_lag_ms, (at - due) * 1000)
                sent.sent_at[n] = at
                writer.write(request)
                try:
                    status, answer = await asyncio.wait_for(_answer(reader), max(0.0, hard_stop - time.monotonic()))
                except TimeoutError:
                    sent.errors += 1
                    sent.first_error = sent.first_error or f"no answer within {overrun_s:g} s of the schedule's end"
                    next_n = total
                    return
                if status == 202 and (found := ENTRY_ID.search(answer)):
                    sent.entry_ids[n] = found.group(1).decode()
                else:
                    sent.errors += 1
                    sent.first_error = sent.first_error or f"{status} {answer[:200]!r}"
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return sent


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    return status, await reader.readexactly(int(length.group(1))) if length else b""


def percentiles_ms(latencies_s: list[float]) -> tuple[float, float, float]:
    """(p50, p99, max) in milliseconds, nearest rank; zeros when there are none."""
    if not latencies_s:
        return 0.0, 0.0, 0.0
    ordered = sorted(latencies_s)

    def rank(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.999999) - 1))] * 1000

    return rank(0.50), rank(0.99), ordered[-1] * 1000
